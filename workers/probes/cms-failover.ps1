# probe: cms-failover v1
# CHANGES THE DEPLOYMENT: moves the Central Management Store to the pool of
# the server it runs on, with Invoke-CsManagementServerFailover (Lync Server
# 2013 and later). Run it on a server of the pool that takes over.
#   normal    the CMS is available: Invoke-CsManagementServerFailover
#             -Confirm:$false. No -Force: the cmdlet's help puts -Force only
#             in the disaster-recovery parameter set and warns that it skips
#             waiting for replication; -Confirm:$false answers the prompt.
#   disaster  the CMS pool is down: Invoke-CsManagementServerFailover
#             -BackupSqlServerFqdn <fqdn> [-BackupSqlInstanceName <name>]
#             [-BackupMirrorSqlServerFqdn <fqdn> [-BackupMirrorSqlInstanceName
#             <name>]] -Force -Confirm:$false
# The cmdlet's refusal is data, not a probe error: its warnings, error
# records (a terminating error too) and remaining output (verbose messages
# included) are collected and returned; Succeeded is true when it wrote no
# error record. Only invalid parameters, or a server without the cmdlet, fail
# the probe (and then nothing was run).
# Parameters:
#   mode                         "normal" | "disaster" (exact case)
#   backupSqlServerFqdn          disaster only, required there: the backup SQL server
#   backupSqlInstanceName        disaster only, optional: ^[A-Za-z0-9_$]{1,16}$
#   backupMirrorSqlServerFqdn    disaster only, optional: the mirror SQL server
#   backupMirrorSqlInstanceName  disaster only, optional, with the mirror server
# Any other parameter name fails the probe (a misspelt optional name must not
# be dropped silently); null and "" count as absent for the optional ones.
# Data: CollectedAt (UTC, when the cmdlet returned), StartedAt, Mode, Command
# (the command line run, for the audit log), Succeeded, Warnings [string],
# Errors [string], Output (the rest as text, trimmed, at most 20000 chars).
Invoke-Probe -Name 'cms-failover' -Version 1 -Body {
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

    function Get-OptionalText {
        # An optional string parameter: $null when absent, null or "".
        param($Object, [string]$Name)
        $value = Get-Field $Object $Name $null
        if ($null -eq $value) { return $null }
        if ($value -isnot [string]) { throw ('parameter ' + $Name + ' must be a string') }
        if ($value -eq '') { return $null }
        return $value
    }

    function Assert-Fqdn {
        param([string]$Name, $Value)
        # \z, not $: in .NET '$' also matches before a trailing newline.
        $pattern = '^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)+\z'
        if ($Value -isnot [string] -or $Value.Length -gt 253 -or $Value -notmatch $pattern) {
            throw ('parameter ' + $Name + ' is not a valid FQDN')
        }
    }

    function Assert-SqlInstance {
        param([string]$Name, $Value)
        if ($Value -isnot [string] -or $Value -notmatch '^[A-Za-z0-9_$]{1,16}\z') {
            throw ('parameter ' + $Name + ' must match ^[A-Za-z0-9_$]{1,16}$')
        }
    }

    function Get-RecordMessage {
        # An error record as text: its ErrorDetails, then the messages of the
        # exception and its inner exceptions not already said, joined by ' ---> '.
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
        # At most $Max characters: the head and the tail, with a marker between.
        param([string]$Text, [int]$Max)
        if ($Text.Length -le $Max) { return $Text }
        $marker = "`n... [output cut: " + [string]$Text.Length + " characters in all] ...`n"
        $keep = $Max - $marker.Length
        $head = [int][Math]::Floor($keep / 2)
        $tail = $keep - $head
        return $Text.Substring(0, $head) + $marker + $Text.Substring($Text.Length - $tail)
    }

    # -- the parameters: checked in full before anything runs --
    $known = @('mode', 'backupSqlServerFqdn', 'backupSqlInstanceName', 'backupMirrorSqlServerFqdn', 'backupMirrorSqlInstanceName')
    if ($null -ne $Params) {
        foreach ($property in @($Params.PSObject.Properties)) {
            if ($known -cnotcontains $property.Name) {
                throw ('unknown parameter ' + [string]$property.Name + ': expected ' + ($known -join ', '))
            }
        }
    }
    $mode = Get-Field $Params 'mode' $null
    if ($null -eq $mode) {
        throw 'parameter mode is required: "normal" or "disaster"'
    }
    if ($mode -isnot [string] -or ($mode -cne 'normal' -and $mode -cne 'disaster')) {
        throw 'parameter mode must be "normal" or "disaster"'
    }

    $sqlServer = Get-OptionalText $Params 'backupSqlServerFqdn'
    $sqlInstance = Get-OptionalText $Params 'backupSqlInstanceName'
    $mirrorServer = Get-OptionalText $Params 'backupMirrorSqlServerFqdn'
    $mirrorInstance = Get-OptionalText $Params 'backupMirrorSqlInstanceName'

    # Built from validated values only: the splat that runs, and its text.
    $splat = @{}
    $words = New-Object -TypeName System.Collections.Generic.List[string]
    $words.Add('Invoke-CsManagementServerFailover')

    if ($mode -ceq 'normal') {
        foreach ($name in 'backupSqlServerFqdn', 'backupSqlInstanceName', 'backupMirrorSqlServerFqdn', 'backupMirrorSqlInstanceName') {
            if ($null -ne (Get-OptionalText $Params $name)) {
                throw ('parameter ' + $name + ' is only for mode "disaster"; a normal failover uses the database the topology names')
            }
        }
    } else {
        if ($null -eq $sqlServer) {
            throw 'mode "disaster" requires parameter backupSqlServerFqdn: the FQDN of the backup SQL server'
        }
        Assert-Fqdn 'backupSqlServerFqdn' $sqlServer
        if ($null -ne $sqlInstance) { Assert-SqlInstance 'backupSqlInstanceName' $sqlInstance }
        if ($null -ne $mirrorServer) { Assert-Fqdn 'backupMirrorSqlServerFqdn' $mirrorServer }
        if ($null -ne $mirrorInstance) {
            if ($null -eq $mirrorServer) {
                throw 'parameter backupMirrorSqlInstanceName needs backupMirrorSqlServerFqdn'
            }
            Assert-SqlInstance 'backupMirrorSqlInstanceName' $mirrorInstance
        }

        $splat['BackupSqlServerFqdn'] = $sqlServer
        $words.Add("-BackupSqlServerFqdn '" + $sqlServer + "'")
        if ($null -ne $sqlInstance) {
            $splat['BackupSqlInstanceName'] = $sqlInstance
            $words.Add("-BackupSqlInstanceName '" + $sqlInstance + "'")
        }
        if ($null -ne $mirrorServer) {
            $splat['BackupMirrorSqlServerFqdn'] = $mirrorServer
            $words.Add("-BackupMirrorSqlServerFqdn '" + $mirrorServer + "'")
        }
        if ($null -ne $mirrorInstance) {
            $splat['BackupMirrorSqlInstanceName'] = $mirrorInstance
            $words.Add("-BackupMirrorSqlInstanceName '" + $mirrorInstance + "'")
        }
        # Required by the disaster-recovery parameter set.
        $splat['Force'] = $true
        $words.Add('-Force')
    }
    # No prompt in a non-interactive shell; progress detail into Output;
    # errors and warnings kept, not thrown or hidden.
    $splat['Confirm'] = $false
    $words.Add('-Confirm:$false')
    $splat['Verbose'] = $true
    $words.Add('-Verbose')
    $splat['ErrorAction'] = 'Continue'
    $words.Add('-ErrorAction Continue')
    $splat['WarningAction'] = 'Continue'
    $words.Add('-WarningAction Continue')
    $command = $words -join ' '

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
            Invoke-CsManagementServerFailover @splat
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
        Mode        = $mode
        Command     = $command
        Succeeded   = ($errors.Count -eq 0)
        Warnings    = ConvertTo-StringList $warnings.ToArray()
        Errors      = ConvertTo-StringList $errors.ToArray()
        Output      = $output
    }
}
