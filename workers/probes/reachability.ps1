# probe: reachability v1
# deadline: 30 s (read-only: module load and one bounded TCP/SMB test per replica)
# From the File Transfer Agent host: can it open a TCP connection to each
# replica (445 for the xds-replica share, 4443 for an Edge internal
# interface), and, for share targets that answered, can it write a file to
# \\<fqdn>\xds-replica\from-master. All connections are attempted in parallel
# against one shared deadline, so many targets cost about one timeout.
# The write test runs as the WinRM account, not as the CMS Front End's computer
# account that the File Transfer Agent really uses; and from inside a WinRM
# session the second hop to a remote share fails under NTLM, or Kerberos
# without delegation, whatever the share's ACL says. A failed write is a hint,
# not proof: the share and NTFS ACL read by replica-health on the replica is
# the primary evidence.
# Parameters:
#   targets    [{fqdn: string, address: string, port: int, share: bool}]
#              address is what is connected to (fqdn when empty);
#              share=true asks for the write test on fqdn's xds-replica share
#   timeoutMs  int  connection timeout in milliseconds (default 3000)
Invoke-Probe -Name 'reachability' -Version 1 -NoModule -Body {
    param($Params)

    function Get-ConnectFailure {
        # The SocketError name ('ConnectionRefused', 'HostNotFound', ...) when
        # there is a SocketException in the chain, otherwise the message.
        param($ErrorRecord)
        $ex = $ErrorRecord.Exception
        while ($null -ne $ex) {
            if ($ex -is [System.Net.Sockets.SocketException]) { return [string]$ex.SocketErrorCode }
            $ex = $ex.InnerException
        }
        return (Get-ErrorMessage $ErrorRecord)
    }

    $timeoutMs = [int](Get-Field $Params 'timeoutMs' 3000)
    if ($timeoutMs -lt 1) { $timeoutMs = 1 }
    $targets = Get-ListField $Params 'targets'

    $from = [string]$env:COMPUTERNAME
    try {
        $from = [string]([System.Net.Dns]::GetHostEntry([string]$env:COMPUTERNAME).HostName)
    } catch {
        $from = [string]$env:COMPUTERNAME
    }
    $identity = [string]([System.Security.Principal.WindowsIdentity]::GetCurrent().Name)

    $checks = New-Object System.Collections.Generic.List[object]
    $clock = [System.Diagnostics.Stopwatch]::StartNew()
    try {
        # Start every connection first ...
        foreach ($target in $targets) {
            $fqdn = [string](Get-Field $target 'fqdn' '')
            $address = [string](Get-Field $target 'address' '')
            if ($address -eq '') { $address = $fqdn }
            # A PSObject with note properties: set as the connection progresses.
            $check = New-Object -TypeName PSObject -Property @{
                Fqdn      = $fqdn
                Address   = $address
                Port      = [int](Get-Field $target 'port' 0)
                Share     = [bool](Get-Field $target 'share' $false)
                Client    = $null
                Async     = $null
                StartMs   = [long]$clock.ElapsedMilliseconds
                Done      = $false
                Connected = $false
                Error     = $null
                ElapsedMs = 0
            }
            $checks.Add($check)
            try {
                $ip = $null
                if ([System.Net.IPAddress]::TryParse($address, [ref]$ip)) {
                    $check.Client = New-Object -TypeName System.Net.Sockets.TcpClient -ArgumentList $ip.AddressFamily
                    $check.Async = $check.Client.BeginConnect($ip, $check.Port, $null, $null)
                } else {
                    $check.Client = New-Object -TypeName System.Net.Sockets.TcpClient
                    $check.Async = $check.Client.BeginConnect($address, $check.Port, $null, $null)
                }
            } catch {
                $check.Done = $true
                $check.Error = Get-ConnectFailure $_
                $check.ElapsedMs = [int]($clock.ElapsedMilliseconds - $check.StartMs)
            }
        }

        # ... then wait for them against one deadline. The wait is sliced so
        # each completion is timed to within a few tens of milliseconds.
        $deadline = [long]$clock.ElapsedMilliseconds + $timeoutMs
        while ($true) {
            $waitOn = $null
            foreach ($check in $checks) {
                if ($check.Done) { continue }
                if ($check.Async.IsCompleted) {
                    $check.Done = $true
                    $check.ElapsedMs = [int]($clock.ElapsedMilliseconds - $check.StartMs)
                    try {
                        $check.Client.EndConnect($check.Async)
                        $check.Connected = [bool]$check.Client.Connected
                        if (-not $check.Connected) { $check.Error = 'NotConnected' }
                    } catch {
                        $check.Connected = $false
                        $check.Error = Get-ConnectFailure $_
                    }
                } elseif ($null -eq $waitOn) {
                    $waitOn = $check
                }
            }
            if ($null -eq $waitOn) { break }
            $remaining = $deadline - [long]$clock.ElapsedMilliseconds
            if ($remaining -le 0) { break }
            $slice = [int][Math]::Min([long]25, $remaining)
            [void]$waitOn.Async.AsyncWaitHandle.WaitOne($slice)
        }
        foreach ($check in $checks) {
            if (-not $check.Done) {
                $check.Done = $true
                $check.Connected = $false
                $check.Error = 'TimedOut'
                $check.ElapsedMs = [int]($clock.ElapsedMilliseconds - $check.StartMs)
            }
        }
    } finally {
        foreach ($check in $checks) {
            if ($null -ne $check.Client) {
                try { $check.Client.Close() } catch { $null = $_ }
            }
        }
    }

    $results = @(foreach ($check in $checks) {
        $shareWritable = $null
        $shareError = $null
        if ($check.Share -and $check.Connected) {
            # The host name goes into a UNC path: accept host-name characters only.
            if ($check.Fqdn -notmatch '^[A-Za-z0-9][A-Za-z0-9.-]*$') {
                $shareError = 'not a host name, share not tested: ' + $check.Fqdn
            } else {
                $file = '\\' + $check.Fqdn + '\xds-replica\from-master\cmsbot-write-test-' + [guid]::NewGuid().ToString() + '.tmp'
                $written = $false
                try {
                    $stream = [System.IO.File]::Open($file, [System.IO.FileMode]::CreateNew, [System.IO.FileAccess]::Write, [System.IO.FileShare]::None)
                    $stream.Dispose()
                    $written = $true
                    [System.IO.File]::Delete($file)
                    $shareWritable = $true
                } catch {
                    if ($written) {
                        $shareWritable = $true
                        $shareError = 'the test file was written but could not be deleted: ' + (Get-ErrorMessage $_)
                    } else {
                        $shareWritable = $false
                        $shareError = Get-ErrorMessage $_
                    }
                }
            }
        }
        $connectError = $null
        if ($null -ne $check.Error) { $connectError = [string]$check.Error }
        $row = New-Record
        $row['Fqdn'] = [string]$check.Fqdn
        $row['Address'] = [string]$check.Address
        $row['Port'] = [int]$check.Port
        $row['Connected'] = [bool]$check.Connected
        $row['Error'] = $connectError
        $row['ElapsedMs'] = [int]$check.ElapsedMs
        $row['ShareWritable'] = $shareWritable
        $row['ShareError'] = $shareError
        $row
    })

    $result = New-Record
    $result['CollectedAt'] = [DateTime]::UtcNow
    $result['From'] = $from
    $result['Identity'] = $identity
    $result['Results'] = $results
    $result
}
