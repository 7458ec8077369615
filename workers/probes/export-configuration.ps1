# probe: export-configuration v1
# deadline: 300 s (module load; Export-CsConfiguration of the whole store, then reading the zip)
# CHANGES THE SERVER (writes one file): run on a Front End of the CMS pool.
# Exports the topology, policies and settings from the Central Management
# Store with Export-CsConfiguration into a new zip under the fixed folder
# %ProgramData%\cmsbot\exports (created when missing), and returns the zip so
# the caller can copy it to a replica for Import-CsConfiguration -LocalStore.
# The zip stays on the server as a DR backup: it is never deleted, and an
# existing file is never overwritten (the probe fails instead).
# Parameters:
#   fileName  string  a bare file name matching
#                     ^cmsbot-export-[A-Za-z0-9-]{1,64}\.zip$ (no folder)
# Data: Path (full path of the zip on the server), Bytes, Sha256 (uppercase
# hex), Content (base64 of the whole zip).
# Export-CsConfiguration -FileName (Lync Server 2010 and later) writes the zip and returns nothing:
#   https://learn.microsoft.com/powershell/module/skypeforbusiness/export-csconfiguration
Invoke-Probe -Name 'export-configuration' -Version 1 -Body {
    param($Params)

    # -- the parameter: a bare file name, so the path stays in the folder --
    $fileName = Get-CmsbotZipName $Params 'cmsbot-export'
    $path = Get-CmsbotFilePath 'exports' $fileName

    # -- export from the Central Management Store (never over an existing file) --
    $bytes = Export-CmsbotConfiguration $path ''

    $result = New-Record
    $result['CollectedAt'] = [DateTime]::UtcNow
    $result['Path'] = $path
    $result['Bytes'] = [int]$bytes.Length
    $result['Sha256'] = Get-Sha256Hex $bytes
    $result['Content'] = [Convert]::ToBase64String($bytes)
    return $result
}
