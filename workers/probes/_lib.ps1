# probe-lib: shared helpers v2
# Dot-sourced by the bootstrap before every probe. Invoke-Probe loads the
# management module for the installed version, runs the probe body with its
# parameters and prints exactly one JSON document, an error included.
Set-StrictMode -Version 2
$ProgressPreference = 'SilentlyContinue'
$WarningPreference = 'SilentlyContinue'

function Get-ProbeParams {
    # $CmsbotParams: base64 JSON, joined by the bootstrap from the shell environment's chunks.
    $b64 = Get-Variable -Name CmsbotParams -ValueOnly -ErrorAction SilentlyContinue
    if (-not $b64) { return [pscustomobject]@{} }
    $json = [Text.Encoding]::UTF8.GetString([Convert]::FromBase64String($b64))
    return ($json | ConvertFrom-Json)
}

function Import-CsModule {
    # Skype for Business Server 2015/2019 ship 'SkypeForBusiness', Lync 2010/2013 'Lync'.
    foreach ($name in 'SkypeForBusiness', 'Lync') {
        if (Get-Module -ListAvailable -Name $name) {
            Import-Module $name -ErrorAction Stop -WarningAction SilentlyContinue
            return $name
        }
    }
    throw 'Neither the SkypeForBusiness nor the Lync PowerShell module is installed on this server'
}

function ConvertTo-StringList {
    param($Value)
    # Always an array, even for one item or none, so the JSON shape is stable.
    $items = @($Value | Where-Object { $null -ne $_ } | ForEach-Object { [string]$_ })
    return ,$items
}

function Invoke-Probe {
    param([string]$Name, [int]$Version, [switch]$NoModule, [scriptblock]$Body)
    try {
        if (-not $NoModule) { $null = Import-CsModule }
        $data = & $Body (Get-ProbeParams)
        $doc = [ordered]@{ probe = $Name; version = $Version; data = $data }
    } catch {
        $doc = [ordered]@{
            probe   = $Name
            version = $Version
            error   = [ordered]@{
                message  = $_.Exception.Message
                category = [string]$_.CategoryInfo.Category
                command  = [string]$_.InvocationInfo.MyCommand
            }
        }
    }
    $doc | ConvertTo-Json -Depth 8 -Compress
}

# -- parameters and cmdlet objects ---------------------------------------------

function Get-Field {
    # A property of an object (a JSON parameter object or a cmdlet's output),
    # or $Default when absent or null. Every probe reads its parameters this
    # way because StrictMode forbids reading a property that does not exist.
    param($Object, [string]$Name, $Default)
    if ($null -eq $Object) { return $Default }
    $property = $Object.PSObject.Properties[$Name]
    if ($null -eq $property -or $null -eq $property.Value) { return $Default }
    return $property.Value
}

function Get-ListField {
    # A list property as always an array (a one-element or empty list too),
    # without nulls: JSON parameters and cmdlet output hand over a bare value
    # for one item and $null for none, and the probes loop over the result.
    param($Object, [string]$Name)
    $value = Get-Field $Object $Name $null
    return ,@($value | Where-Object { $null -ne $_ })
}

function Test-Fqdn {
    # $true for a string that is a fully qualified host name: two or more
    # labels of letters, digits and inner hyphens, at most 253 characters.
    # Shared so every probe that takes FQDNs (and may pass them to a cmdlet)
    # accepts exactly the same ones. \z, not $: in .NET '$' also matches
    # before a trailing newline.
    param($Value)
    $pattern = '^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)+\z'
    return ($Value -is [string] -and $Value.Length -le 253 -and $Value -match $pattern)
}

function ConvertTo-FqdnList {
    # A list parameter of FQDNs ($Items: the parameter's value, an array or
    # one value), checked in full before the probe does anything: a
    # non-string item or an invalid FQDN fails the probe, naming parameter
    # $Name ("must hold only strings (<Noun> FQDNs)" / "holds an invalid
    # FQDN"). Duplicates (any case) are dropped, the first spelling kept.
    # With -SkipNull, null items are ignored instead of failing. Returns a
    # List[string] (wrapped, so an empty or one-item list is not unrolled).
    param($Items, [string]$Name, [string]$Noun, [switch]$SkipNull)
    $list = New-Object -TypeName System.Collections.Generic.List[string]
    foreach ($item in @($Items)) {
        if ($SkipNull -and $null -eq $item) { continue }
        if ($item -isnot [string]) {
            throw ('parameter ' + $Name + ' must hold only strings (' + $Noun + ' FQDNs)')
        }
        if (-not (Test-Fqdn $item)) {
            throw ('parameter ' + $Name + ' holds an invalid FQDN: "' + $item + '"')
        }
        $seen = $false
        foreach ($previous in $list) {
            if ([string]::Equals($previous, $item, [StringComparison]::OrdinalIgnoreCase)) { $seen = $true }
        }
        if (-not $seen) { $list.Add($item) }
    }
    return ,$list
}

