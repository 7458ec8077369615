# probe: import-configuration v1
# CHANGES THE SERVER: run on the replica whose local store is to be re-seeded.
# Reads a configuration zip made by export-configuration from STANDARD INPUT
# (base64 text, whitespace ignored, read to the end: the caller closes stdin),
# checks its SHA-256 against the parameter (a difference fails the probe with
# "checksum mismatch" and nothing is written or imported), writes it to
# %ProgramData%\cmsbot\imports\<fileName> (folder created when missing; a file
# of that name with the same content is reused, with other content the probe
# fails), then imports it into the local replica store with
# Import-CsConfiguration -FileName <path> -LocalStore. The zip is kept.
# Standard input is read before anything else, so the caller's writes never
# meet a closed pipe; the management module is loaded only afterwards.
# Parameters:
#   fileName  string  a bare file name matching
#                     ^cmsbot-export-[A-Za-z0-9-]{1,64}\.zip$ (no folder)
#   sha256    string  the zip's SHA-256 as 64 hex digits (any case)
# Data: Path, Bytes, Sha256 (uppercase hex of what was received), Imported.
Invoke-Probe -Name 'import-configuration' -Version 1 -NoModule -Body {
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

    function Get-ErrorMessage {
        # The real exception's message, not PowerShell's 'Exception calling ...' wrapper.
        param($ErrorRecord)
        $ex = $ErrorRecord.Exception
        while ($ex -is [System.Management.Automation.ExtendedTypeSystemException] -and $null -ne $ex.InnerException) {
            $ex = $ex.InnerException
        }
        return [string]$ex.Message
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

    # -- standard input, first: the zip as base64 text --
    $received = $null
    $inputError = $null
    try {
        if (-not [Console]::IsInputRedirected) {
            throw 'standard input is a console, not the zip (the caller must send it on stdin)'
        }
        $received = [Console]::In.ReadToEnd()
    } catch {
        $inputError = Get-ErrorMessage $_
    }

    # -- the parameters --
    # -cmatch and \z: exact case, and no trailing newline let through by '$'.
    $namePattern = '^cmsbot-export-[A-Za-z0-9-]{1,64}\.zip\z'
    $fileName = Get-Field $Params 'fileName' $null
    if ($null -eq $fileName) {
        throw 'parameter fileName is required: a bare name like cmsbot-export-<id>.zip'
    }
    if ($fileName -isnot [string] -or $fileName -cnotmatch $namePattern) {
        throw 'parameter fileName must be a bare file name matching ^cmsbot-export-[A-Za-z0-9-]{1,64}\.zip$'
    }
    $expected = Get-Field $Params 'sha256' $null
    if ($null -eq $expected) {
        throw 'parameter sha256 is required: the SHA-256 of the zip as 64 hex digits'
    }
    if ($expected -isnot [string] -or $expected -notmatch '^[0-9A-Fa-f]{64}\z') {
        throw 'parameter sha256 must be 64 hex digits'
    }
    $expected = $expected.ToUpperInvariant()

    # -- decode and verify, before anything is written --
    if ($null -ne $inputError) {
        throw ('cannot read standard input: ' + $inputError)
    }
    $base64 = ([string]$received) -replace '[\s\uFEFF]', ''
    $received = $null
    if ($base64.Length -eq 0) {
        throw 'no data on standard input: expected the zip as base64 text'
    }
    $bytes = $null
    try {
        $bytes = [Convert]::FromBase64String($base64)
    } catch {
        throw ('standard input is not valid base64 (' + [string]$base64.Length + ' characters): ' + (Get-ErrorMessage $_))
    }
    $base64 = $null
    $actual = Get-Sha256Hex $bytes
    if ($actual -cne $expected) {
        throw ('checksum mismatch: expected ' + $expected + ', received ' + $actual + ' (' + [string]$bytes.Length + ' bytes); nothing was written or imported')
    }

    # -- the management module, now that stdin is drained --
    $null = Import-CsModule

    # -- write the zip (or reuse an identical one) --
    $folder = Initialize-CmsbotFolder 'imports'
    $path = [System.IO.Path]::GetFullPath([System.IO.Path]::Combine($folder, $fileName))
    if (-not $path.StartsWith($folder.TrimEnd('\') + '\', [StringComparison]::OrdinalIgnoreCase)) {
        throw ('refusing a path outside ' + $folder)
    }
    if ([System.IO.Directory]::Exists($path)) {
        throw ('a folder is in the way of the import file: ' + $path)
    }
    if ([System.IO.File]::Exists($path)) {
        $existing = Get-Sha256Hex ([System.IO.File]::ReadAllBytes($path))
        if ($existing -cne $actual) {
            throw ('the import file already exists with other content (SHA-256 ' + $existing + '); choose a new fileName: ' + $path)
        }
    } else {
        # Written beside the target, then renamed: no half-written zip under the real name.
        $partial = $path + '.partial'
        [System.IO.File]::WriteAllBytes($partial, $bytes)
        try {
            [System.IO.File]::Move($partial, $path)
        } catch {
            $moveError = Get-ErrorMessage $_
            try { [System.IO.File]::Delete($partial) } catch { $null = $_ }
            throw ('cannot write ' + $path + ': ' + $moveError)
        }
    }

    # -- import into the local replica store --
    $null = Import-CsConfiguration -FileName $path -LocalStore -ErrorAction Stop

    return [ordered]@{
        CollectedAt = [DateTime]::UtcNow
        Path        = $path
        Bytes       = [int]$bytes.Length
        Sha256      = $actual
        Imported    = $true
    }
}
