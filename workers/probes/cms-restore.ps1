# probe: cms-restore v1
# deadline: 900 s (module load; restoring the store waits for replication like a failover)
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
# Invoke-CsManagementServerFailover (Lync Server 2013 and later):
#   https://learn.microsoft.com/powershell/module/skypeforbusiness/invoke-csmanagementserverfailover
Invoke-Probe -Name 'cms-restore' -Version 1 -Body {
    param($Params)

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

    # Checks the cmdlet exists, runs it and returns the data (see _lib.ps1).
    return Invoke-CapturedFailover -Mode $mode -Command $command -Splat $splat
}
