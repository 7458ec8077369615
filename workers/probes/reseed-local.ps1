# probe: reseed-local v1
# CHANGES THE SERVER: re-seeds the local replica of the server it runs on
# (step 4 of the recovery when a CMS failover is blocked; run it on EACH
# server of the pool that owns the CMS SQL store, after cms-restore).
# Exports the topology, policies and settings from the Central Management
# Store with Export-CsConfiguration into a new zip under the fixed folder
# %ProgramData%\cmsbot\exports (created and secured as export-configuration
# does), then imports that zip into this server's local store with
# Import-CsConfiguration -FileName <zip> -LocalStore. The zip stays on the
# server as a DR backup: it is never deleted, and an existing file is never
# overwritten (the probe fails instead, before anything is exported). An
# export or import failure fails the probe; after a failed import the zip is
# still kept, and the error names it.
# Parameters:
#   fileName  string  a bare file name matching
#                     ^cmsbot-config-[A-Za-z0-9-]{1,64}\.zip$ (no folder)
# Data: CollectedAt, Path (full path of the zip on the server), Bytes, Sha256
# (uppercase hex, of the file as exported, before the import), Imported (true).
Invoke-Probe -Name 'reseed-local' -Version 1 -Body {
    param($Params)

    function Get-Field {
        # A property of a JSON parameter object, or $Default when absent or null
        # (StrictMode forbids reading a property that does not exist).
        param($Object, [string]$Name, $Default)
        if ($null -eq $Object) { return $Default }
        $property = $Object.PSObject.Properties[$Name]
        if ($null -eq $property -or $null -eq $property.Value) { return $Default }
        return $property.Value
    }

    function Get-Sha256Hex {
        # Uppercase hex SHA-256, as Get-FileHash prints it. The CryptoServiceProvider class
        # rather than Get-FileHash's SHA256Managed, which throws on servers
        # enforcing FIPS-compliant algorithms.
        param([byte[]]$Bytes)
        $sha = New-Object -TypeName System.Security.Cryptography.SHA256CryptoServiceProvider
        try {
            $hash = $sha.ComputeHash($Bytes)
        } finally {
            $sha.Dispose()
        }
        return ([BitConverter]::ToString($hash) -replace '-', '').ToUpperInvariant()
    }

    function Initialize-CmsbotFolder {
        # %ProgramData%\cmsbot\<Leaf>, created when missing. The cmsbot folder
        # is created with a protected ACL (SYSTEM, Administrators and the
        # account running the probe; nothing inherited from ProgramData, where
        # every user may read and create folders). Both folders must be owned
        # by one of those, so no other local user can swap the file between
        # its checks and its use.
        param([string]$Leaf)
        $programData = [string]$env:ProgramData
        if ($programData -eq '') { $programData = [Environment]::GetFolderPath('CommonApplicationData') }
        if ($programData -eq '') { throw 'the ProgramData folder is unknown on this server' }
        $root = [System.IO.Path]::GetFullPath([System.IO.Path]::Combine($programData, 'cmsbot'))
        $folder = [System.IO.Path]::Combine($root, $Leaf)

        $trusted = @(
            (New-Object -TypeName System.Security.Principal.SecurityIdentifier -ArgumentList 'S-1-5-18'),
            (New-Object -TypeName System.Security.Principal.SecurityIdentifier -ArgumentList 'S-1-5-32-544'),
            [System.Security.Principal.WindowsIdentity]::GetCurrent().User
        )
        if (-not [System.IO.Directory]::Exists($root)) {
            $security = New-Object -TypeName System.Security.AccessControl.DirectorySecurity
            $security.SetAccessRuleProtection($true, $false)
            $inherit = [System.Security.AccessControl.InheritanceFlags]'ContainerInherit, ObjectInherit'
            $propagate = [System.Security.AccessControl.PropagationFlags]::None
            $full = [System.Security.AccessControl.FileSystemRights]::FullControl
            $allow = [System.Security.AccessControl.AccessControlType]::Allow
            foreach ($sid in $trusted) {
                $rule = New-Object -TypeName System.Security.AccessControl.FileSystemAccessRule -ArgumentList $sid, $full, $inherit, $propagate, $allow
                $security.AddAccessRule($rule)
            }
            $null = [System.IO.Directory]::CreateDirectory($root, $security)
        }
        $null = [System.IO.Directory]::CreateDirectory($folder)
        foreach ($dir in $root, $folder) {
            $attributes = [System.IO.File]::GetAttributes($dir)
            if (([int]$attributes -band [int][System.IO.FileAttributes]::ReparsePoint) -ne 0) {
                throw ('refusing ' + $dir + ': it is a link (reparse point), not a folder')
            }
            $ownerSid = [System.IO.Directory]::GetAccessControl($dir, [System.Security.AccessControl.AccessControlSections]::Owner).GetOwner([System.Security.Principal.SecurityIdentifier])
            $ok = $false
            foreach ($sid in $trusted) {
                if ($null -ne $sid -and $sid.Equals($ownerSid)) { $ok = $true }
            }
            if (-not $ok) {
                $ownerName = [string]$ownerSid
                try {
                    $ownerName = [string]$ownerSid.Translate([System.Security.Principal.NTAccount]) + ' (' + [string]$ownerSid + ')'
                } catch {
                    $null = $_
                }
                throw ('refusing ' + $dir + ': it is owned by ' + $ownerName + ', not by SYSTEM, Administrators or the account running this probe')
            }
        }
        return $folder
    }

    function Get-ErrorMessage {
        # The real exception's message, not PowerShell's 'Exception calling ...' wrapper.
        param($ErrorRecord)
        $ex = $ErrorRecord.Exception
        while ($ex -is [System.Management.Automation.ExtendedTypeSystemException] -and $null -ne $ex.InnerException) {
            $ex = $ex.InnerException
        }
        return [string]$ex.Message
    }

    # -- the parameter: a bare file name, so the path stays in the folder --
    # -cmatch and \z: exact case, and no trailing newline let through by '$'.
    $namePattern = '^cmsbot-config-[A-Za-z0-9-]{1,64}\.zip\z'
    $fileName = Get-Field $Params 'fileName' $null
    if ($null -eq $fileName) {
        throw 'parameter fileName is required: a bare name like cmsbot-config-<id>.zip'
    }
    if ($fileName -isnot [string] -or $fileName -cnotmatch $namePattern) {
        throw 'parameter fileName must be a bare file name matching ^cmsbot-config-[A-Za-z0-9-]{1,64}\.zip$'
    }

    $folder = Initialize-CmsbotFolder 'exports'
    $path = [System.IO.Path]::GetFullPath([System.IO.Path]::Combine($folder, $fileName))
    if (-not $path.StartsWith($folder.TrimEnd('\') + '\', [StringComparison]::OrdinalIgnoreCase)) {
        throw ('refusing a path outside ' + $folder)
    }

    if ([System.IO.File]::Exists($path) -or [System.IO.Directory]::Exists($path)) {
        throw ('the export file already exists and is kept as a backup; choose a new fileName: ' + $path)
    }

    # -- export from the Central Management Store --
    $null = Export-CsConfiguration -FileName $path -ErrorAction Stop
    if (-not [System.IO.File]::Exists($path)) {
        throw ('Export-CsConfiguration returned without error but wrote no file at ' + $path + '; nothing was imported')
    }

    $bytes = [System.IO.File]::ReadAllBytes($path)
    if ($bytes.Length -eq 0) {
        throw ('Export-CsConfiguration wrote an empty file at ' + $path + '; nothing was imported')
    }
    $length = [int]$bytes.Length
    $sha256 = Get-Sha256Hex $bytes
    $bytes = $null

    # -- import into this server's local replica store --
    try {
        $null = Import-CsConfiguration -FileName $path -LocalStore -ErrorAction Stop
    } catch {
        throw ('Import-CsConfiguration -LocalStore failed (the export ' + $path + ', SHA-256 ' + $sha256 + ', is kept): ' + (Get-ErrorMessage $_))
    }

    return [ordered]@{
        CollectedAt = [DateTime]::UtcNow
        Path        = $path
        Bytes       = $length
        Sha256      = $sha256
        Imported    = $true
    }
}
