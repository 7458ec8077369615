# probe: replica-health v2
# deadline: 30 s (read-only: module load, services, certificates and the share ACL)
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
# Cmdlet and WMI objects are read with Get-Field (_lib.ps1): a property one
# version lacks is null here and named in data.NotReported. .NET objects
# (the ACL, the certificate and its chain) are read directly.
#   Get-CsServerVersion, Get-CsCertificate -Type (Thumbprint) (Lync Server 2010 and later):
#     https://learn.microsoft.com/powershell/module/skypeforbusiness/get-csserverversion
#     https://learn.microsoft.com/powershell/module/skypeforbusiness/get-cscertificate
#   Get-Service (Status): https://learn.microsoft.com/powershell/module/microsoft.powershell.management/get-service
#   Get-SmbShare (Path), Get-SmbShareAccess (AccountName, AccessRight, AccessControlType),
#     Windows Server 2012 and later: https://learn.microsoft.com/powershell/module/smbshare/get-smbshareaccess
#   else Win32_Share (Path), Win32_LogicalShareSecuritySetting.GetSecurityDescriptor
#     (ReturnValue, Descriptor.DACL of Win32_ACE: Trustee, AccessMask, AceType):
#     https://learn.microsoft.com/previous-versions/windows/desktop/secrcw32prov/getsecuritydescriptor-method-in-class-win32-logicalsharesecuritysetting
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
    $services = New-Record
    foreach ($name in 'REPLICA', 'MASTER', 'FTA', 'LYNCBACKUP') {
        $svc = @(Get-Service -Name $name -ErrorAction SilentlyContinue | Where-Object { $null -ne $_ })
        if ($svc.Count -gt 0) {
            $services[$name] = [string](Get-Field $svc[0] 'Status' '' 'Get-Service')
        } else {
            $services[$name] = 'Missing'
        }
    }

    # -- the xds-replica share and its share ACL --
    $share = $null
    $shareError = $null
    $sharePath = $null
    try {
        $smb = ($null -ne (Get-Command -Name 'Get-SmbShare' -ErrorAction SilentlyContinue)) -and
            ($null -ne (Get-Command -Name 'Get-SmbShareAccess' -ErrorAction SilentlyContinue))
        if ($smb) {
            # Windows Server 2012 and later (SmbShare module).
            $smbShares = @(Get-SmbShare -Name $shareName -ErrorAction Stop | Where-Object { $null -ne $_ })
            if ($smbShares.Count -eq 0) { throw 'the xds-replica share does not exist' }
            $sharePath = Get-TextField $smbShares[0] 'Path' 'Get-SmbShare'
            $shareAccess = @(Get-SmbShareAccess -Name $shareName -ErrorAction Stop | Where-Object { $null -ne $_ } | ForEach-Object {
                $row = New-Record
                $row['Account'] = [string](Get-Field $_ 'AccountName' '' 'Get-SmbShareAccess')
                $row['Right'] = ConvertTo-ShareRight (Get-Field $_ 'AccessRight' $null 'Get-SmbShareAccess')
                $row['Type'] = ConvertTo-AceType (Get-Field $_ 'AccessControlType' $null 'Get-SmbShareAccess')
                $row
            })
        } else {
            # Windows Server 2008 R2 (Lync 2010/2013) has no SMB cmdlets: use WMI.
            $wmiShare = @(Get-WmiObject -Class Win32_Share -Filter "Name='xds-replica'" -ErrorAction Stop | Where-Object { $null -ne $_ })
            if ($wmiShare.Count -eq 0) { throw 'the xds-replica share does not exist' }
            $sharePath = Get-TextField $wmiShare[0] 'Path' 'Win32_Share'
            $setting = @(Get-WmiObject -Class Win32_LogicalShareSecuritySetting -Filter "Name='xds-replica'" -ErrorAction Stop | Where-Object { $null -ne $_ })
            if ($setting.Count -eq 0) { throw 'the security settings of the xds-replica share cannot be read' }
            $descriptorSource = 'Win32_LogicalShareSecuritySetting.GetSecurityDescriptor'
            $descriptor = $setting[0].GetSecurityDescriptor()
            $returnValue = [int](Get-Field $descriptor 'ReturnValue' 0 $descriptorSource)
            if ($returnValue -ne 0) {
                throw ('GetSecurityDescriptor on the xds-replica share returned ' + [string]$returnValue)
            }
            $dacl = Get-Field (Get-Field $descriptor 'Descriptor' $null $descriptorSource) 'DACL' $null 'Win32_SecurityDescriptor'
            $shareAccess = @(@($dacl) | Where-Object { $null -ne $_ } | ForEach-Object {
                $trustee = Get-Field $_ 'Trustee' $null 'Win32_ACE'
                $account = [string](Get-Field $trustee 'Name' '' 'Win32_Trustee')
                $domain = [string](Get-Field $trustee 'Domain' '' 'Win32_Trustee')
                if ($domain -ne '') { $account = $domain + '\' + $account }
                if ($account -eq '') { $account = [string](Get-Field $trustee 'SIDString' '' 'Win32_Trustee') }
                $mask = [long](Get-Field $_ 'AccessMask' 0 'Win32_ACE')
                $right = 'Custom'
                if ($mask -eq 2032127) { $right = 'Full' }
                elseif ($mask -eq 1245631) { $right = 'Change' }
                elseif ($mask -eq 1179817) { $right = 'Read' }
                $row = New-Record
                $row['Account'] = $account
                $row['Right'] = $right
                $row['Type'] = ConvertTo-AceType (Get-Field $_ 'AceType' $null 'Win32_ACE')
                $row
            })
        }
        $share = New-Record
        $share['Name'] = $shareName
        $share['Path'] = $sharePath
        $share['Access'] = $shareAccess
    } catch {
        $share = $null
        $shareError = Get-ErrorMessage $_
    }

    # -- the shared folder's owner and NTFS ACL --
    # System.IO.Directory.GetAccessControl (.NET 2.0 and later), not Get-Acl:
    # Get-Acl -LiteralPath came with Windows PowerShell 3.0.
    $folder = $null
    $folderError = $null
    if ([string]$sharePath -eq '') {
        $folderError = 'the folder is unknown because the xds-replica share could not be read'
    } else {
        try {
            $sections = [System.Security.AccessControl.AccessControlSections]'Access, Owner'
            $acl = [System.IO.Directory]::GetAccessControl($sharePath, $sections)
            $sidType = [System.Security.Principal.SecurityIdentifier]
            $accountType = [System.Security.Principal.NTAccount]
            $ownerSid = $acl.GetOwner($sidType)
            $owner = ''
            if ($null -ne $ownerSid) {
                try {
                    $owner = [string]$ownerSid.Translate($accountType)
                } catch {
                    # An owner SID that does not resolve to a name.
                    $owner = [string]$ownerSid.Value
                }
            }
            # By SID, then each translated on its own: one SID that no longer
            # resolves must not lose the whole ACL.
            $rules = @($acl.GetAccessRules($true, $true, $sidType))
            $folderAccess = @(foreach ($rule in $rules) {
                $identity = [string]$rule.IdentityReference.Value
                try { $identity = [string]$rule.IdentityReference.Translate($accountType) } catch { $null = $_ }
                $row = New-Record
                $row['Identity'] = $identity
                $row['Rights'] = [string]$rule.FileSystemRights
                $row['Type'] = [string]$rule.AccessControlType
                $row['Inherited'] = [bool]$rule.IsInherited
                $row
            })
            $folder = New-Record
            $folder['Path'] = $sharePath
            $folder['Owner'] = $owner
            $folder['Access'] = $folderAccess
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
                $candidate = [string](Get-Field $item 'Thumbprint' '' 'Get-CsCertificate')
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
                    # DnsNameList is a PowerShell extension of certificates from 3.0 on,
                    # whose type lives in Microsoft.PowerShell.Security; make sure it is loaded.
                    try { Import-Module Microsoft.PowerShell.Security -ErrorAction Stop } catch { $null = $_ }
                    $dnsNames = @()
                    $dnsNameList = Get-Field $cert 'DnsNameList' $null
                    if ($null -ne $dnsNameList) {
                        $dnsNames = @(@($dnsNameList) | ForEach-Object { [string](Get-Field $_ 'Unicode' '') })
                    } else {
                        # 2.0, or without the extension: the first DNS name (SAN, else subject CN) only.
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
                    $chainStatus = ConvertTo-StringList @(foreach ($status in $chain.ChainStatus) { [string]$status.Status })

                    $certificate = New-Record
                    $certificate['Use'] = $use
                    $certificate['Thumbprint'] = [string]$cert.Thumbprint
                    $certificate['Subject'] = [string]$cert.Subject
                    $certificate['DnsNames'] = ConvertTo-StringList $dnsNames
                    $certificate['HasPrivateKey'] = [bool]$cert.HasPrivateKey
                    $certificate['NotAfter'] = $cert.NotAfter.ToUniversalTime()
                    $certificate['Issuer'] = [string]$cert.Issuer
                    $certificate['Root'] = $root
                    $certificate['ChainStatus'] = $chainStatus
                }
            }
        } catch {
            $certificate = $null
            $certificateError = Get-ErrorMessage $_
        }
    }

    $result = New-Record
    $result['CollectedAt'] = [DateTime]::UtcNow
    $result['ProductVersion'] = $productVersion
    $result['ProductVersionError'] = $productVersionError
    $result['Services'] = $services
    $result['Share'] = $share
    $result['ShareError'] = $shareError
    $result['Folder'] = $folder
    $result['FolderError'] = $folderError
    $result['Certificate'] = $certificate
    $result['CertificateError'] = $certificateError
    $result
}