# -- errors --------------------------------------------------------------------

function Get-ErrorMessage {
    # The real exception's message, not PowerShell's 'Exception calling ...'
    # wrapper that a failed .NET method call adds: what the probes put into
    # their Error fields and thrown messages.
    param($ErrorRecord)
    $ex = $ErrorRecord.Exception
    while ($ex -is [System.Management.Automation.ExtendedTypeSystemException] -and $null -ne $ex.InnerException) {
        $ex = $ex.InnerException
    }
    return [string]$ex.Message
}

function Get-RecordMessage {
    # An error record as text: its ErrorDetails, then the messages of the
    # exception and its inner exceptions not already said, joined by ' ---> '.
    # Used for the error records a captured cmdlet wrote (Invoke-CapturedFailover),
    # where the inner exceptions often carry the only useful reason.
    param($Record)
    $ex = $Record.Exception
    if ($ex -is [System.Management.Automation.ActionPreferenceStopException] -and $null -ne $ex.ErrorRecord) {
        $Record = $ex.ErrorRecord
        $ex = $Record.Exception
    }
    $parts = New-Object -TypeName System.Collections.Generic.List[string]
    $details = $Record.ErrorDetails
    if ($null -ne $details -and -not [string]::IsNullOrWhiteSpace([string]$details.Message)) {
        $parts.Add(([string]$details.Message).Trim())
    }
    $depth = 0
    while ($null -ne $ex -and $depth -lt 8) {
        $text = ([string]$ex.Message).Trim()
        if ($text -ne '') {
            $said = $false
            foreach ($part in $parts) {
                if ($part.IndexOf($text, [StringComparison]::Ordinal) -ge 0) { $said = $true }
            }
            if (-not $said) { $parts.Add($text) }
        }
        $ex = $ex.InnerException
        $depth++
    }
    if ($parts.Count -eq 0) { $parts.Add(([string]$Record).Trim()) }
    return ($parts -join ' ---> ')
}

function Limit-Text {
    # At most $Max characters: the head and the tail, with a marker between,
    # so a chatty cmdlet's output cannot blow up the probe's JSON document.
    param([string]$Text, [int]$Max)
    if ($Text.Length -le $Max) { return $Text }
    $marker = "`n... [output cut: " + [string]$Text.Length + " characters in all] ...`n"
    $keep = $Max - $marker.Length
    $head = [int][Math]::Floor($keep / 2)
    $tail = $keep - $head
    return $Text.Substring(0, $head) + $marker + $Text.Substring($Text.Length - $tail)
}

# -- CMS failover / restore: run the cmdlet, keep everything it says -----------

function Invoke-CapturedFailover {
    # Runs Invoke-CsManagementServerFailover @Splat and returns the data of
    # cms-failover and cms-restore (the same shape for both): CollectedAt,
    # StartedAt, Mode, Command, Succeeded, Warnings [string], Errors [string],
    # Output. The cmdlet's refusal is data, not a probe error: its warnings,
    # error records (a terminating error too) and remaining output (verbose
    # messages included) are collected and returned; Succeeded is true when
    # it wrote no error record. Only a server without the cmdlet throws (and
    # then nothing was run). $Splat must be built by the caller from
    # validated values only; $Mode and $Command are reported as given.
    param([string]$Mode, [string]$Command, [hashtable]$Splat)
    if ($null -eq (Get-Command -Name 'Invoke-CsManagementServerFailover' -ErrorAction SilentlyContinue)) {
        throw 'Invoke-CsManagementServerFailover is not available on this server (it came with Lync Server 2013; Lync Server 2010 moves the CMS with Move-CsManagementServer); nothing was run'
    }

    # -- run it, keeping everything it says --
    # Items are collected as they stream, so what came before a terminating
    # error is kept; the terminating error itself is caught as a record.
    $items = New-Object -TypeName System.Collections.Generic.List[object]
    $startedAt = [DateTime]::UtcNow
    try {
        & {
            $ErrorActionPreference = 'Continue'
            $WarningPreference = 'Continue'
            Invoke-CsManagementServerFailover @Splat
        } 2>&1 3>&1 4>&1 | ForEach-Object { $items.Add($_) }
    } catch {
        $items.Add($_)
    }
    $collectedAt = [DateTime]::UtcNow

    # -- sort what it said --
    $warnings = New-Object -TypeName System.Collections.Generic.List[string]
    $errors = New-Object -TypeName System.Collections.Generic.List[string]
    $chunks = New-Object -TypeName System.Collections.Generic.List[string]
    foreach ($item in $items) {
        if ($null -eq $item) { continue }
        if ($item -is [System.Management.Automation.WarningRecord]) {
            $warnings.Add(([string]$item.Message).Trim())
        } elseif ($item -is [System.Management.Automation.ErrorRecord]) {
            $errors.Add((Get-RecordMessage $item))
        } elseif ($item -is [System.Management.Automation.VerboseRecord]) {
            $chunks.Add('VERBOSE: ' + ([string]$item.Message).TrimEnd())
        } elseif ($item -is [System.Management.Automation.DebugRecord]) {
            $chunks.Add('DEBUG: ' + ([string]$item.Message).TrimEnd())
        } elseif ($item -is [string]) {
            $chunks.Add($item.TrimEnd())
        } else {
            $chunks.Add(($item | Out-String -Width 4096).TrimEnd())
        }
    }
    $output = Limit-Text (($chunks -join "`n").Trim()) 20000

    return [ordered]@{
        CollectedAt = $collectedAt
        StartedAt   = $startedAt
        Mode        = $Mode
        Command     = $Command
        Succeeded   = ($errors.Count -eq 0)
        Warnings    = ConvertTo-StringList $warnings.ToArray()
        Errors      = ConvertTo-StringList $errors.ToArray()
        Output      = $output
    }
}

