# probe: backup-status v1
# The Backup Service's view of the CMS copy between paired pools (Lync Server
# 2013 and later; the caller does not run it on 2010), read on a CMS pool
# Front End: for each pool, its paired backup pool and the state of each
# backup module of category CMS (ExportStatus FinalState / SteadyState /
# NonSteadyState / NotInitialized / ErrorState, ImportStatus NormalState /
# ErrorState). An error for one pool is reported in that pool's Error and
# the other pools are still read.
# Parameters:
#   pools  [string]  pool FQDNs, e.g. ["pool01.contoso.com", "pool02.contoso.com"]
Invoke-Probe -Name 'backup-status' -Version 1 -Body {
    param($Params)

    function Assert-Property {
        # Fail (into the pool's Error) rather than report a wrong empty value
        # when a cmdlet's object does not have the property we rely on.
        param($Object, [string]$Name, [string]$What)
        if ($null -ne $Object.PSObject.Properties[$Name]) { return }
        $names = @($Object.PSObject.Properties | ForEach-Object { [string]$_.Name })
        throw ($What + ' has no ' + $Name + ' property (it has: ' + ($names -join ', ') + ')')
    }

    $pools = Get-ListField $Params 'pools'

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
                    Assert-Property $relation 'BackupPoolFqdn' 'Get-CsPoolBackupRelationship output'
                    $candidate = Get-Field $relation 'BackupPoolFqdn' ''
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
                Assert-Property $status 'BackupModules' 'Get-CsBackupServiceStatus output'
                foreach ($module in (Get-ListField $status 'BackupModules')) {
                    foreach ($name in 'Identity', 'ExportStatus', 'ImportStatus') {
                        Assert-Property $module $name 'a backup module'
                    }
                    [ordered]@{
                        Identity     = [string](Get-Field $module 'Identity' '')
                        ExportStatus = [string](Get-Field $module 'ExportStatus' '')
                        ImportStatus = [string](Get-Field $module 'ImportStatus' '')
                    }
                }
            })
        } catch {
            $modules = @()
            $problems += ('Get-CsBackupServiceStatus: ' + (Get-ErrorMessage $_))
        }

        $poolError = $null
        if ($problems.Count -gt 0) { $poolError = [string]($problems -join '; ') }
        [ordered]@{
            PoolFqdn       = $poolFqdn
            BackupPoolFqdn = $backupPoolFqdn
            Modules        = $modules
            Error          = $poolError
        }
    })

    [ordered]@{
        CollectedAt = [DateTime]::UtcNow
        Pools       = $results
    }
}
