# probe: replication-events v1
# The recent events of the replication services in the 'Lync Server' event log,
# read on the host that runs the File Transfer Agent: sources
# 'LS File Transfer Agent Service', 'LS Master Replicator Agent Service',
# 'LS Replica Replicator Agent Service' and 'LS Backup Service' (2013+ only),
# newest first. Uses Get-WinEvent only, so the management module is not loaded.
# A missing 'Lync Server' log is an error; no matching events is an empty list.
# Parameters:
#   sinceHours  int  how far back to read, in hours (default 24)
#   maxEvents   int  at most this many events (default 200)
Invoke-Probe -Name 'replication-events' -Version 1 -NoModule -Body {
    param($Params)

    function Test-NoMatchingEvents {
        # Get-WinEvent reports "nothing matched" as an error; the id is not localized.
        param($ErrorRecord)
        if ($ErrorRecord -isnot [System.Management.Automation.ErrorRecord]) { return $false }
        if ([string]$ErrorRecord.FullyQualifiedErrorId -like 'NoMatchingEventsFound*') { return $true }
        return ([string]$ErrorRecord.Exception.Message -like '*No events were found that match the specified selection criteria*')
    }

    $sinceHours = [int](Get-Field $Params 'sinceHours' 24)
    if ($sinceHours -lt 1) { $sinceHours = 1 }
    $maxEvents = [int](Get-Field $Params 'maxEvents' 200)
    if ($maxEvents -lt 1) { $maxEvents = 1 }

    $logName = 'Lync Server'
    $sources = @(
        'LS File Transfer Agent Service'
        'LS Master Replicator Agent Service'
        'LS Replica Replicator Agent Service'
        'LS Backup Service'
    )

    $computer = [string]$env:COMPUTERNAME
    try {
        $computer = [string]([System.Net.Dns]::GetHostEntry([string]$env:COMPUTERNAME).HostName)
    } catch {
        $computer = [string]$env:COMPUTERNAME
    }

    # A missing log is a real error: let this throw (NoMatchingLogsFound).
    $null = Get-WinEvent -ListLog $logName -ErrorAction Stop

    # The sources and the time window are filtered by the event log service
    # with an XPath query, not with ProviderName in a FilterHashtable: that
    # refuses a provider not registered on the host (LS Backup Service on Lync
    # 2010), and filtering in script would make Get-WinEvent render the
    # message of every other Lync Server event first. The query is built from
    # the constant source names above and an integer; no parameter text.
    $windowMs = ([long]$sinceHours * 3600000).ToString([System.Globalization.CultureInfo]::InvariantCulture)
    $providerTest = @($sources | ForEach-Object { "@Name='" + $_ + "'" }) -join ' or '
    $xpath = '*[System[Provider[' + $providerTest + '] and TimeCreated[timediff(@SystemTime) <= ' + $windowMs + ']]]'

    # Get-WinEvent (newest first) reports an event whose message cannot be
    # rendered as a non-terminating error and still returns the event; under
    # -ErrorAction Stop that one event would sink the whole query. So errors
    # are collected: "no events" means an empty list, and any other error
    # fails the probe only when no event at all could be read.
    $records = @()
    $readErrors = $null
    try {
        $records = @(Get-WinEvent -LogName $logName -FilterXPath $xpath -MaxEvents $maxEvents -ErrorAction SilentlyContinue -ErrorVariable readErrors |
            Where-Object { $null -ne $_ })
    } catch {
        if (-not (Test-NoMatchingEvents $_)) { throw }
        $records = @()
    }
    $failures = @(@($readErrors) | Where-Object { $null -ne $_ -and -not (Test-NoMatchingEvents $_) })
    if ($records.Count -eq 0 -and $failures.Count -gt 0) { throw $failures[0] }

    $events = @(foreach ($record in $records) {
        $created = $record.TimeCreated
        if ($null -ne $created) { $created = ([DateTime]$created).ToUniversalTime() }

        $level = $null
        try { $level = [string]$record.LevelDisplayName } catch { $level = $null }
        if (-not $level) {
            $levelValue = 4
            try { $levelValue = [int]$record.Level } catch { $levelValue = 4 }
            $level = switch ($levelValue) {
                1 { 'Critical' }
                2 { 'Error' }
                3 { 'Warning' }
                5 { 'Verbose' }
                default { 'Information' }
            }
        }

        # Message is null when the description cannot be rendered.
        $message = $null
        try { $message = $record.Message } catch { $message = $null }

        [ordered]@{
            Id          = [int]$record.Id
            Source      = [string]$record.ProviderName
            TimeCreated = $created
            Level       = [string]$level
            Message     = [string]$message
        }
    })

    [ordered]@{
        CollectedAt = [DateTime]::UtcNow
        Computer    = $computer
        Events      = $events
    }
}
