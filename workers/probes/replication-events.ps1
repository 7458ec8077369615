# probe: replication-events v1
# deadline: 30 s (read-only: module load and a bounded Get-WinEvent)
# The recent events of the replication services in the 'Lync Server' event log,
# read on the host that runs the File Transfer Agent: sources
# 'LS File Transfer Agent Service', 'LS Master Replicator Agent Service',
# 'LS Replica Replicator Agent Service' and 'LS Backup Service' (2013+ only),
# newest first. Uses Get-WinEvent only, so the management module is not loaded.
# A missing 'Lync Server' log is an error; no matching events is an empty list.
# Parameters:
#   sinceHours  int  how far back to read, in hours (default 24)
#   maxEvents   int  at most this many events (default 200)
# Get-WinEvent (Windows PowerShell 2.0 and later; -FilterXPath, -MaxEvents, -ListLog):
# System.Diagnostics.Eventing.Reader.EventLogRecord, read with Get-Field: Id,
# ProviderName, TimeCreated, Level (1 Critical .. 5 Verbose; LevelDisplayName is
# localised, so it is not used), Message (its getter fails when the description
# cannot be rendered: then the message is "").
#   https://learn.microsoft.com/powershell/module/microsoft.powershell.diagnostics/get-winevent
#   https://learn.microsoft.com/dotnet/api/system.diagnostics.eventing.reader.eventlogrecord
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

    $eventSource = 'Get-WinEvent'
    $events = @(foreach ($record in $records) {
        $created = Get-Field $record 'TimeCreated' $null $eventSource
        if ($null -ne $created) { $created = ([DateTime]$created).ToUniversalTime() }

        # LevelDisplayName is localised and its getter can fail: the level number decides.
        $levelValue = [int](Get-Field $record 'Level' 4 $eventSource)
        $level = switch ($levelValue) {
            1 { 'Critical' }
            2 { 'Error' }
            3 { 'Warning' }
            5 { 'Verbose' }
            default { 'Information' }
        }

        # Message is null when the description cannot be rendered (its getter fails).
        $message = Get-TextField $record 'Message' $eventSource

        $row = New-Record
        $row['Id'] = [int](Get-Field $record 'Id' 0 $eventSource)
        $row['Source'] = Get-TextField $record 'ProviderName' $eventSource
        $row['TimeCreated'] = $created
        $row['Level'] = $level
        $row['Message'] = [string]$message
        $row
    })

    $result = New-Record
    $result['CollectedAt'] = [DateTime]::UtcNow
    $result['Computer'] = $computer
    $result['Events'] = $events
    $result
}
