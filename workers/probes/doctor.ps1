# probe: doctor v1
# deadline: 30 s (read-only: module load, the account's token and the WinRM configuration)
# Read-only: what `cmsbot doctor` needs to know about this server to say
# whether the other probes can run on it: the Windows PowerShell and CLR it
# runs, whether the Lync / SkypeForBusiness module loads, which of the
# cmdlets the probes use it lacks, the account the probes run as and its
# groups (RTCUniversalServerAdmins for changes, RTCUniversalReadOnlyAdmins
# for status), and the WinRM limits that bound the probes (the largest
# message, the shells per user, the memory per shell).
# The module is loaded here rather than by Invoke-Probe, so a server without
# it still answers (ModuleError says why). Each part is read on its own: one
# that fails leaves its field null and its message in the matching ...Error.
# Parameters:
#   cmdlets  [string]  cmdlet names to look for once the module is loaded,
#                      e.g. ["Get-CsManagementStoreReplicationStatus"]
# Data: CollectedAt; Computer; PSVersion ($PSVersionTable.PSVersion); CLRVersion;
#   Module ("SkypeForBusiness" | "Lync") | null; ModuleError;
#   MissingCmdlets [string] (those of the parameter Get-Command does not find);
#   Identity (DOMAIN\user); Groups [string] (the token's RTC* and Cs* groups,
#   DOMAIN\name); IsAdministrator (local Administrators, elevated); GroupsError;
#   WinRM {MaxEnvelopeSizekb, MaxShellsPerUser, MaxMemoryPerShellMB} (numbers,
#   null when unreadable); WinRMError.
#   $PSVersionTable (PSVersion, CLRVersion; Windows PowerShell 2.0 and later):
#     https://learn.microsoft.com/powershell/module/microsoft.powershell.core/about/about_automatic_variables
#   WindowsIdentity.GetCurrent, .Groups (.NET 2.0), IdentityReference.Translate:
#     https://learn.microsoft.com/dotnet/api/system.security.principal.windowsidentity.groups
#   The WSMan: drive (the WSMan provider, Windows PowerShell 2.0 and later):
#     WSMan:\localhost\MaxEnvelopeSizekb, WSMan:\localhost\Shell\MaxShellsPerUser,
#     WSMan:\localhost\Shell\MaxMemoryPerShellMB (each item's Value):
#     https://learn.microsoft.com/powershell/module/microsoft.wsman.management/about/about_wsman_provider
#     their meaning and defaults: MS-WSMV 2.2.4.10 ConfigType and 2.2.4.42 WinrsType,
#     https://learn.microsoft.com/openspecs/windows_protocols/ms-wsmv/7ffb4acd-cf01-4fbe-9e48-7746f5001957
Invoke-Probe -Name 'doctor' -Version 1 -NoModule -Body {
    param($Params)

    function Get-WSManNumber {
        # The value of a WSMan: configuration item as a number; $null when it is not one.
        param([string]$Path)
        $item = Get-Item -Path $Path -ErrorAction Stop
        $value = [string](Get-Field $item 'Value' $null 'Get-Item WSMan:')
        [long]$number = 0
        if ([long]::TryParse($value.Trim(), [ref]$number)) { return $number }
        return $null
    }

    $wanted = New-Object -TypeName System.Collections.Generic.List[string]
    foreach ($item in @(Get-Field $Params 'cmdlets' $null)) {
        if ($null -eq $item) { continue }
        if ($item -isnot [string] -or $item -notmatch '^[A-Za-z]+-[A-Za-z0-9]{1,80}\z') {
            throw 'parameter cmdlets must hold only cmdlet names (Verb-Noun)'
        }
        $wanted.Add($item)
    }
    if ($wanted.Count -gt 100) { throw 'parameter cmdlets holds more than 100 names' }

    $computer = [string]$env:COMPUTERNAME
    try {
        $computer = [string]([System.Net.Dns]::GetHostEntry([string]$env:COMPUTERNAME).HostName)
    } catch {
        $computer = [string]$env:COMPUTERNAME
    }

    # -- the host's PowerShell --
    $table = Get-Variable -Name PSVersionTable -ValueOnly -ErrorAction SilentlyContinue
    $clr = $null
    if ($null -ne $table) { $clr = [string]$table['CLRVersion'] }

    # -- the management module and the cmdlets the probes use --
    $module = $null
    $moduleError = $null
    try {
        $module = Import-CsModule
    } catch {
        $module = $null
        $moduleError = Get-ErrorMessage $_
    }
    $missing = New-Object -TypeName System.Collections.Generic.List[string]
    foreach ($name in $wanted) {
        if ($null -eq (Get-Command -Name $name -ErrorAction SilentlyContinue)) { $missing.Add($name) }
    }

    # -- the account and its groups --
    $identity = $null
    $groups = New-Object -TypeName System.Collections.Generic.List[string]
    $isAdministrator = $null
    $groupsError = $null
    try {
        $current = [System.Security.Principal.WindowsIdentity]::GetCurrent()
        $identity = [string]$current.Name
        $principal = New-Object -TypeName System.Security.Principal.WindowsPrincipal -ArgumentList $current
        $isAdministrator = [bool]$principal.IsInRole([System.Security.Principal.WindowsBuiltInRole]::Administrator)
        foreach ($sid in $current.Groups) {
            try {
                $account = [string]$sid.Translate([System.Security.Principal.NTAccount])
            } catch {
                continue
            }
            if ($account -match '\\(RTC|Cs)[A-Za-z]*\z' -and -not $groups.Contains($account)) { $groups.Add($account) }
        }
    } catch {
        $groupsError = Get-ErrorMessage $_
    }

    # -- the WinRM limits --
    $winrm = New-Record
    $winrmError = $null
    foreach ($pair in @(('MaxEnvelopeSizekb', 'WSMan:\localhost\MaxEnvelopeSizekb'),
                        ('MaxShellsPerUser', 'WSMan:\localhost\Shell\MaxShellsPerUser'),
                        ('MaxMemoryPerShellMB', 'WSMan:\localhost\Shell\MaxMemoryPerShellMB'))) {
        try {
            $winrm[$pair[0]] = Get-WSManNumber $pair[1]
        } catch {
            $winrm[$pair[0]] = $null
            if ($null -eq $winrmError) { $winrmError = $pair[1] + ': ' + (Get-ErrorMessage $_) }
        }
    }

    $result = New-Record
    $result['CollectedAt'] = [DateTime]::UtcNow
    $result['Computer'] = $computer
    $result['PSVersion'] = (Get-PowerShellVersion).ToString()
    $result['CLRVersion'] = $clr
    $result['Module'] = $module
    $result['ModuleError'] = $moduleError
    $result['MissingCmdlets'] = ConvertTo-StringList $missing.ToArray()
    $result['Identity'] = $identity
    $result['Groups'] = ConvertTo-StringList $groups.ToArray()
    $result['IsAdministrator'] = $isAdministrator
    $result['GroupsError'] = $groupsError
    $result['WinRM'] = $winrm
    $result['WinRMError'] = $winrmError
    return $result
}
