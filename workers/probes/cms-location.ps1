# probe: cms-location v1
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
Invoke-Probe -Name 'cms-location' -Version 1 -Body {
    param($Params)

    function Get-Text {
        # A value as trimmed text, '' for null.
        param($Value)
        if ($null -eq $Value) { return '' }
        return ([string]$Value).Trim()
    }

    function ConvertTo-Flag {
        # A boolean property as a bool; the text "True"/"False" read as such
        # ([bool]'False' would be $true).
        param($Value)
        if ($null -eq $Value) { return $false }
        if ($Value -is [bool]) { return $Value }
        if ($Value -is [string]) { return [string]::Equals($Value.Trim(), 'True', [StringComparison]::OrdinalIgnoreCase) }
        return [bool]$Value
    }

    function Get-PropertyNames {
        param($Object)
        return (@($Object.PSObject.Properties | ForEach-Object { [string]$_.Name }) -join ', ')
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
                $database = Get-Text (Get-Field $candidate 'UserDatabase' $null)
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
            $provider = Get-Text (Get-Field $managementConnection 'StoreProvider' $null)
            $connectionText = Get-Text (Get-Field $managementConnection 'Connection' $null)
            $sqlServer = Get-Text (Get-Field $managementConnection 'SqlServer' $null)
            $sqlInstance = Get-Text (Get-Field $managementConnection 'SqlInstance' $null)
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
            $connection = [ordered]@{
                StoreProvider = $provider
                SqlServer     = $sqlServer
                SqlInstance   = $sqlInstance
                Source        = $source
            }
        }
    } catch {
        $connection = $null
        $connectionError = 'Get-CsManagementConnection: ' + (Get-ErrorMessage $_)
    }

    # -- the CMS services: the active pool and its standby --
    $services = @()
    $servicesError = $null
    try {
        $services = @(Get-CsService -CentralManagement -ErrorAction Stop | Where-Object { $null -ne $_ } | ForEach-Object {
            [ordered]@{
                PoolFqdn = Get-Text (Get-Field $_ 'PoolFqdn' $null)
                SiteId   = Get-Text (Get-Field $_ 'SiteId' $null)
                Version  = Get-Text (Get-Field $_ 'Version' $null)
                Active   = ConvertTo-Flag (Get-Field $_ 'Active' $null)
            }
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
            $relations = @(Get-CsPoolBackupRelationship -PoolFqdn $pool -ErrorAction Stop | Where-Object { $null -ne $_ })
            foreach ($relation in $relations) {
                if ($relation -is [string]) {
                    $candidate = $relation.Trim()
                } else {
                    $candidate = Get-Text (Get-Field $relation 'BackupPoolFqdn' $null)
                    if ($candidate -eq '') { $candidate = Get-Text (Get-Field $relation 'BackupPool' $null) }
                    if ($null -eq $relation.PSObject.Properties['BackupPoolFqdn'] -and $null -eq $relation.PSObject.Properties['BackupPool']) {
                        $pairError = 'Get-CsPoolBackupRelationship output has no BackupPoolFqdn property (it has: ' + (Get-PropertyNames $relation) + ')'
                    }
                }
                if ($candidate -ne '' -and $null -eq $backupPoolFqdn) { $backupPoolFqdn = $candidate }
            }
        } catch {
            $backupPoolFqdn = $null
            $pairError = 'Get-CsPoolBackupRelationship: ' + (Get-ErrorMessage $_)
        }
        [ordered]@{
            PoolFqdn       = $pool
            BackupPoolFqdn = $backupPoolFqdn
            Error          = $pairError
        }
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
                $computers = @(foreach ($computer in @(Get-Field $found[0] 'Computers' $null)) {
                    if ($null -ne $computer) { Get-ComputerName $computer }
                })
                $poolServices = ConvertTo-StringList (Get-Field $found[0] 'Services' $null)
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
        [ordered]@{
            PoolFqdn   = $pool
            Computers  = ConvertTo-StringList $computers
            BackendSql = $backendSql
            Error      = $poolError
        }
    })

    return [ordered]@{
        CollectedAt     = [DateTime]::UtcNow
        Connection      = $connection
        ConnectionError = $connectionError
        Services        = $services
        ServicesError   = $servicesError
        Pairs           = $pairs
        Pools           = $pools
    }
}