# -- files under %ProgramData%\cmsbot (export-configuration, import-configuration, reseed-local)

function Get-Sha256Hex {
    # Uppercase hex SHA-256, as Get-FileHash prints it. The CryptoServiceProvider class
    # rather than Get-FileHash's SHA256Managed, which throws on servers
    # enforcing FIPS-compliant algorithms. The probes report it so the caller
    # can check a zip end to end.
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

function Get-CmsbotZipName {
    # The fileName parameter of a probe that writes a zip under
    # %ProgramData%\cmsbot: required, and a bare file name
    # '<Prefix>-<1 to 64 of A-Z a-z 0-9 ->.zip' (no folder, no '..'), so the
    # path built from it stays in the folder. -cmatch and \z: exact case, and
    # no trailing newline let through by '$'. $Prefix is the probe's own
    # constant (e.g. 'cmsbot-export'), never a parameter.
    param($Params, [string]$Prefix)
    if ($Prefix -cnotmatch '^cmsbot-[a-z]+\z') { throw ('invalid zip name prefix: ' + $Prefix) }
    $namePattern = '^' + $Prefix + '-[A-Za-z0-9-]{1,64}\.zip\z'
    $fileName = Get-Field $Params 'fileName' $null
    if ($null -eq $fileName) {
        throw ('parameter fileName is required: a bare name like ' + $Prefix + '-<id>.zip')
    }
    if ($fileName -isnot [string] -or $fileName -cnotmatch $namePattern) {
        throw ('parameter fileName must be a bare file name matching ^' + $Prefix + '-[A-Za-z0-9-]{1,64}\.zip$')
    }
    return $fileName
}

function Get-CmsbotFilePath {
    # The full path of $FileName (already checked by Get-CmsbotZipName) in
    # %ProgramData%\cmsbot\<Leaf>, the folder created and secured first by
    # Initialize-CmsbotFolder. Fails when the resolved path is not inside the
    # folder: a second guard behind the name check.
    param([string]$Leaf, [string]$FileName)
    $folder = Initialize-CmsbotFolder $Leaf
    $path = [System.IO.Path]::GetFullPath([System.IO.Path]::Combine($folder, $FileName))
    if (-not $path.StartsWith($folder.TrimEnd('\') + '\', [StringComparison]::OrdinalIgnoreCase)) {
        throw ('refusing a path outside ' + $folder)
    }
    return $path
}

function Export-CmsbotConfiguration {
    # Export-CsConfiguration into $Path, which must not exist yet (an existing
    # export is a DR backup: never overwritten, the probe fails before
    # anything is exported), and returns the zip's bytes. No file, or an
    # empty one, fails the probe; $Suffix is appended to those two messages
    # (reseed-local adds that nothing was imported). The byte array is
    # returned wrapped, so the pipeline does not unroll it.
    param([string]$Path, [string]$Suffix)
    if ([System.IO.File]::Exists($Path) -or [System.IO.Directory]::Exists($Path)) {
        throw ('the export file already exists and is kept as a backup; choose a new fileName: ' + $Path)
    }
    $null = Export-CsConfiguration -FileName $Path -ErrorAction Stop
    if (-not [System.IO.File]::Exists($Path)) {
        throw ('Export-CsConfiguration returned without error but wrote no file at ' + $Path + $Suffix)
    }
    $bytes = [System.IO.File]::ReadAllBytes($Path)
    if ($bytes.Length -eq 0) {
        throw ('Export-CsConfiguration wrote an empty file at ' + $Path + $Suffix)
    }
    return ,$bytes
}
