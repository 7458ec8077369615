# probe: replica-health v2
# One replica's side of replication, read on the replica itself: the product
# it runs, the state of the replication services (REPLICA, MASTER, FTA,
# LYNCBACKUP; "Missing" when not installed), the xds-replica share and its
# share ACL, the NTFS owner and ACL of the shared folder (the File Transfer
# Agent writes there as the CMS Front End's computer account, via the local
# group RTC Local Config Replicator), and the certificate the Replica
# Replicator Agent presents: the Internal certificate on an Edge (HTTPS 4443
# from the FTA), the Default certificate elsewhere, with its chain built in
# the machine context without revocation checks.
# Each part is collected on its own: one that fails leaves its field null and
# its message in the matching ...Error field. The management module is loaded
# here rather than by Invoke-Probe, so a server whose module will not load
# still reports its services, share and ACL.
# Parameters:
#   role  string  the server's role: "edge", "frontend", "director", ...
Invoke-Probe -Name 'replica-health' -Version 2 -NoModule -Body {
    param($Params)

    function ConvertTo-ShareRight {
        # Get-SmbShareAccess gives the AccessRight enum; the CIM value is a number.
        param($Value)
        $text = [string]$Value
        switch ($text) {
            '0' { return 'Full' }
            '1' { return 'Change' }
            '2' { return 'Read' }
            '3' { return 'Custom' }
        }
        return $text
    }

    function ConvertTo-AceType {
        param($Value)
        $text = [string]$Value
        switch ($text) {
            '0' { return 'Allow' }
            '1' { return 'Deny' }
        }
        return $text
    }

    $role = ([string](Get-Field $Params 'role' '')).Trim()
    $shareName = 'xds-replica'

    # -- management module (for Get-CsServerVersion and Get-CsCertificate) --
    $moduleError = $null
    try {
        $null = Import-CsModule
    } catch {
        $moduleError = 'the management module could not be loaded: ' + (Get-ErrorMessage $_)
    }

    # -- product version --
    $productVersion = $null
    $productVersionError = $null
    if ($null -ne $moduleError) {
        $productVersionError = $moduleError
    } else {
        try {
            $productVersion = [string](Get-CsServerVersion -ErrorAction Stop)
        } catch {
            $productVersion = $null
            $productVersionError = Get-ErrorMessage $_
        }
    }

    # -- services --
    $services = [ordered]@{}
    foreach ($name in 'REPLICA', 'MASTER', 'FTA', 'LYNCBACKUP') {
        $svc = Get-Service -Name $name -ErrorAction SilentlyContinue
        if ($null -ne $svc) {
            $services[$name] = [string](@($svc)[0].Status)
        } else {
            $services[$name] = 'Missing'
        }
    }

    # -- the xds-replica share and its share ACL --
    $share = $null
    $shareError = $null
    $sharePath = $null
    try {
        if ($null -ne (Get-Command -Name 'Get-SmbShare' -ErrorAction SilentlyContinue)) {
            $smbShares = @(Get-SmbShare -Name $shareName -ErrorAction Stop)
            if ($smbShares.Count -eq 0) { throw 'the xds-replica share does not exist' }
            $sharePath = [string]$smbShares[0].Path
            $shareAccess = @(Get-SmbShareAccess -Name $shareName -ErrorAction Stop | ForEach-Object {
                [ordered]@{
                    Account = [string]$_.AccountName
                    Right   = ConvertTo-ShareRight $_.AccessRight
                    Type    = ConvertTo-AceType $_.AccessControlType
                }
            })
        } else {
            # Windows Server 2008 R2 (Lync 2010/2013) has no SMB cmdlets: use WMI.
            $wmiShare = @(Get-WmiObject -Class Win32_Share -Filter "Name='xds-replica'" -ErrorAction Stop)
            if ($wmiShare.Count -eq 0) { throw 'the xds-replica share does not exist' }
            $sharePath = [string]$wmiShare[0].Path
            $setting = @(Get-WmiObject -Class Win32_LogicalShareSecuritySetting -Filter "Name='xds-replica'" -ErrorAction Stop)
            if ($setting.Count -eq 0) { throw 'the security settings of the xds-replica share cannot be read' }
            $descriptor = $setting[0].GetSecurityDescriptor()
            if ([int]$descriptor.ReturnValue -ne 0) {
                throw ('GetSecurityDescriptor on the xds-replica share returned ' + [string]$descriptor.ReturnValue)
            }
            $shareAccess = @(@($descriptor.Descriptor.DACL) | Where-Object { $null -ne $_ } | ForEach-Object {
                $trustee = $_.Trustee
                $account = [string]$trustee.Name
                if ([string]$trustee.Domain -ne '') { $account = [string]$trustee.Domain + '\' + $account }
                if ($account -eq '') { $account = [string]$trustee.SIDString }
                $mask = [long]$_.AccessMask
                $right = 'Custom'
                if ($mask -eq 2032127) { $right = 'Full' }
                elseif ($mask -eq 1245631) { $right = 'Change' }
                elseif ($mask -eq 1179817) { $right = 'Read' }
                [ordered]@{
                    Account = $account
                    Right   = $right
                    Type    = ConvertTo-AceType $_.AceType
                }
            })
        }
        $share = [ordered]@{
            Name   = $shareName
            Path   = $sharePath
            Access = $shareAccess
        }
    } catch {
        $share = $null
        $shareError = Get-ErrorMessage $_
    }

    # -- the shared folder's owner and NTFS ACL --
    $folder = $null
    $folderError = $null
    if ([string]$sharePath -eq '') {
        $folderError = 'the folder is unknown because the xds-replica share could not be read'
    } else {
        try {
            $acl = Get-Acl -LiteralPath $sharePath -ErrorAction Stop
            $owner = ''
            try {
                $owner = [string]$acl.Owner
            } catch {
                # An owner SID that does not resolve to a name.
                $owner = [string]($acl.GetOwner([System.Security.Principal.SecurityIdentifier]).Value)
            }
            $rules = @($acl.GetAccessRules($true, $true, [System.Security.Principal.NTAccount]))
            $folderAccess = @(foreach ($rule in $rules) {
                [ordered]@{
                    Identity  = [string]$rule.IdentityReference
                    Rights    = [string]$rule.FileSystemRights
                    Type      = [string]$rule.AccessControlType
                    Inherited = [bool]$rule.IsInherited
                }
            })
            $folder = [ordered]@{
                Path   = $sharePath
                Owner  = $owner
                Access = $folderAccess
            }
        } catch {
            $folder = $null
            $folderError = Get-ErrorMessage $_
        }
    }

    # -- the certificate the Replica Replicator Agent presents --
    $use = 'Default'
    if ($role -eq 'edge') { $use = 'Internal' }
    $certificate = $null
    $certificateError = $null
    if ($null -ne $moduleError) {
        $certificateError = $moduleError
    } else {
        try {
            $assigned = @(Get-CsCertificate -Type $use -ErrorAction Stop | Where-Object { $null -ne $_ })
            $thumbprint = ''
            foreach ($item in $assigned) {
                $candidate = [string](Get-Field $item 'Thumbprint' '')
                if ($candidate -ne '') {
                    $thumbprint = ($candidate -replace '\s', '').ToUpperInvariant()
                    break
                }
            }
            if ($thumbprint -eq '') {
                $certificateError = 'no certificate is assigned for ' + $use
            } else {
                # Cert:\LocalMachine\My\<thumbprint>, read through the store API.
                $storeName = [System.Security.Cryptography.X509Certificates.StoreName]::My
                $storeLocation = [System.Security.Cryptography.X509Certificates.StoreLocation]::LocalMachine
                $store = New-Object -TypeName System.Security.Cryptography.X509Certificates.X509Store -ArgumentList $storeName, $storeLocation
                $cert = $null
                try {
                    $openFlags = [System.Security.Cryptography.X509Certificates.OpenFlags]::ReadOnly -bor [System.Security.Cryptography.X509Certificates.OpenFlags]::OpenExistingOnly
                    $store.Open($openFlags)
                    $byThumbprint = [System.Security.Cryptography.X509Certificates.X509FindType]::FindByThumbprint
                    $found = $store.Certificates.Find($byThumbprint, $thumbprint, $false)
                    if ($found.Count -gt 0) { $cert = $found[0] }
                } finally {
                    $store.Close()
                }
                if ($null -eq $cert) {
                    $certificateError = 'the ' + $use + ' certificate ' + $thumbprint + ' is not in Cert:\LocalMachine\My'
                } else {
                    # DnsNameList is a PowerShell extension whose type lives in
                    # Microsoft.PowerShell.Security; make sure it is loaded.
                    try { Import-Module Microsoft.PowerShell.Security -ErrorAction Stop } catch { $null = $_ }
                    $dnsNames = @()
                    try {
                        $dnsNames = @($cert.DnsNameList | ForEach-Object { $_.Unicode })
                    } catch {
                        # Without the extension: the first DNS name (SAN, else subject CN) only.
                        $dnsNames = @($cert.GetNameInfo([System.Security.Cryptography.X509Certificates.X509NameType]::DnsName, $false))
                    }
                    $dnsNames = @($dnsNames | Where-Object { [string]$_ -ne '' })

                    $chain = New-Object -TypeName System.Security.Cryptography.X509Certificates.X509Chain -ArgumentList $true
                    $chain.ChainPolicy.RevocationMode = [System.Security.Cryptography.X509Certificates.X509RevocationMode]::NoCheck
                    [void]$chain.Build($cert)
                    $top = $null
                    foreach ($element in $chain.ChainElements) { $top = $element }
                    $root = $null
                    if ($null -ne $top) { $root = [string]$top.Certificate.Subject }
                    $chainStatus = ConvertTo-StringList @($chain.ChainStatus | ForEach-Object { $_.Status })

                    $certificate = [ordered]@{
                        Use           = $use
                        Thumbprint    = [string]$cert.Thumbprint
                        Subject       = [string]$cert.Subject
                        DnsNames      = ConvertTo-StringList $dnsNames
                        HasPrivateKey = [bool]$cert.HasPrivateKey
                        NotAfter      = $cert.NotAfter.ToUniversalTime()
                        Issuer        = [string]$cert.Issuer
                        Root          = $root
                        ChainStatus   = $chainStatus
                    }
                }
            }
        } catch {
            $certificate = $null
            $certificateError = Get-ErrorMessage $_
        }
    }

    [ordered]@{
        CollectedAt         = [DateTime]::UtcNow
        ProductVersion      = $productVersion
        ProductVersionError = $productVersionError
        Services            = $services
        Share               = $share
        ShareError          = $shareError
        Folder              = $folder
        FolderError         = $folderError
        Certificate         = $certificate
        CertificateError    = $certificateError
    }
}
