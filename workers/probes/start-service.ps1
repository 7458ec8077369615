# probe: start-service v1
# deadline: 240 s (module load; Start-CsWindowsService waits up to 120 s for the service, then 60 s more)
# CHANGES THE SERVER: starts one Lync / Skype for Business replication
# service on the server it runs on, with Start-CsWindowsService (which waits
# until the service has started), then reads its state back with
# Get-CsWindowsService (Get-Service when that cmdlet is missing or fails).
# A service that is already running is left alone, never restarted; one that
# is starting is waited for; one that is stopping is waited for, then started.
# A paused service is refused (it needs resuming, not starting).
# Parameters:
#   name  string  the service's short name, one of REPLICA, MASTER, FTA,
#                 LYNCBACKUP (anything else fails the probe)
# Data: Name, Before and After (service status, e.g. "Stopped", "Running"),
# Started (true when this probe issued the start and it returned without
# error; the caller compares After with "Running").
# Get-CsWindowsService [-Name] [-ExcludeActivityLevel] and Start-CsWindowsService
# -Name (Lync Server 2010 and later): Microsoft.Rtc.Management.Deployment.Core.NTService,
# Status as in the help's example (Where-Object {$_.Status -eq "Running"}); read with Get-Field.
#   https://learn.microsoft.com/powershell/module/skypeforbusiness/get-cswindowsservice
#   https://learn.microsoft.com/powershell/module/skypeforbusiness/start-cswindowsservice
Invoke-Probe -Name 'start-service' -Version 1 -Body {
    param($Params)

    function Get-ServiceStatus {
        # The service's status as text ("Running", "Stopped", ...): from
        # Get-CsWindowsService when it answers, else from Get-Service.
        param([string]$ServiceName)
        $csError = $null
        if ($null -ne (Get-Command -Name 'Get-CsWindowsService' -ErrorAction SilentlyContinue)) {
            try {
                # -ExcludeActivityLevel: status only, no performance counters
                # (those also need Performance Monitor Users membership).
                $found = @(Get-CsWindowsService -Name $ServiceName -ExcludeActivityLevel -ErrorAction Stop |
                    Where-Object { $null -ne $_ })
                if ($found.Count -gt 0) {
                    $status = Get-Field $found[0] 'Status' $null 'Get-CsWindowsService'
                    if ($null -ne $status -and [string]$status -ne '') { return [string]$status }
                }
                $csError = 'Get-CsWindowsService returned no status'
            } catch {
                $csError = Get-ErrorMessage $_
            }
        }
        $services = @(Get-Service -Name $ServiceName -ErrorAction SilentlyContinue | Where-Object { $null -ne $_ })
        if ($services.Count -eq 0) {
            $message = 'the service ' + $ServiceName + ' is not installed on this server'
            if ($null -ne $csError) { $message = $message + ' (Get-CsWindowsService: ' + $csError + ')' }
            throw $message
        }
        return [string](Get-Field $services[0] 'Status' '' 'Get-Service')
    }

    function Wait-ServiceStatus {
        # Waits up to $Seconds for the service to reach $Wanted; a timeout is
        # not an error here: the status read afterwards tells the caller.
        param([string]$ServiceName, [string]$Wanted, [int]$Seconds)
        $services = @(Get-Service -Name $ServiceName -ErrorAction SilentlyContinue | Where-Object { $null -ne $_ })
        if ($services.Count -eq 0) { return }
        $target = [System.ServiceProcess.ServiceControllerStatus]$Wanted
        try {
            $services[0].WaitForStatus($target, [TimeSpan]::FromSeconds($Seconds))
        } catch {
            $null = $_
        }
    }

    # -- the parameter: one name from the allow-list, never anything else --
    $allowed = @('REPLICA', 'MASTER', 'FTA', 'LYNCBACKUP')
    $raw = Get-Field $Params 'name' $null
    if ($null -eq $raw) {
        throw ('parameter name is required: one of ' + ($allowed -join ', '))
    }
    if ($raw -isnot [string]) {
        throw ('parameter name must be a string: one of ' + ($allowed -join ', '))
    }
    $name = $null
    foreach ($candidate in $allowed) {
        if ([string]::Equals($raw, $candidate, [StringComparison]::OrdinalIgnoreCase)) { $name = $candidate }
    }
    if ($null -eq $name) {
        throw ('parameter name is not an allowed service name: one of ' + ($allowed -join ', '))
    }

    $before = Get-ServiceStatus $name
    $started = $false

    switch ($before) {
        'Running' {
            # Already running: leave it alone.
        }
        'StartPending' {
            Wait-ServiceStatus $name 'Running' 120
        }
        'ContinuePending' {
            Wait-ServiceStatus $name 'Running' 120
        }
        'Paused' {
            throw ('the service ' + $name + ' is Paused: it needs resuming, not starting; nothing was changed')
        }
        'PausePending' {
            throw ('the service ' + $name + ' is being paused (PausePending); nothing was changed')
        }
        default {
            if ($before -eq 'StopPending') {
                Wait-ServiceStatus $name 'Stopped' 120
            }
            # Start-CsWindowsService waits for the service to start (no -NoWait)
            # and returns nothing; -Confirm:$false so a non-interactive shell is
            # never asked.
            $null = Start-CsWindowsService -Name $name -Confirm:$false -ErrorAction Stop
            $started = $true
        }
    }

    $after = Get-ServiceStatus $name
    if ($started -and $after -eq 'StartPending') {
        Wait-ServiceStatus $name 'Running' 60
        $after = Get-ServiceStatus $name
    }

    $result = New-Record
    $result['CollectedAt'] = [DateTime]::UtcNow
    $result['Name'] = $name
    $result['Before'] = $before
    $result['After'] = $after
    $result['Started'] = $started
    return $result
}
