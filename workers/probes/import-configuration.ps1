# probe: import-configuration v1
# deadline: 300 s (module load; the zip on standard input, then Import-CsConfiguration -LocalStore)
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
# Import-CsConfiguration -FileName -LocalStore (Lync Server 2010 and later) returns nothing:
#   https://learn.microsoft.com/powershell/module/skypeforbusiness/import-csconfiguration
Invoke-Probe -Name 'import-configuration' -Version 1 -NoModule -Body {
    param($Params)

    function Test-InputRedirected {
        # [Console]::IsInputRedirected came with .NET 4.5; Windows PowerShell
        # 2.0 runs on .NET 3.5, where [Console]::KeyAvailable throws
        # InvalidOperationException exactly when standard input is redirected.
        $property = [Console].GetProperty('IsInputRedirected')
        if ($null -ne $property) { return [bool]$property.GetValue($null, $null) }
        try {
            $null = [Console]::KeyAvailable
            return $false
        } catch {
            return $true
        }
    }

    # -- standard input, first: the zip as base64 text --
    $received = $null
    $inputError = $null
    try {
        if (-not (Test-InputRedirected)) {
            throw 'standard input is a console, not the zip (the caller must send it on stdin)'
        }
        $received = [Console]::In.ReadToEnd()
    } catch {
        $inputError = Get-ErrorMessage $_
    }

    # -- the parameters --
    $fileName = Get-CmsbotZipName $Params 'cmsbot-export'
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
    $path = Get-CmsbotFilePath 'imports' $fileName
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

    $result = New-Record
    $result['CollectedAt'] = [DateTime]::UtcNow
    $result['Path'] = $path
    $result['Bytes'] = [int]$bytes.Length
    $result['Sha256'] = $actual
    $result['Imported'] = $true
    return $result
}
