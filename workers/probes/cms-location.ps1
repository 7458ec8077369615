# probe: cms-location v1
# deadline: 30 s (read-only: module load and Get-CsService / Get-CsManagementConnection)
# Read-only: where the Central Management Store lives now, read on a Front
# End (recovery step 2 of the failover article). Reports the management
# connection this server uses (Get-CsManagementConnection: the SQL store that
# holds the CMS), the CMS services of the topology (Get-CsService
# -CentralManagement: which pool is Active), and for each pool its paired
# backup pool (Get-CsPoolBackupRelationship), its computers and its back-end
# SQL server (Get-CsPool), so the caller can tell which pool owns the store.
# Each part is read on its own: a failure is reported (ConnectionError,
# ServicesError, an item's Error) and the other parts are still read, because
# in a broken failover the topology cmdlets may fail while the connection
# still answers.
# Parameters:
#   pools  [string]  pool FQDNs, e.g. ["pool01.contoso.com", "pool02.contoso.com"];
#                    missing or empty: the pools Get-CsService -CentralManagement names
# Data: CollectedAt; Connection (null, or StoreProvider, SqlServer, SqlInstance
# ("" for the default instance), Source: the cmdlet's own text); ConnectionError;
# Services [{PoolFqdn, SiteId, Version, Active}]; ServicesError;
# Pairs [{PoolFqdn, BackupPoolFqdn|null, Error|null}];
# Pools [{PoolFqdn, Computers [string], BackendSql (SQL server FQDN)|null, Error|null}].
# Every cmdlet property is read with Get-Field (_lib.ps1): one a version lacks is
# null here and named in data.NotReported, never a failed probe.
#   Get-CsManagementConnection (2010+): Microsoft.Rtc.Management.Xds.ManagementConnection;
#     StoreProvider, Connection, SqlServer, SqlInstance are what it displays.
#     https://learn.microsoft.com/powershell/module/skypeforbusiness/get-csmanagementconnection
#   Get-CsService -CentralManagement (2010+): PoolFqdn, SiteId, Version; Active from 2013 on.
#     https://learn.microsoft.com/powershell/module/skypeforbusiness/get-csservice
#   Get-CsPoolBackupRelationship (Lync Server 2013 and later): BackupPoolFqdn
#     ("returns the fully qualified domain name of the backup pool").
#     https://learn.microsoft.com/powershell/module/skypeforbusiness/get-cspoolbackuprelationship
#   Get-CsPool (2010+): Computers ("an array of objects representing each
#     computer in the pool"), Services.
#     https://learn.microsoft.com/powershell/module/skypeforbusiness/get-cspool
Invoke-Probe -Name 'cms-location' -Version 1 -Body {
    param($Params)

    function Get-Text {
        # A value as trimmed text, '' for null.
        param($Value)
        if ($null -eq $Value) { return '' }
        return ([string]$Value).Trim()
    }

    function Get-PropertyNames {
        param($Object)
        return ((Get-FieldNames $Object) -join ', ')
    }

    function Split-SqlDataSource {
        # 'tcp:sql01.contoso.com\rtc,1433' -> @('sql01.contoso.com', 'rtc').
        # A value that does not look like a host name gives @('', '').
        param([string]$DataSource)
        $ds = $DataSource.Trim()
        $ds = $ds -replace '^(tcp|np|lpc|admin):', ''
        $comma = $ds.IndexOf(',')
        if ($comma -ge 0) { $ds = $ds.Substring(0, $comma) }
        $server = $ds
        $instance = ''
        $slash = $ds.IndexOf('\')
        if ($slash -ge 0) {
            $server = $ds.Substring(0, $slash)
            $instance = $ds.Substring($slash + 1)
        }
        $server = $server.Trim()
        $instance = $instance.Trim()
        if ($server -notmatch '^[A-Za-z0-9._-]{1,253}\z') { return ,@('', '') }
        if ($instance -ne '' -and $instance -notmatch '^[A-Za-z0-9_$#&]{1,128}\z') { $instance = '' }
        return ,@($server, $instance)
    }

    function Get-SqlDataSource {
        # The data source of a SQL connection string ("Data Source=...;..."),
        # or the whole text when it is a bare "server\instance".
        param([string]$Connection)
        if ($Connection.IndexOf('=') -lt 0) { return $Connection.Trim() }
        foreach ($part in $Connection.Split(';')) {
            $equals = $part.IndexOf('=')
            if ($equals -lt 1) { continue }
            $key = $part.Substring(0, $equals).Trim()
            foreach ($name in 'Data Source', 'Server', 'Address', 'Addr', 'Network Address') {
                if ([string]::Equals($key, $name, [StringComparison]::OrdinalIgnoreCase)) {
                    return $part.Substring($equals + 1).Trim().Trim('"').Trim("'")
                }
            }
        }
        return ''
    }

    function Get-ComputerName {
        # Get-CsPool's Computers hold computer objects (or their names).
        param($Computer)
        if ($Computer -is [string]) { return $Computer.Trim() }
        foreach ($name in 'Fqdn', 'Identity') {
            $value = Get-Text (Get-Field $Computer $name $null)
            if ($value -ne '') { return $value }
        }
        return Get-Text $Computer
    }

    function Get-BackendSql {
        # The pool's back-end SQL server FQDN: a UserDatabase service of the
        # pool itself, else the UserDatabase dependency of its UserServer
        # service (a Front End pool's user services name their SQL store as
        # "UserDatabase:<sql fqdn>"); $null when neither is found.
        param([string[]]$Services)
        foreach ($service in $Services) {
            if ($service -match '^UserDatabase:(.+)\z') { return $Matches[1].Trim() }
        }
        foreach ($service in $Services) {
            if ($service -notmatch '^UserServer:') { continue }
            $found = @(Get-CsService -Identity $service -ErrorAction Stop | Where-Object { $null -ne $_ })
            foreach ($candidate in $found) {
                $database = Get-Text (Get-Field $candidate 'UserDatabase' $null 'Get-CsService -Identity UserServer')
                if ($database -match '^UserDatabase:(.+)\z') { return $Matches[1].Trim() }
                if ($database -match '^[A-Za-z0-9._-]{1,253}\z') { return $database }
            }
        }
        return $null
    }

    # -- the parameter: a list of valid pool FQDNs (may be empty) --
    # @(...): the value as the probe always collected it (absent is one null, skipped).
    $requested = ConvertTo-FqdnList -Items @(Get-Field $Params 'pools' $null) -Name 'pools' -Noun 'pool' -SkipNull
    if ($requested.Count -gt 50) {
        throw 'parameter pools holds more than 50 pools'
    }

    # -- the management connection: which SQL store holds the CMS --
    $connection = $null
    $connectionError = $null
    try {
        $found = @(Get-CsManagementConnection -ErrorAction Stop | Where-Object { $null -ne $_ })
        if ($found.Count -eq 0) {
            $connectionError = 'Get-CsManagementConnection returned nothing'
        } else {
            $managementConnection = $found[0]
            $connectionSource = 'Get-CsManagementConnection'
            $provider = Get-Text (Get-Field $managementConnection 'StoreProvider' $null $connectionSource)
            $connectionText = Get-Text (Get-Field $managementConnection 'Connection' $null $connectionSource)
            $sqlServer = Get-Text (Get-Field $managementConnection 'SqlServer' $null $connectionSource)
            $sqlInstance = Get-Text (Get-Field $managementConnection 'SqlInstance' $null $connectionSource)
            if ($sqlServer.IndexOf('\') -ge 0) {
                $split = Split-SqlDataSource $sqlServer
                $sqlServer = $split[0]
                if ($sqlInstance -eq '') { $sqlInstance = $split[1] }
            }
            # Fill what the properties leave out from the connection text,
            # never for a file-system store (its Connection is a folder).
            if ($connectionText -ne '' -and -not [string]::Equals($provider, 'FileSystem', [StringComparison]::OrdinalIgnoreCase)) {
                $split = Split-SqlDataSource (Get-SqlDataSource $connectionText)
                if ($sqlServer -eq '') {
                    $sqlServer = $split[0]
                    if ($sqlInstance -eq '') { $sqlInstance = $split[1] }
                } elseif ($sqlInstance -eq '' -and [string]::Equals($sqlServer, $split[0], [StringComparison]::OrdinalIgnoreCase)) {
                    $sqlInstance = $split[1]
                }
            }
            $source = [string]$managementConnection
            if ($source.Trim() -eq '' -or $source -eq $managementConnection.GetType().FullName) {
                # ToString() is not overridden: the cmdlet's list view instead.
                $source = ($managementConnection | Format-List -Property * | Out-String -Width 4096).Trim()
            }
            $connection = New-Record
            $connection['StoreProvider'] = $provider
            $connection['SqlServer'] = $sqlServer
            $connection['SqlInstance'] = $sqlInstance
            $connection['Source'] = $source
        }
    } catch {
        $connection = $null
        $connectionError = 'Get-CsManagementConnection: ' + (Get-ErrorMessage $_)
    }

    # -- the CMS services: the active pool and its standby --
    $services = @()
    $servicesError = $null
    try {
        $serviceSource = 'Get-CsService -CentralManagement'
        $services = @(Get-CsService -CentralManagement -ErrorAction Stop | Where-Object { $null -ne $_ } | ForEach-Object {
            $row = New-Record
            $row['PoolFqdn'] = Get-Text (Get-Field $_ 'PoolFqdn' $null $serviceSource)
            $row['SiteId'] = Get-Text (Get-Field $_ 'SiteId' $null $serviceSource)
            $row['Version'] = Get-Text (Get-Field $_ 'Version' $null $serviceSource)
            # null when this version has no Active (Lync Server 2010): not reported
            $row['Active'] = Get-FlagField $_ 'Active' $serviceSource
            $row
        })
    } catch {
        $services = @()
        $servicesError = 'Get-CsService -CentralManagement: ' + (Get-ErrorMessage $_)
    }

    # -- the pools to describe: the parameter, else the CMS pools --
    $poolList = New-Object -TypeName System.Collections.Generic.List[string]
    if ($requested.Count -gt 0) {
        foreach ($pool in $requested) { $poolList.Add($pool) }
    } else {
        foreach ($service in $services) {
            $pool = [string]$service['PoolFqdn']
            if (-not (Test-Fqdn $pool)) { continue }
            $seen = $false
            foreach ($previous in $poolList) {
                if ([string]::Equals($previous, $pool, [StringComparison]::OrdinalIgnoreCase)) { $seen = $true }
            }
            if (-not $seen) { $poolList.Add($pool) }
        }
    }

    # -- each pool's paired backup pool --
    $pairs = @(foreach ($pool in $poolList) {
        $backupPoolFqdn = $null
        $pairError = $null
        try {
            if ($null -eq (Get-Command -Name 'Get-CsPoolBackupRelationship' -ErrorAction SilentlyContinue)) {
                throw 'the cmdlet is not available on this server (pool pairing came with Lync Server 2013)'
            }
            $relations = @(Get-CsPoolBackupRelationship -PoolFqdn $pool -ErrorAction Stop | Where-Object { $null -ne $_ })
            foreach ($relation in $relations) {
                if ($relation -is [string]) {
                    $candidate = $relation.Trim()
                } else {
                    $candidate = Get-Text (Get-Field $relation 'BackupPoolFqdn' $null)
                    if ($candidate -eq '') { $candidate = Get-Text (Get-Field $relation 'BackupPool' $null) }
                    if (-not (Test-Field $relation 'BackupPoolFqdn') -and -not (Test-Field $relation 'BackupPool')) {
                        $pairError = 'Get-CsPoolBackupRelationship output has no BackupPoolFqdn property (it has: ' + (Get-PropertyNames $relation) + ')'
                    }
                }
                if ($candidate -ne '' -and $null -eq $backupPoolFqdn) { $backupPoolFqdn = $candidate }
            }
        } catch {
            $backupPoolFqdn = $null
            $pairError = 'Get-CsPoolBackupRelationship: ' + (Get-ErrorMessage $_)
        }
        $pair = New-Record
        $pair['PoolFqdn'] = $pool
        $pair['BackupPoolFqdn'] = $backupPoolFqdn
        $pair['Error'] = $pairError
        $pair
    })

    # -- each pool's computers and back-end SQL server --
    $pools = @(foreach ($pool in $poolList) {
        $computers = @()
        $backendSql = $null
        $poolError = $null
        try {
            $found = @(Get-CsPool -Identity $pool -ErrorAction Stop | Where-Object { $null -ne $_ })
            if ($found.Count -eq 0) {
                $poolError = 'Get-CsPool: no pool ' + $pool + ' in the topology'
            } else {
                $computers = @(foreach ($computer in @(Get-Field $found[0] 'Computers' $null 'Get-CsPool')) {
                    if ($null -ne $computer) { Get-ComputerName $computer }
                })
                $poolServices = ConvertTo-StringList (Get-Field $found[0] 'Services' $null 'Get-CsPool')
                try {
                    $backendSql = Get-BackendSql $poolServices
                } catch {
                    $backendSql = $null
                    $poolError = 'back-end SQL server (Get-CsService): ' + (Get-ErrorMessage $_)
                }
            }
        } catch {
            $computers = @()
            $backendSql = $null
            $poolError = 'Get-CsPool: ' + (Get-ErrorMessage $_)
        }
        $poolRecord = New-Record
        $poolRecord['PoolFqdn'] = $pool
        $poolRecord['Computers'] = ConvertTo-StringList $computers
        $poolRecord['BackendSql'] = $backendSql
        $poolRecord['Error'] = $poolError
        $poolRecord
    })

    $result = New-Record
    $result['CollectedAt'] = [DateTime]::UtcNow
    $result['Connection'] = $connection
    $result['ConnectionError'] = $connectionError
    $result['Services'] = $services
    $result['ServicesError'] = $servicesError
    $result['Pairs'] = $pairs
    $result['Pools'] = $pools
    return $result
}
