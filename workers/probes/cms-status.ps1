# probe: cms-status v2
# deadline: 30 s (read-only: module load and Get-CsManagementStoreReplicationStatus)
# The Central Management Store's own view of replication, read on a CMS pool
# server: one row per replica, the CMS-level status (active master, file
# transfer agents), which pools hold the CMS, and the installed product.
# Parameters: none.
# Every property is read with Get-Field (_lib.ps1): one a version lacks is null
# here and named in data.NotReported, never a failed probe.
#   Get-CsManagementStoreReplicationStatus (Lync Server 2010 and later): one
#     Microsoft.Rtc.Management.Xds.ReplicaState per replica; UpToDate and
#     LastUpdateCreation are in the help's examples, ReplicaFqdn (its
#     -ReplicaFqdn), LastStatusReport and ProductVersion are what it displays.
#     https://learn.microsoft.com/powershell/module/skypeforbusiness/get-csmanagementstorereplicationstatus
#   ... -CentralManagementStoreStatus: one CentralManagementStoreStatusResult
#     with "the list of active replicas and deleted replicas, the Active Master
#     and the File Transfer Agent" (same page). ActiveMasterFqdn is the name
#     Microsoft's CMS failover article reads (https://technet.microsoft.com/library/gg399052.aspx
#     is the cmdlet it runs); ActiveFileTransferAgents, ActiveReplicas and
#     DeletedReplicas are not named by any documentation: all read tolerantly.
#   Get-CsService -CentralManagement: one object per pool hosting the Central
#     Management service, PoolFqdn, SiteId, Version; Active exists from Lync
#     Server 2013 on (CMS failover and pool pairing came with 2013), so a 2010
#     answer reports it as not reported.
#     https://learn.microsoft.com/powershell/module/skypeforbusiness/get-csservice
#   Get-CsServerVersion: the product name, build and license as one string.
#     https://learn.microsoft.com/powershell/module/skypeforbusiness/get-csserverversion
Invoke-Probe -Name 'cms-status' -Version 2 -Body {
    param($Params)

    $replicaSource = 'Get-CsManagementStoreReplicationStatus'
    $replicas = @(Get-CsManagementStoreReplicationStatus -ErrorAction Stop | Where-Object { $null -ne $_ } | ForEach-Object {
        $row = New-Record
        $row['ReplicaFqdn'] = Get-TextField $_ 'ReplicaFqdn' $replicaSource
        $row['UpToDate'] = Get-FlagField $_ 'UpToDate' $replicaSource
        $row['LastStatusReport'] = Get-Field $_ 'LastStatusReport' $null $replicaSource
        $row['LastUpdateCreation'] = Get-Field $_ 'LastUpdateCreation' $null $replicaSource
        $row['ProductVersion'] = Get-TextField $_ 'ProductVersion' $replicaSource
        $row
    })

    # Read the objects, never the console text: the display truncates
    # ActiveReplicas at 128 bytes.
    $storeSource = 'Get-CsManagementStoreReplicationStatus -CentralManagementStoreStatus'
    $found = @(Get-CsManagementStoreReplicationStatus -CentralManagementStoreStatus -ErrorAction Stop | Where-Object { $null -ne $_ })
    $status = $null
    if ($found.Count -gt 0) { $status = $found[0] }
    $store = New-Record
    $store['ActiveMasterFqdn'] = Get-TextField $status 'ActiveMasterFqdn' $storeSource
    $store['ActiveFileTransferAgents'] = Get-StringListField $status 'ActiveFileTransferAgents' $storeSource
    $store['ActiveReplicas'] = Get-StringListField $status 'ActiveReplicas' $storeSource
    $store['DeletedReplicas'] = Get-StringListField $status 'DeletedReplicas' $storeSource

    $serviceSource = 'Get-CsService -CentralManagement'
    $services = @(Get-CsService -CentralManagement -ErrorAction Stop | Where-Object { $null -ne $_ } | ForEach-Object {
        $row = New-Record
        $row['PoolFqdn'] = Get-TextField $_ 'PoolFqdn' $serviceSource
        $row['SiteId'] = Get-TextField $_ 'SiteId' $serviceSource
        $row['Version'] = Get-TextField $_ 'Version' $serviceSource
        $row['Active'] = Get-FlagField $_ 'Active' $serviceSource
        $row
    })

    $result = New-Record
    $result['CollectedAt'] = [DateTime]::UtcNow
    $result['ProductVersion'] = [string](Get-CsServerVersion)
    $result['Replicas'] = $replicas
    $result['Store'] = $store
    $result['Services'] = $services
    $result
}
