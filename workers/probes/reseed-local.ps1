# probe: reseed-local v1
# deadline: 600 s (module load; export, copy and Import-CsConfiguration -LocalStore on this server)
# CHANGES THE SERVER: re-seeds the local replica of the server it runs on
# (step 4 of the recovery when a CMS failover is blocked; run it on EACH
# server of the pool that owns the CMS SQL store, after cms-restore).
# Exports the topology, policies and settings from the Central Management
# Store with Export-CsConfiguration into a new zip under the fixed folder
# %ProgramData%\cmsbot\exports (created and secured as export-configuration
# does), then imports that zip into this server's local store with
# Import-CsConfiguration -FileName <zip> -LocalStore. The zip stays on the
# server as a DR backup: it is never deleted, and an existing file is never
# overwritten (the probe fails instead, before anything is exported). An
# export or import failure fails the probe; after a failed import the zip is
# still kept, and the error names it.
# Parameters:
#   fileName  string  a bare file name matching
#                     ^cmsbot-config-[A-Za-z0-9-]{1,64}\.zip$ (no folder)
# Data: CollectedAt, Path (full path of the zip on the server), Bytes, Sha256
# (uppercase hex, of the file as exported, before the import), Imported (true).
# Export-CsConfiguration -FileName and Import-CsConfiguration -FileName -LocalStore
# (Lync Server 2010 and later) write and read the zip and return nothing:
#   https://learn.microsoft.com/powershell/module/skypeforbusiness/export-csconfiguration
#   https://learn.microsoft.com/powershell/module/skypeforbusiness/import-csconfiguration
Invoke-Probe -Name 'reseed-local' -Version 1 -Body {
    param($Params)

    # -- the parameter: a bare file name, so the path stays in the folder --
    $fileName = Get-CmsbotZipName $Params 'cmsbot-config'
    $path = Get-CmsbotFilePath 'exports' $fileName

    # -- export from the Central Management Store (never over an existing file) --
    $bytes = Export-CmsbotConfiguration $path '; nothing was imported'
    $length = [int]$bytes.Length
    $sha256 = Get-Sha256Hex $bytes
    $bytes = $null

    # -- import into this server's local replica store --
    try {
        $null = Import-CsConfiguration -FileName $path -LocalStore -ErrorAction Stop
    } catch {
        throw ('Import-CsConfiguration -LocalStore failed (the export ' + $path + ', SHA-256 ' + $sha256 + ', is kept): ' + (Get-ErrorMessage $_))
    }

    $result = New-Record
    $result['CollectedAt'] = [DateTime]::UtcNow
    $result['Path'] = $path
    $result['Bytes'] = $length
    $result['Sha256'] = $sha256
    $result['Imported'] = $true
    return $result
}
