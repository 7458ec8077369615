# probe: cms-restore v1
# CHANGES THE DEPLOYMENT: restores the existing Central Management Store
# database with Invoke-CsManagementServerFailover -Restore (Lync Server 2013
# and later): step 3 of the recovery when a CMS failover is blocked ("being
# moved to another location", "not in Backup mode", "a failover in progress").
# Run it on ONE server of the pool that owns the CMS SQL store (see
# cms-location); then re-seed each server of that pool (reseed-local) and
# force replication. The command is Invoke-CsManagementServerFailover
# -Restore -Confirm:$false (no -Force: the cmdlet's help puts -Force only in
# the disaster-recovery parameter set, which -Restore is not part of).
# The cmdlet's refusal is data, not a probe error: its warnings, error
# records (a terminating error too) and remaining output (verbose messages
# included) are collected and returned; Succeeded is true when it wrote no
# error record. Only a server without the cmdlet fails the probe (and then
# nothing was run).
# Parameters: none (any given are ignored).
# Data: CollectedAt (UTC, when the cmdlet returned), StartedAt, Mode
# ("restore"), Command (the command line run, for the audit log), Succeeded,
# Warnings [string], Errors [string], Output (the rest as text, trimmed, at
# most 20000 chars).
Invoke-Probe -Name 'cms-restore' -Version 1 -Body {
    param($Params)

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

    $mode = 'restore'
    # Fixed: nothing from the parameters reaches the command.
    $splat = @{
        Restore       = $true
        Confirm       = $false
        Verbose       = $true
        ErrorAction   = 'Continue'
        WarningAction = 'Continue'
    }
    $command = 'Invoke-CsManagementServerFailover -Restore -Confirm:$false -Verbose -ErrorAction Continue -WarningAction Continue'

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
