# probe: ad-membership v1
# deadline: 30 s (read-only: module load and one LDAP query per computer)
# Active Directory, read on a CMS Front End with ADSI (not the ActiveDirectory
# module): is each named computer account a member, directly or through
# nested groups, of a group such as RTCUniversalConfigReplicator (the CMS
# Front End's account must be, or its File Transfer Agent is denied the
# replicas' xds-replica shares). Searches the current domain; the group and
# computers are found by cn, membership is tested with
# LDAP_MATCHING_RULE_IN_CHAIN. Names are escaped as LDAP filter values.
# Parameters:
#   group      string    the group's cn, e.g. "RTCUniversalConfigReplicator"
#   computers  [string]  NetBIOS computer names, e.g. ["FE01"]
Invoke-Probe -Name 'ad-membership' -Version 1 -NoModule -Body {
    param($Params)

    function ConvertTo-LdapFilterValue {
        # RFC 4515 assertion value: \ * ( ) and NUL become \5c \2a \28 \29 \00.
        param([string]$Value)
        $builder = New-Object System.Text.StringBuilder
        foreach ($ch in $Value.ToCharArray()) {
            $code = [int]$ch
            if ($code -eq 0x5C -or $code -eq 0x2A -or $code -eq 0x28 -or $code -eq 0x29 -or $code -eq 0) {
                [void]$builder.Append('\').Append($code.ToString('x2'))
            } else {
                [void]$builder.Append($ch)
            }
        }
        return $builder.ToString()
    }

    function Find-DistinguishedName {
        # The distinguishedName of the first object matching the LDAP filter
        # in the current domain, or $null.
        param([string]$Filter)
        $searcher = New-Object System.DirectoryServices.DirectorySearcher
        try {
            $searcher.Filter = $Filter
            $searcher.SearchScope = [System.DirectoryServices.SearchScope]::Subtree
            $searcher.ClientTimeout = [TimeSpan]::FromSeconds(60)
            [void]$searcher.PropertiesToLoad.Add('distinguishedName')
            $found = $searcher.FindOne()
            if ($null -eq $found) { return $null }
            $values = $found.Properties['distinguishedname']
            if ($null -eq $values -or $values.Count -eq 0) { return $null }
            return [string]$values[0]
        } finally {
            $searcher.Dispose()
        }
    }

    Add-Type -AssemblyName System.DirectoryServices

    $groupName = ([string](Get-Field $Params 'group' '')).Trim()
    if ($groupName -eq '') { throw 'parameter group is required' }
    $computers = Get-ListField $Params 'computers'

    $groupDn = Find-DistinguishedName ('(&(objectCategory=group)(cn=' + (ConvertTo-LdapFilterValue $groupName) + '))')

    $results = @(foreach ($computer in $computers) {
        $name = [string]$computer
        $cn = $name.Trim().TrimEnd('$')
        $dn = $null
        $member = $false
        if ($cn -ne '') {
            $dn = Find-DistinguishedName ('(&(objectCategory=computer)(cn=' + (ConvertTo-LdapFilterValue $cn) + '))')
        }
        if ($null -ne $dn -and $null -ne $groupDn) {
            # 1.2.840.113556.1.4.1941 = LDAP_MATCHING_RULE_IN_CHAIN: transitive membership.
            $inChain = '(&(objectCategory=computer)(distinguishedName=' + (ConvertTo-LdapFilterValue $dn) + ')' +
                '(memberOf:1.2.840.113556.1.4.1941:=' + (ConvertTo-LdapFilterValue $groupDn) + '))'
            $member = ($null -ne (Find-DistinguishedName $inChain))
        }
        $row = New-Record
        $row['Name'] = $name
        $row['Found'] = ($null -ne $dn)
        $row['DistinguishedName'] = $dn
        $row['Member'] = [bool]$member
        $row
    })

    $result = New-Record
    $result['CollectedAt'] = [DateTime]::UtcNow
    $result['Group'] = $groupDn
    $result['Computers'] = $results
    $result
}
