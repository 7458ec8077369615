# probe-lib: shared helpers v1
# Dot-sourced by the bootstrap before every probe. Invoke-Probe loads the
# management module for the installed version, runs the probe body with its
# parameters and prints exactly one JSON document, an error included.
Set-StrictMode -Version 2
$ProgressPreference = 'SilentlyContinue'
$WarningPreference = 'SilentlyContinue'

function Get-ProbeParams {
    # $CmsbotParams: base64 JSON, joined by the bootstrap from the shell environment's chunks.
    $b64 = Get-Variable -Name CmsbotParams -ValueOnly -ErrorAction SilentlyContinue
    if (-not $b64) { return [pscustomobject]@{} }
    $json = [Text.Encoding]::UTF8.GetString([Convert]::FromBase64String($b64))
    return ($json | ConvertFrom-Json)
}

function Import-CsModule {
    # Skype for Business Server 2015/2019 ship 'SkypeForBusiness', Lync 2010/2013 'Lync'.
    foreach ($name in 'SkypeForBusiness', 'Lync') {
        if (Get-Module -ListAvailable -Name $name) {
            Import-Module $name -ErrorAction Stop -WarningAction SilentlyContinue
            return $name
        }
    }
    throw 'Neither the SkypeForBusiness nor the Lync PowerShell module is installed on this server'
}

function ConvertTo-StringList {
    param($Value)
    # Always an array, even for one item or none, so the JSON shape is stable.
    $items = @($Value | Where-Object { $null -ne $_ } | ForEach-Object { [string]$_ })
    return ,$items
}

function Invoke-Probe {
    param([string]$Name, [int]$Version, [switch]$NoModule, [scriptblock]$Body)
    try {
        if (-not $NoModule) { $null = Import-CsModule }
        $data = & $Body (Get-ProbeParams)
        $doc = [ordered]@{ probe = $Name; version = $Version; data = $data }
    } catch {
        $doc = [ordered]@{
            probe   = $Name
            version = $Version
            error   = [ordered]@{
                message  = $_.Exception.Message
                category = [string]$_.CategoryInfo.Category
                command  = [string]$_.InvocationInfo.MyCommand
            }
        }
    }
    $doc | ConvertTo-Json -Depth 8 -Compress
}
