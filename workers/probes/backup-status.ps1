# probe: backup-status v1
# deadline: 30 s (read-only: module load and Get-CsBackupServiceStatus per pool)
# The Backup Service's view of the CMS copy between paired pools (Lync Server
# 2013 and later; the caller does not run it on 2010), read on a CMS pool
# Front End: for each pool, its paired backup pool and the state of each
# backup module of category CMS (ExportStatus FinalState / SteadyState /
# NonSteadyState / NotInitialized / ErrorState, ImportStatus NormalState /
# ErrorState). An error for one pool is reported in that pool's Error and
# the other pools are still read.
# Parameters:
#   pools  [string]  pool FQDNs, e.g. ["pool01.contoso.com", "pool02.contoso.com"]
# Every cmdlet property is read with Get-Field (_lib.ps1): one a version lacks is
# null here and named in data.NotReported, never a failed probe.
#   Get-CsPoolBackupRelationship -PoolFqdn (2013+): BackupPoolFqdn, "the fully
#     qualified domain name of the backup pool".
#     https://learn.microsoft.com/powershell/module/skypeforbusiness/get-cspoolbackuprelationship
#   Get-CsBackupServiceStatus -PoolFqdn -Category CMS (2013+): BackupModules, each
#     with Identity, ExportStatus, ImportStatus (as Microsoft's CMS failover
#     troubleshooting reads them; the help page lists no output properties).
#     https://learn.microsoft.com/powershell/module/skypeforbusiness/get-csbackupservicestatus
Invoke-Probe -Name 'backup-status' -Version 1 -Body {
    param($Params)

    $pools = Get-ListField $Params 'pools'
    $relationSource = 'Get-CsPoolBackupRelationship'
    $statusSource = 'Get-CsBackupServiceStatus'

    $results = @(foreach ($pool in $pools) {
        $poolFqdn = [string]$pool
        $problems = @()

        $backupPoolFqdn = $null
        try {
            $relations = @(Get-CsPoolBackupRelationship -PoolFqdn $poolFqdn -ErrorAction Stop |
                Where-Object { $null -ne $_ })
            foreach ($relation in $relations) {
                if ($relation -is [string]) {
                    $candidate = $relation
                } else {
                    $candidate = Get-TextField $relation 'BackupPoolFqdn' $relationSource
                }
                if ([string]$candidate -ne '') {
                    $backupPoolFqdn = [string]$candidate
                    break
                }
            }
        } catch {
            $problems += ('Get-CsPoolBackupRelationship: ' + (Get-ErrorMessage $_))
        }

        $modules = @()
        try {
            $statuses = @(Get-CsBackupServiceStatus -PoolFqdn $poolFqdn -Category CMS -ErrorAction Stop |
                Where-Object { $null -ne $_ })
            $modules = @(foreach ($status in $statuses) {
                foreach ($module in (Get-ListField $status 'BackupModules' $statusSource)) {
                    $row = New-Record
                    $row['Identity'] = Get-TextField $module 'Identity' ($statusSource + ' BackupModules')
                    $row['ExportStatus'] = Get-TextField $module 'ExportStatus' ($statusSource + ' BackupModules')
                    $row['ImportStatus'] = Get-TextField $module 'ImportStatus' ($statusSource + ' BackupModules')
                    $row
                }
            })
        } catch {
            $modules = @()
            $problems += ('Get-CsBackupServiceStatus: ' + (Get-ErrorMessage $_))
        }

        $poolError = $null
        if ($problems.Count -gt 0) { $poolError = [string]($problems -join '; ') }
        $row = New-Record
        $row['PoolFqdn'] = $poolFqdn
        $row['BackupPoolFqdn'] = $backupPoolFqdn
        $row['Modules'] = $modules
        $row['Error'] = $poolError
        $row
    })

    $result = New-Record
    $result['CollectedAt'] = [DateTime]::UtcNow
    $result['Pools'] = $results
    $result
}
