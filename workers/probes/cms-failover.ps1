# probe: cms-failover v1
# deadline: 900 s (module load; a normal failover waits for replication: minutes (Microsoft's RTO is 5 minutes))
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
# Invoke-CsManagementServerFailover (Lync Server 2013 and later):
#   https://learn.microsoft.com/powershell/module/skypeforbusiness/invoke-csmanagementserverfailover
Invoke-Probe -Name 'cms-failover' -Version 1 -Body {
    param($Params)

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
        if (-not (Test-Fqdn $Value)) {
            throw ('parameter ' + $Name + ' is not a valid FQDN')
        }
    }

    function Assert-SqlInstance {
        param([string]$Name, $Value)
        if ($Value -isnot [string] -or $Value -notmatch '^[A-Za-z0-9_$]{1,16}\z') {
            throw ('parameter ' + $Name + ' must match ^[A-Za-z0-9_$]{1,16}$')
        }
    }

    # -- the parameters: checked in full before anything runs --
    $known = @('mode', 'backupSqlServerFqdn', 'backupSqlInstanceName', 'backupMirrorSqlServerFqdn', 'backupMirrorSqlInstanceName')
    foreach ($parameterName in (Get-FieldNames $Params)) {
        if ($known -cnotcontains $parameterName) {
            throw ('unknown parameter ' + $parameterName + ': expected ' + ($known -join ', '))
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

    # Checks the cmdlet exists, runs it and returns the data (see _lib.ps1).
    return Invoke-CapturedFailover -Mode $mode -Command $command -Splat $splat
}
