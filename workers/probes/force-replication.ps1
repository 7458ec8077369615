# probe: force-replication v1
# deadline: 60 s (module load and one Invoke-CsManagementStoreReplication per replica)
# CHANGES THE CMS: run on a Front End of the CMS pool. Forces a full
# replication with Invoke-CsManagementStoreReplication, which deletes the
# replicas' replication status in the Central Management Store so the Master
# Replicator sends each of them a complete snapshot. For 2-3 minutes
# afterwards UpToDate is legitimately False: the caller re-checks later.
# Each replica is requested on its own; one that fails is reported in Errors
# and the others are still requested. An invalid FQDN fails the whole probe
# before anything is requested.
# Parameters:
#   replicas  [string]  replica FQDNs; an empty list means all replicas (one
#                       call without -ReplicaFqdn). Required: a missing
#                       parameter fails the probe rather than meaning "all".
# Data: CollectedAt (UTC, the moment replication was requested), Replicas
# (what was requested, ["*"] for all), Errors ([{Replica, Message}]).
# Invoke-CsManagementStoreReplication [-ReplicaFqdn] (Lync Server 2010 and later)
# returns nothing; it "forces ... by deleting the replication status":
#   https://learn.microsoft.com/powershell/module/skypeforbusiness/invoke-csmanagementstorereplication
Invoke-Probe -Name 'force-replication' -Version 1 -Body {
    param($Params)

    function New-ReplicationError {
        param([string]$Replica, [string]$Message)
        $record = New-Record
        $record['Replica'] = $Replica
        $record['Message'] = $Message
        return $record
    }

    # -- the parameter: present, a list of valid FQDNs --
    if (-not (Test-Field $Params 'replicas' -NotNull)) {
        throw 'parameter replicas is required: a list of replica FQDNs, or an empty list for all replicas'
    }
    $requested = ConvertTo-FqdnList -Items @(Get-Field $Params 'replicas' $null) -Name 'replicas' -Noun 'replica'

    $errors = New-Object -TypeName System.Collections.Generic.List[object]
    # The moment replication was requested: the caller's 2-3 minute grace
    # period for UpToDate=False counts from here.
    $collectedAt = [DateTime]::UtcNow

    if ($requested.Count -eq 0) {
        $replicas = @('*')
        try {
            $null = Invoke-CsManagementStoreReplication -ErrorAction Stop
        } catch {
            $errors.Add((New-ReplicationError '*' (Get-ErrorMessage $_)))
        }
    } else {
        $replicas = $requested.ToArray()
        foreach ($fqdn in $replicas) {
            try {
                $null = Invoke-CsManagementStoreReplication -ReplicaFqdn $fqdn -ErrorAction Stop
            } catch {
                $errors.Add((New-ReplicationError $fqdn (Get-ErrorMessage $_)))
            }
        }
    }

    $result = New-Record
    $result['CollectedAt'] = $collectedAt
    $result['Replicas'] = ConvertTo-StringList $replicas
    $result['Errors'] = $errors.ToArray()
    return $result
}
