# probe: replica-health v1
# One server's side of replication: the state of the replication services
# installed on it and the product it runs.
# Parameters: none.
Invoke-Probe -Name 'replica-health' -Version 1 -Body {
    param($Params)
    $services = [ordered]@{}
    foreach ($name in 'REPLICA', 'MASTER', 'FTA', 'LYNCBACKUP') {
        $svc = Get-Service -Name $name -ErrorAction SilentlyContinue
        $services[$name] = if ($svc) { [string]$svc.Status } else { 'Missing' }
    }
    [ordered]@{
        CollectedAt    = [DateTime]::UtcNow
        ProductVersion = [string](Get-CsServerVersion)
        Services       = $services
    }
}
