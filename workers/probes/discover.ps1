# probe: discover v1
# deadline: 30 s (read-only: module load and one topology cmdlet per role)
# Read-only: the deployment as its Central Management Store describes it,
# read on one Front End, for `cmsbot discover` (which writes the topology
# file from it): every pool with its site, computers and services, every
# computer with its pool, the services of the roles cmsbot knows, the CMS
# pools (active and standby), the pairing of the Registrar pools, the
# product version, and each Edge server's FQDN resolved here, as the File
# Transfer Agent on a Front End resolves it to reach the Edge's internal
# interface on TCP 4443.
# Each part is read on its own: one that fails leaves its list empty and its
# message in the matching ...Error field, and the others are still read.
# Nothing is changed.
# Parameters: none.
# Data: CollectedAt; From (this server's FQDN);
#   ProductVersion (Get-CsServerVersion's text) | null; ProductVersionError;
#   Pools [{Identity, Fqdn, Site, Computers [string], Services [string]}]; PoolsError;
#   Computers [{Identity, Fqdn, Pool}]; ComputersError;
#   Services [{Switch, Identity, PoolFqdn, SiteId, Version[, UserDatabase][, SqlInstanceName]}]
#     (Switch: the Get-CsService parameter that returned it: Registrar, Director,
#     EdgeServer, MediationServer, PersistentChatServer, UserServer, UserDatabase);
#   ServiceErrors [{Switch, Error}];
#   CentralManagement [{PoolFqdn, SiteId, Version, Active}]; CentralManagementError;
#   Pairs [{PoolFqdn, BackupPoolFqdn|null, Error|null}]; PairsError (Lync Server
#     2010 has no Get-CsPoolBackupRelationship: pairing came with 2013);
#   Addresses [{Fqdn, Addresses [string], Error|null}] for the Edge pools' computers.
# Every cmdlet property is read with Get-Field (_lib.ps1): one a version lacks
# is null here and named in data.NotReported, never a failed probe.
#   Get-CsPool (2010+): Identity, Fqdn, Site, Computers ("an array of objects
#     representing each computer in the pool"), Services (the services'
#     identities, "Registrar:pool01.contoso.com").
#     https://learn.microsoft.com/powershell/module/skype/get-cspool
#   Get-CsComputer (2010+): "the Identity, pool name, and fully qualified
#     domain name (FQDN) for each computer" (Identity, Pool, Fqdn).
#     https://learn.microsoft.com/powershell/module/skype/get-cscomputer
#   Get-CsService -Registrar / -Director / -EdgeServer / -MediationServer /
#     -PersistentChatServer (2013+) / -UserServer / -UserDatabase /
#     -CentralManagement: Identity ("Registrar:atl-cs-001.litwareinc.com"),
#     PoolFqdn, SiteId ("site:Redmond"), Version; Active for -CentralManagement
#     from Lync Server 2013 on; UserDatabase (the User Services' database
#     service, "UserDatabase:<sql fqdn>") on -UserServer objects and
#     SqlInstanceName on -UserDatabase objects, as the cmdlet displays them
#     (the page names the switches and Identity, PoolFqdn, SiteId, Role,
#     DependentServiceList in its examples; the rest is read tolerantly).
#     https://learn.microsoft.com/powershell/module/skype/get-csservice
#   Get-CsPoolBackupRelationship (Lync Server 2013 and later): BackupPoolFqdn.
#     https://learn.microsoft.com/powershell/module/skype/get-cspoolbackuprelationship
#   Get-CsServerVersion (2010+): the product, its build and license text.
#     https://learn.microsoft.com/powershell/module/skype/get-csserverversion
#   [System.Net.Dns]::GetHostAddresses (.NET 2.0):
#     https://learn.microsoft.com/dotnet/api/system.net.dns.gethostaddresses
Invoke-Probe -Name 'discover' -Version 1 -Body {
    param($Params)

    function Get-ComputerName {
        # Get-CsPool's Computers hold computer objects (or their names).
        param($Computer)
        if ($Computer -is [string]) { return $Computer.Trim() }
        foreach ($name in 'Fqdn', 'Identity') {
            $value = Get-TextField $Computer $name ''
            if ($null -ne $value -and $value.Trim() -ne '') { return $value.Trim() }
        }
        return ([string]$Computer).Trim()
    }

    function Test-Listed {
        # $true when $List (a List[string]) holds $Value, any case.
        param($List, [string]$Value)
        foreach ($item in $List) {
            if ([string]::Equals($item, $Value, [StringComparison]::OrdinalIgnoreCase)) { return $true }
        }
        return $false
    }

    $from = [string]$env:COMPUTERNAME
    try {
        $from = [string]([System.Net.Dns]::GetHostEntry([string]$env:COMPUTERNAME).HostName)
    } catch {
        $from = [string]$env:COMPUTERNAME
    }

    # -- the product version --
    $productVersion = $null
    $productVersionError = $null
    try {
        $productVersion = [string](Get-CsServerVersion -ErrorAction Stop)
    } catch {
        $productVersion = $null
        $productVersionError = 'Get-CsServerVersion: ' + (Get-ErrorMessage $_)
    }

    # -- pools: site, computers, services --
    $registrarPools = New-Object -TypeName System.Collections.Generic.List[string]
    $edgePools = New-Object -TypeName System.Collections.Generic.List[string]
    $edgeComputers = New-Object -TypeName System.Collections.Generic.List[string]
    $pools = @()
    $poolsError = $null
    try {
        $source = 'Get-CsPool'
        $pools = @(Get-CsPool -ErrorAction Stop | Where-Object { $null -ne $_ } | ForEach-Object {
            $computers = @(foreach ($computer in @(Get-Field $_ 'Computers' $null $source)) {
                if ($null -ne $computer) { Get-ComputerName $computer }
            })
            $row = New-Record
            $row['Identity'] = Get-TextField $_ 'Identity' $source
            $row['Fqdn'] = Get-TextField $_ 'Fqdn' $source
            $row['Site'] = Get-TextField $_ 'Site' $source
            $row['Computers'] = ConvertTo-StringList $computers
            $row['Services'] = ConvertTo-StringList (Get-Field $_ 'Services' $null $source)
            $row
        })
    } catch {
        $pools = @()
        $poolsError = 'Get-CsPool: ' + (Get-ErrorMessage $_)
    }
    foreach ($pool in $pools) {
        $name = [string]$pool['Fqdn']
        if ($name -eq '') { $name = [string]$pool['Identity'] }
        foreach ($service in $pool['Services']) {
            if ($service -match '^Registrar:' -and -not (Test-Listed $registrarPools $name)) { $registrarPools.Add($name) }
            if ($service -match '^EdgeServer:' -and -not (Test-Listed $edgePools $name)) {
                $edgePools.Add($name)
                foreach ($computer in $pool['Computers']) {
                    if (-not (Test-Listed $edgeComputers $computer)) { $edgeComputers.Add($computer) }
                }
            }
        }
    }

    # -- computers and their pools --
    $computerRows = @()
    $computersError = $null
    try {
        $source = 'Get-CsComputer'
        $computerRows = @(Get-CsComputer -ErrorAction Stop | Where-Object { $null -ne $_ } | ForEach-Object {
            $row = New-Record
            $row['Identity'] = Get-TextField $_ 'Identity' $source
            $row['Fqdn'] = Get-TextField $_ 'Fqdn' $source
            $row['Pool'] = Get-TextField $_ 'Pool' $source
            $row
        })
    } catch {
        $computerRows = @()
        $computersError = 'Get-CsComputer: ' + (Get-ErrorMessage $_)
    }

    # -- the services of the roles cmsbot knows, one switch at a time --
    # (one switch per call: the cmdlet refuses two; a switch this version
    # does not have, -PersistentChatServer before 2013, is reported and skipped)
    $parameters = $null
    $command = Get-Command -Name 'Get-CsService' -ErrorAction SilentlyContinue
    if ($null -ne $command) { $parameters = $command.Parameters }
    $services = New-Object -TypeName System.Collections.Generic.List[object]
    $serviceErrors = New-Object -TypeName System.Collections.Generic.List[object]
    foreach ($switch in 'Registrar', 'Director', 'EdgeServer', 'MediationServer', 'PersistentChatServer', 'UserServer', 'UserDatabase') {
        try {
            if ($null -ne $parameters -and -not $parameters.ContainsKey($switch)) {
                throw ('Get-CsService has no -' + $switch + ' parameter on this version')
            }
            $splat = @{}
            $splat[$switch] = $true
            $source = 'Get-CsService -' + $switch
            foreach ($item in @(Get-CsService @splat -ErrorAction Stop | Where-Object { $null -ne $_ })) {
                $row = New-Record
                $row['Switch'] = $switch
                $row['Identity'] = Get-TextField $item 'Identity' $source
                $row['PoolFqdn'] = Get-TextField $item 'PoolFqdn' $source
                $row['SiteId'] = Get-TextField $item 'SiteId' $source
                $row['Version'] = Get-TextField $item 'Version' $source
                if ($switch -eq 'UserServer') { $row['UserDatabase'] = Get-TextField $item 'UserDatabase' $source }
                if ($switch -eq 'UserDatabase') { $row['SqlInstanceName'] = Get-TextField $item 'SqlInstanceName' $source }
                $services.Add($row)
            }
        } catch {
            $failure = New-Record
            $failure['Switch'] = $switch
            $failure['Error'] = Get-ErrorMessage $_
            $serviceErrors.Add($failure)
        }
    }

    # -- the CMS pools: the active one and its standby --
    $central = @()
    $centralError = $null
    try {
        $source = 'Get-CsService -CentralManagement'
        $central = @(Get-CsService -CentralManagement -ErrorAction Stop | Where-Object { $null -ne $_ } | ForEach-Object {
            $row = New-Record
            $row['PoolFqdn'] = Get-TextField $_ 'PoolFqdn' $source
            $row['SiteId'] = Get-TextField $_ 'SiteId' $source
            $row['Version'] = Get-TextField $_ 'Version' $source
            # null when this version has no Active (Lync Server 2010): not reported
            $row['Active'] = Get-FlagField $_ 'Active' $source
            $row
        })
    } catch {
        $central = @()
        $centralError = 'Get-CsService -CentralManagement: ' + (Get-ErrorMessage $_)
    }

    # -- the pairing of each Registrar pool --
    $pairs = @()
    $pairsError = $null
    if ($null -eq (Get-Command -Name 'Get-CsPoolBackupRelationship' -ErrorAction SilentlyContinue)) {
        $pairsError = 'Get-CsPoolBackupRelationship is not available on this server (pool pairing came with Lync Server 2013)'
    } else {
        $pairs = @(foreach ($pool in $registrarPools) {
            $backup = $null
            $pairError = $null
            if (-not (Test-Fqdn $pool)) {
                $pairError = 'not a pool FQDN, not asked'
            } else {
                try {
                    foreach ($relation in @(Get-CsPoolBackupRelationship -PoolFqdn $pool -ErrorAction Stop | Where-Object { $null -ne $_ })) {
                        if ($relation -is [string]) {
                            $candidate = $relation.Trim()
                        } else {
                            $candidate = Get-TextField $relation 'BackupPoolFqdn' 'Get-CsPoolBackupRelationship'
                        }
                        if ($null -ne $candidate -and $candidate.Trim() -ne '' -and $null -eq $backup) { $backup = $candidate.Trim() }
                    }
                } catch {
                    $backup = $null
                    $pairError = Get-ErrorMessage $_
                }
            }
            $pair = New-Record
            $pair['PoolFqdn'] = $pool
            $pair['BackupPoolFqdn'] = $backup
            $pair['Error'] = $pairError
            $pair
        })
    }

    # -- each Edge server's name, resolved from here --
    $addresses = @(foreach ($edge in $edgeComputers) {
        $found = @()
        $resolveError = $null
        if (-not (Test-Fqdn $edge)) {
            $resolveError = 'not a host name, not resolved'
        } else {
            try {
                $found = @([System.Net.Dns]::GetHostAddresses($edge) | ForEach-Object { [string]$_ })
            } catch {
                $found = @()
                $resolveError = Get-ErrorMessage $_
            }
        }
        $row = New-Record
        $row['Fqdn'] = $edge
        $row['Addresses'] = ConvertTo-StringList $found
        $row['Error'] = $resolveError
        $row
    })

    $result = New-Record
    $result['CollectedAt'] = [DateTime]::UtcNow
    $result['From'] = $from
    $result['ProductVersion'] = $productVersion
    $result['ProductVersionError'] = $productVersionError
    $result['Pools'] = $pools
    $result['PoolsError'] = $poolsError
    $result['Computers'] = $computerRows
    $result['ComputersError'] = $computersError
    $result['Services'] = $services.ToArray()
    $result['ServiceErrors'] = $serviceErrors.ToArray()
    $result['CentralManagement'] = $central
    $result['CentralManagementError'] = $centralError
    $result['Pairs'] = $pairs
    $result['PairsError'] = $pairsError
    $result['Addresses'] = $addresses
    return $result
}
