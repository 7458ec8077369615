# probe: cms-status v1
# The Central Management Store's own view of replication, read on a CMS pool
# server: one row per replica, the CMS-level status (active master, file
# transfer agents), which pools hold the CMS, and the installed product.
# Parameters: none.
Invoke-Probe -Name 'cms-status' -Version 1 -Body {
    param($Params)
    $replicas = @(Get-CsManagementStoreReplicationStatus | ForEach-Object {
        [ordered]@{
            ReplicaFqdn        = [string]$_.ReplicaFqdn
            UpToDate           = [bool]$_.UpToDate
            LastStatusReport   = $_.LastStatusReport
            LastUpdateCreation = $_.LastUpdateCreation
            ProductVersion     = [string]$_.ProductVersion
        }
    })
    # Read the objects, never the console text: the display truncates
    # ActiveReplicas at 128 bytes.
    $store = Get-CsManagementStoreReplicationStatus -CentralManagementStoreStatus
    $services = @(Get-CsService -CentralManagement | ForEach-Object {
        [ordered]@{
            PoolFqdn = [string]$_.PoolFqdn
            SiteId   = [string]$_.SiteId
            Version  = [string]$_.Version
            Active   = [bool]$_.Active
        }
    })
    [ordered]@{
        CollectedAt    = [DateTime]::UtcNow
        ProductVersion = [string](Get-CsServerVersion)
        Replicas       = $replicas
        Store          = [ordered]@{
            ActiveMasterFqdn         = [string]$store.ActiveMasterFqdn
            ActiveFileTransferAgents = ConvertTo-StringList $store.ActiveFileTransferAgents
            ActiveReplicas           = ConvertTo-StringList $store.ActiveReplicas
            DeletedReplicas          = ConvertTo-StringList $store.DeletedReplicas
        }
        Services       = $services
    }
}
