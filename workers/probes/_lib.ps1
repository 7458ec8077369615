# probe-lib: shared helpers v3
# Dot-sourced by the bootstrap before every probe. Invoke-Probe loads the
# management module for the installed version, runs the probe body with its
# parameters and prints exactly one JSON document, an error included.
#
# Windows PowerShell 2.0 subset: Lync Server 2010 runs on Windows Server 2008 R2
# with Windows PowerShell 2.0 on CLR 2 (.NET Framework 3.5 SP1), so this file and
# every probe use nothing newer (tests/unit/test_probe_scripts.py lists what is
# refused): no [ordered] or [pscustomobject], no ConvertTo-Json/ConvertFrom-Json,
# no redirection of streams other than 1 and 2, no .NET 4 members. Records are
# System.Collections.Specialized.OrderedDictionary (New-Record), written by the
# JSON writer below; parameters are read with JavaScriptSerializer.
#
# The answer: one line of plain ASCII JSON,
#   {"probe":"<name>","version":<N>,"ps":"<PSVersion>","data":{...}}
#   {"probe":"<name>","version":<N>,"ps":"<PSVersion>","error":{"message":...,"category":...,"command":...[,"needs":"<version>"]}}
# where "ps" is the host's $PSVersionTable.PSVersion ("2.0", "5.1.17763.1", ...).
# A cmdlet property this product version does not have is "not reported": its
# field in data is null and data's "NotReported" (present only then) lists it
# as "<cmdlet>: <property>", e.g. "Get-CsService -CentralManagement: Active".
# JSON values: strings with " \ and every character outside printable ASCII
# escaped (\b \f \n \r \t, else \uXXXX, UTF-16 code units), numbers in the
# invariant culture (NaN and infinities as null), true/false, null, dates as
# ISO 8601 UTC with milliseconds ("2023-11-14T22:13:20.000Z"), enums by name,
# dictionaries as objects (keys in insertion order), every other collection
# as an array (empty ones as [], one item as a one-item array).
Set-StrictMode -Version 2
$ProgressPreference = 'SilentlyContinue'
$WarningPreference = 'SilentlyContinue'
# The cmdlet properties Get-Field found missing during this probe (see Invoke-Probe).
$global:CmsbotNotReported = New-Object -TypeName System.Collections.Generic.List[string]

# -- the host ------------------------------------------------------------------

function Get-PowerShellVersion {
    # $PSVersionTable.PSVersion ($PSVersionTable itself came with 2.0).
    $table = Get-Variable -Name PSVersionTable -ValueOnly -ErrorAction SilentlyContinue
    if ($null -eq $table) { return (New-Object -TypeName System.Version -ArgumentList 1, 0) }
    return [System.Version]$table['PSVersion']
}

function Import-CsModule {
    # Skype for Business Server 2015/2019 ship 'SkypeForBusiness', Lync 2010/2013 'Lync'.
    # Setup adds the module folder to PSModulePath; its own path is the fallback.
    foreach ($name in 'SkypeForBusiness', 'Lync') {
        if (Get-Module -ListAvailable -Name $name) {
            Import-Module $name -ErrorAction Stop -WarningAction SilentlyContinue
            return $name
        }
    }
    $common = [string]$env:CommonProgramFiles
    # One array of pairs (commas, not one statement per line: @() would flatten those).
    $known = @(
        ('SkypeForBusiness', 'Skype for Business Server 2019\Modules\SkypeForBusiness\SkypeForBusiness.psd1'),
        ('SkypeForBusiness', 'Skype for Business Server 2015\Modules\SkypeForBusiness\SkypeForBusiness.psd1'),
        ('Lync', 'Microsoft Lync Server 2013\Modules\Lync\Lync.psd1'),
        ('Lync', 'Microsoft Lync Server 2010\Modules\Lync\Lync.psd1')
    )
    if ($common -ne '') {
        foreach ($entry in $known) {
            $path = [System.IO.Path]::Combine($common, $entry[1])
            if ([System.IO.File]::Exists($path)) {
                Import-Module $path -ErrorAction Stop -WarningAction SilentlyContinue
                return $entry[0]
            }
        }
    }
    throw 'Neither the SkypeForBusiness nor the Lync PowerShell module is installed on this server'
}

# -- JSON ----------------------------------------------------------------------

function New-Record {
    # An empty JSON object whose keys keep their order: $r['Name'] = value.
    # (PowerShell does not unroll a dictionary, so it is returned as is.)
    return (New-Object -TypeName System.Collections.Specialized.OrderedDictionary)
}

function ConvertTo-JsonString {
    # $Text as a JSON string literal, in plain ASCII: quote, backslash and every
    # character outside 0x20-0x7E escaped, so no console code page can change it.
    param([string]$Text)
    $special = [System.Text.RegularExpressions.Regex]::Matches($Text, '[^\x20\x21\x23-\x5B\x5D-\x7E]')
    if ($special.Count -eq 0) { return '"' + $Text + '"' }
    $builder = New-Object -TypeName System.Text.StringBuilder -ArgumentList ($Text.Length + 6 * $special.Count + 2)
    [void]$builder.Append('"')
    $at = 0
    foreach ($match in $special) {
        if ($match.Index -gt $at) { [void]$builder.Append($Text.Substring($at, $match.Index - $at)) }
        $code = [int][char]$match.Value
        if ($code -eq 34) { [void]$builder.Append('\"') }
        elseif ($code -eq 92) { [void]$builder.Append('\\') }
        elseif ($code -eq 8) { [void]$builder.Append('\b') }
        elseif ($code -eq 9) { [void]$builder.Append('\t') }
        elseif ($code -eq 10) { [void]$builder.Append('\n') }
        elseif ($code -eq 12) { [void]$builder.Append('\f') }
        elseif ($code -eq 13) { [void]$builder.Append('\r') }
        else { [void]$builder.Append('\u' + $code.ToString('x4', [System.Globalization.CultureInfo]::InvariantCulture)) }
        $at = $match.Index + 1
    }
    if ($at -lt $Text.Length) { [void]$builder.Append($Text.Substring($at)) }
    [void]$builder.Append('"')
    return $builder.ToString()
}

function Add-JsonValue {
    # Appends $Value as JSON to $Builder (the format is in the header above).
    param([System.Text.StringBuilder]$Builder, $Value, [int]$Depth)
    if ($Depth -gt 32) { throw 'the answer is nested more than 32 levels deep' }
    $invariant = [System.Globalization.CultureInfo]::InvariantCulture
    if ($null -eq $Value -or $Value -is [System.DBNull]) {
        [void]$Builder.Append('null')
    } elseif ($Value -is [string] -or $Value -is [char]) {
        [void]$Builder.Append((ConvertTo-JsonString ([string]$Value)))
    } elseif ($Value -is [bool]) {
        if ([bool]$Value) { [void]$Builder.Append('true') } else { [void]$Builder.Append('false') }
    } elseif ($Value -is [DateTime] -or $Value -is [DateTimeOffset]) {
        if ($Value -is [DateTimeOffset]) { $moment = ([DateTimeOffset]$Value).UtcDateTime } else { $moment = ([DateTime]$Value).ToUniversalTime() }
        [void]$Builder.Append('"' + $moment.ToString("yyyy'-'MM'-'dd'T'HH':'mm':'ss'.'fff'Z'", $invariant) + '"')
    } elseif ($Value -is [System.Enum]) {
        [void]$Builder.Append((ConvertTo-JsonString $Value.ToString()))
    } elseif ($Value -is [double] -or $Value -is [single]) {
        $number = [double]$Value
        if ([double]::IsNaN($number) -or [double]::IsInfinity($number)) {
            [void]$Builder.Append('null')
        } else {
            [void]$Builder.Append($number.ToString('R', $invariant))
        }
    } elseif ($Value -is [int] -or $Value -is [long] -or $Value -is [decimal] -or $Value -is [byte] -or
              $Value -is [int16] -or $Value -is [uint16] -or $Value -is [uint32] -or $Value -is [uint64] -or
              $Value -is [sbyte]) {
        [void]$Builder.Append($Value.ToString($invariant))
    } elseif ($Value -is [System.Collections.IDictionary]) {
        [void]$Builder.Append('{')
        $first = $true
        foreach ($entry in $Value.GetEnumerator()) {
            if (-not $first) { [void]$Builder.Append(',') }
            $first = $false
            [void]$Builder.Append((ConvertTo-JsonString ([string]$entry.Key)))
            [void]$Builder.Append(':')
            Add-JsonValue $Builder $entry.Value ($Depth + 1)
        }
        [void]$Builder.Append('}')
    } elseif ($Value -is [System.Collections.IEnumerable]) {
        [void]$Builder.Append('[')
        $first = $true
        foreach ($item in $Value) {
            if (-not $first) { [void]$Builder.Append(',') }
            $first = $false
            Add-JsonValue $Builder $item ($Depth + 1)
        }
        [void]$Builder.Append(']')
    } else {
        # Guid, Version, TimeSpan, IP addresses and any other object: its text.
        [void]$Builder.Append((ConvertTo-JsonString ([string]$Value)))
    }
}

function ConvertTo-ProbeJson {
    # $Value as one line of JSON (what ConvertTo-Json -Compress is on 3.0+).
    param($Value)
    $builder = New-Object -TypeName System.Text.StringBuilder
    Add-JsonValue $builder $Value 0
    return $builder.ToString()
}

function ConvertFrom-ProbeJson {
    # JSON text -> Dictionary[string,object] for objects, object[] for arrays,
    # string, int/long/decimal, bool or $null (what ConvertFrom-Json is on
    # 3.0+). System.Web.Script.Serialization.JavaScriptSerializer lives in
    # System.Web.Extensions, part of .NET Framework 3.5 and later, which every
    # supported server has (Lync Server 2010 requires .NET Framework 3.5 SP1,
    # the CLR Windows PowerShell 2.0 runs on):
    # https://learn.microsoft.com/dotnet/api/system.web.script.serialization.javascriptserializer?view=netframework-3.5
    param([string]$Json)
    try {
        Add-Type -AssemblyName System.Web.Extensions -ErrorAction Stop
    } catch {
        $loaded = [System.Reflection.Assembly]::LoadWithPartialName('System.Web.Extensions')
        if ($null -eq $loaded) { throw ('cannot read the parameters: System.Web.Extensions (.NET Framework 3.5) is not available: ' + (Get-ErrorMessage $_)) }
    }
    $serializer = New-Object -TypeName System.Web.Script.Serialization.JavaScriptSerializer
    $serializer.MaxJsonLength = [int]::MaxValue
    return ,($serializer.DeserializeObject($Json))
}

function ConvertFrom-PackedText {
    # The wire format's packing (workers/probes/wire.py): base64 of gzip (RFC 1952) of UTF-8 text.
    # GZipStream is in .NET 2.0, so Windows PowerShell 2.0 unpacks it:
    # https://learn.microsoft.com/dotnet/api/system.io.compression.gzipstream
    param([string]$Packed)
    $bytes = [Convert]::FromBase64String($Packed)
    $zip = New-Object System.IO.Compression.GZipStream((New-Object System.IO.MemoryStream(,$bytes)),
        ([System.IO.Compression.CompressionMode]::Decompress))
    $reader = New-Object System.IO.StreamReader($zip, [System.Text.Encoding]::UTF8)
    try { return $reader.ReadToEnd() } finally { $reader.Close() }
}

function Get-ProbeParams {
    # $CmsbotParams: the packed JSON, joined by the bootstrap from the shell environment's chunks.
    $packed = Get-Variable -Name CmsbotParams -ValueOnly -ErrorAction SilentlyContinue
    if (-not $packed) { return (New-Record) }
    $json = (ConvertFrom-PackedText $packed).Trim()
    if ($json -eq '' -or $json -eq '{}') { return (New-Record) }
    return ,(ConvertFrom-ProbeJson $json)
}

function New-ProbeError {
    param([string]$Message, [string]$Category, [string]$Command)
    $record = New-Record
    $record['message'] = $Message
    $record['category'] = $Category
    $record['command'] = $Command
    return $record
}

function ConvertTo-SafeText {
    # Last resort for the error document when the JSON writer itself failed:
    # letters, digits and plain punctuation only.
    param([string]$Text)
    return ($Text -replace '[^A-Za-z0-9 .,:;_()/-]', '?')
}

function Invoke-Probe {
    # Runs the probe body with its parameters and prints the answer (see the
    # header). -PowerShell: the oldest Windows PowerShell the probe runs on
    # (default 2.0); an older host answers an error naming both versions and
    # runs nothing.
    param([string]$Name, [int]$Version, [switch]$NoModule, [string]$PowerShell = '2.0', [scriptblock]$Body)
    $global:CmsbotNotReported = New-Object -TypeName System.Collections.Generic.List[string]
    $found = Get-PowerShellVersion
    $needed = [System.Version]$PowerShell
    $doc = New-Record
    $doc['probe'] = $Name
    $doc['version'] = $Version
    $doc['ps'] = $found.ToString()
    try {
        if ($found -lt $needed) {
            $doc['error'] = New-ProbeError ($Name + ' needs Windows PowerShell ' + $needed.ToString() + ' or later; this server runs Windows PowerShell ' + $found.ToString() + '; nothing was run') 'NotImplemented' ''
            $doc['error']['needs'] = $needed.ToString()
        } else {
            if (-not $NoModule) { $null = Import-CsModule }
            $data = & $Body (Get-ProbeParams)
            if ($global:CmsbotNotReported.Count -gt 0 -and $data -is [System.Collections.IDictionary]) {
                $data['NotReported'] = $global:CmsbotNotReported.ToArray()
            }
            $doc['data'] = $data
        }
        $text = ConvertTo-ProbeJson $doc
    } catch {
        $failure = $_
        $command = ''
        if ($null -ne $failure.InvocationInfo -and $null -ne $failure.InvocationInfo.MyCommand) { $command = [string]$failure.InvocationInfo.MyCommand }
        $doc.Remove('data')
        $doc['error'] = New-ProbeError ([string]$failure.Exception.Message) ([string]$failure.CategoryInfo.Category) $command
        try {
            $text = ConvertTo-ProbeJson $doc
        } catch {
            $text = '{"probe":"' + (ConvertTo-SafeText $Name) + '","version":' + [string]$Version + ',"ps":"' + (ConvertTo-SafeText $found.ToString()) +
                '","error":{"message":"' + (ConvertTo-SafeText ([string]$failure.Exception.Message)) + '","category":"WriteError","command":""}}'
        }
    }
    $text
}

# -- parameters and cmdlet objects ---------------------------------------------
# Every property of a cmdlet's object and every parameter is read through
# Get-Field: StrictMode forbids reading a property that does not exist, and a
# property one product version lacks (Active of Get-CsService -CentralManagement
# before Lync Server 2013, say) must not fail the whole probe. With -Source (the
# cmdlet that made the object), a missing property is listed in the answer's
# data.NotReported as "<Source>: <Name>" and its field is null.

function Add-NotReported {
    param([string]$Source, [string]$Name)
    if ($Source -eq '') { return }
    $label = $Source + ': ' + $Name
    if (-not $global:CmsbotNotReported.Contains($label)) { $global:CmsbotNotReported.Add($label) }
}

function Test-Field {
    # $true when $Object has the property $Name (a parameter object's key, any
    # case); with -NotNull, only when its value is not null either (an empty
    # list is not null).
    param($Object, [string]$Name, [switch]$NotNull)
    if ($null -eq $Object) { return $false }
    if ($Object -is [System.Collections.IDictionary]) {
        foreach ($entry in $Object.GetEnumerator()) {
            if ([string]::Equals([string]$entry.Key, $Name, [StringComparison]::OrdinalIgnoreCase)) {
                return (-not $NotNull -or $null -ne $entry.Value)
            }
        }
        return $false
    }
    $property = $Object.PSObject.Properties[$Name]
    if ($null -eq $property) { return $false }
    if (-not $NotNull) { return $true }
    try { return ($null -ne $property.Value) } catch { return $false }
}

function Get-Field {
    # The property $Name of $Object (a parameter object or a cmdlet's output),
    # or $Default when the property is absent, null or cannot be read. An absent
    # one is recorded as not reported when $Source is given.
    param($Object, [string]$Name, $Default, [string]$Source)
    if ($null -eq $Object) { return $Default }
    if ($Object -is [System.Collections.IDictionary]) {
        foreach ($entry in $Object.GetEnumerator()) {
            if ([string]::Equals([string]$entry.Key, $Name, [StringComparison]::OrdinalIgnoreCase)) {
                if ($null -eq $entry.Value) { return $Default }
                return $entry.Value
            }
        }
        Add-NotReported $Source $Name
        return $Default
    }
    $property = $Object.PSObject.Properties[$Name]
    if ($null -eq $property) {
        Add-NotReported $Source $Name
        return $Default
    }
    try {
        $value = $property.Value
    } catch {
        # present, but its getter failed (an event whose message cannot be rendered)
        return $Default
    }
    if ($null -eq $value) { return $Default }
    return $value
}

function Get-TextField {
    # A property as text; $null when absent (not reported) or null.
    param($Object, [string]$Name, [string]$Source)
    $value = Get-Field $Object $Name $null $Source
    if ($null -eq $value) { return $null }
    return [string]$value
}

function Get-FlagField {
    # A boolean property as a bool ("True"/"False" text read as such; [bool]'False'
    # would be $true); $null when absent (not reported) or null.
    param($Object, [string]$Name, [string]$Source)
    $value = Get-Field $Object $Name $null $Source
    if ($null -eq $value) { return $null }
    if ($value -is [bool]) { return [bool]$value }
    if ($value -is [string]) { return [string]::Equals($value.Trim(), 'True', [StringComparison]::OrdinalIgnoreCase) }
    return [bool]$value
}

function ConvertTo-StringList {
    param($Value)
    # Always an array, even for one item or none, so the JSON shape is stable.
    $items = @($Value | Where-Object { $null -ne $_ } | ForEach-Object { [string]$_ })
    return ,$items
}

function Get-StringListField {
    # A list property as an array of strings (empty when null); $null when the
    # object does not have it (not reported).
    param($Object, [string]$Name, [string]$Source)
    if ($null -ne $Object -and -not (Test-Field $Object $Name)) {
        $null = Get-Field $Object $Name $null $Source
        return $null
    }
    $items = ConvertTo-StringList (Get-Field $Object $Name $null $Source)
    return ,$items
}

function Get-ListField {
    # A list property as always an array (a one-element or empty list too),
    # without nulls: JSON parameters and cmdlet output hand over a bare value
    # for one item and $null for none, and the probes loop over the result.
    param($Object, [string]$Name, [string]$Source)
    $value = Get-Field $Object $Name $null $Source
    return ,@($value | Where-Object { $null -ne $_ })
}

function Get-FieldNames {
    # The property names of $Object (a parameter object's keys).
    param($Object)
    if ($null -eq $Object) { return ,@() }
    if ($Object -is [System.Collections.IDictionary]) {
        return ,@($Object.GetEnumerator() | ForEach-Object { [string]$_.Key })
    }
    return ,@($Object.PSObject.Properties | ForEach-Object { [string]$_.Name })
}

function Test-Fqdn {
    # $true for a string that is a fully qualified host name: two or more
    # labels of letters, digits and inner hyphens, at most 253 characters.
    # Shared so every probe that takes FQDNs (and may pass them to a cmdlet)
    # accepts exactly the same ones. \z, not $: in .NET '$' also matches
    # before a trailing newline.
    param($Value)
    $pattern = '^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)+\z'
    return ($Value -is [string] -and $Value.Length -le 253 -and $Value -match $pattern)
}

function ConvertTo-FqdnList {
    # A list parameter of FQDNs ($Items: the parameter's value, an array or
    # one value), checked in full before the probe does anything: a
    # non-string item or an invalid FQDN fails the probe, naming parameter
    # $Name ("must hold only strings (<Noun> FQDNs)" / "holds an invalid
    # FQDN"). Duplicates (any case) are dropped, the first spelling kept.
    # With -SkipNull, null items are ignored instead of failing. Returns a
    # List[string] (wrapped, so an empty or one-item list is not unrolled).
    param($Items, [string]$Name, [string]$Noun, [switch]$SkipNull)
    $list = New-Object -TypeName System.Collections.Generic.List[string]
    foreach ($item in @($Items)) {
        if ($SkipNull -and $null -eq $item) { continue }
        if ($item -isnot [string]) {
            throw ('parameter ' + $Name + ' must hold only strings (' + $Noun + ' FQDNs)')
        }
        if (-not (Test-Fqdn $item)) {
            throw ('parameter ' + $Name + ' holds an invalid FQDN: "' + $item + '"')
        }
        $seen = $false
        foreach ($previous in $list) {
            if ([string]::Equals($previous, $item, [StringComparison]::OrdinalIgnoreCase)) { $seen = $true }
        }
        if (-not $seen) { $list.Add($item) }
    }
    return ,$list
}

# -- errors --------------------------------------------------------------------

function Get-ErrorMessage {
    # The real exception's message, not PowerShell's 'Exception calling ...'
    # wrapper that a failed .NET method call adds: what the probes put into
    # their Error fields and thrown messages.
    param($ErrorRecord)
    $ex = $ErrorRecord.Exception
    while ($ex -is [System.Management.Automation.ExtendedTypeSystemException] -and $null -ne $ex.InnerException) {
        $ex = $ex.InnerException
    }
    return [string]$ex.Message
}

function Get-RecordMessage {
    # An error record as text: its ErrorDetails, then the messages of the
    # exception and its inner exceptions not already said, joined by ' ---> '.
    # Used for the error records a captured cmdlet wrote (Invoke-CapturedFailover),
    # where the inner exceptions often carry the only useful reason.
    param($Record)
    $ex = $Record.Exception
    if ($ex -is [System.Management.Automation.ActionPreferenceStopException] -and $null -ne $ex.ErrorRecord) {
        $Record = $ex.ErrorRecord
        $ex = $Record.Exception
    }
    $parts = New-Object -TypeName System.Collections.Generic.List[string]
    $details = $Record.ErrorDetails
    if ($null -ne $details -and ([string]$details.Message).Trim() -ne '') {
        $parts.Add(([string]$details.Message).Trim())
    }
    $depth = 0
    while ($null -ne $ex -and $depth -lt 8) {
        $text = ([string]$ex.Message).Trim()
        if ($text -ne '') {
            $said = $false
            foreach ($part in $parts) {
                if ($part.IndexOf($text, [StringComparison]::Ordinal) -ge 0) { $said = $true }
            }
            if (-not $said) { $parts.Add($text) }
        }
        $ex = $ex.InnerException
        $depth++
    }
    if ($parts.Count -eq 0) { $parts.Add(([string]$Record).Trim()) }
    return ($parts -join ' ---> ')
}

function Limit-Text {
    # At most $Max characters: the head and the tail, with a marker between,
    # so a chatty cmdlet's output cannot blow up the probe's JSON document.
    param([string]$Text, [int]$Max)
    if ($Text.Length -le $Max) { return $Text }
    $marker = "`n... [output cut: " + [string]$Text.Length + " characters in all] ...`n"
    $keep = $Max - $marker.Length
    $head = [int][Math]::Floor($keep / 2)
    $tail = $keep - $head
    return $Text.Substring(0, $head) + $marker + $Text.Substring($Text.Length - $tail)
}

# -- CMS failover / restore: run the cmdlet, keep everything it says -----------

function Invoke-CapturedFailover {
    # Runs Invoke-CsManagementServerFailover @Splat and returns the data of
    # cms-failover and cms-restore (the same shape for both): CollectedAt,
    # StartedAt, Mode, Command, Succeeded, Warnings [string], Errors [string],
    # Output. The cmdlet's refusal is data, not a probe error: its warnings,
    # error records (a terminating error too) and remaining output (verbose
    # messages included) are collected and returned; Succeeded is true when
    # it wrote no error record. Only a server without the cmdlet throws (and
    # then nothing was run). $Splat must be built by the caller from
    # validated values only; $Mode and $Command are reported as given.
    param([string]$Mode, [string]$Command, [hashtable]$Splat)
    if ($null -eq (Get-Command -Name 'Invoke-CsManagementServerFailover' -ErrorAction SilentlyContinue)) {
        throw 'Invoke-CsManagementServerFailover is not available on this server (it came with Lync Server 2013; Lync Server 2010 moves the CMS with Move-CsManagementServer); nothing was run'
    }

    # The warning (3) and verbose (4) streams can be merged into the output
    # from Windows PowerShell 3.0 on; Lync Server 2013 and later, the only
    # versions with this cmdlet, require 3.0. The merge is parsed here, after
    # the check, from text: a 2.0 host refuses '3>&1' at parse time, and this
    # library must parse on 2.0.
    $found = Get-PowerShellVersion
    if ($found.Major -lt 3) {
        throw ('running Invoke-CsManagementServerFailover needs Windows PowerShell 3.0 or later (Lync Server 2013 and later require it); this server runs Windows PowerShell ' + $found.ToString() + '; nothing was run')
    }
    $run = {
        param($Arguments)
        $ErrorActionPreference = 'Continue'
        $WarningPreference = 'Continue'
        Invoke-CsManagementServerFailover @Arguments
    }
    $merged = [ScriptBlock]::Create('param($Run, $Arguments) & $Run $Arguments 2>&1 3>&1 4>&1')

    # -- run it, keeping everything it says --
    # Items are collected as they stream, so what came before a terminating
    # error is kept; the terminating error itself is caught as a record.
    $items = New-Object -TypeName System.Collections.Generic.List[object]
    $startedAt = [DateTime]::UtcNow
    try {
        & $merged $run $Splat | ForEach-Object { $items.Add($_) }
    } catch {
        $items.Add($_)
    }
    $collectedAt = [DateTime]::UtcNow

    # -- sort what it said --
    $warnings = New-Object -TypeName System.Collections.Generic.List[string]
    $errors = New-Object -TypeName System.Collections.Generic.List[string]
    $chunks = New-Object -TypeName System.Collections.Generic.List[string]
    foreach ($item in $items) {
        if ($null -eq $item) { continue }
        if ($item -is [System.Management.Automation.WarningRecord]) {
            $warnings.Add(([string]$item.Message).Trim())
        } elseif ($item -is [System.Management.Automation.ErrorRecord]) {
            $errors.Add((Get-RecordMessage $item))
        } elseif ($item -is [System.Management.Automation.VerboseRecord]) {
            $chunks.Add('VERBOSE: ' + ([string]$item.Message).TrimEnd())
        } elseif ($item -is [System.Management.Automation.DebugRecord]) {
            $chunks.Add('DEBUG: ' + ([string]$item.Message).TrimEnd())
        } elseif ($item -is [string]) {
            $chunks.Add($item.TrimEnd())
        } else {
            $chunks.Add(($item | Out-String -Width 4096).TrimEnd())
        }
    }
    $output = Limit-Text (($chunks -join "`n").Trim()) 20000

    $result = New-Record
    $result['CollectedAt'] = $collectedAt
    $result['StartedAt'] = $startedAt
    $result['Mode'] = $Mode
    $result['Command'] = $Command
    $result['Succeeded'] = ($errors.Count -eq 0)
    $result['Warnings'] = ConvertTo-StringList $warnings.ToArray()
    $result['Errors'] = ConvertTo-StringList $errors.ToArray()
    $result['Output'] = $output
    return $result
}

# -- files under %ProgramData%\cmsbot (export-configuration, import-configuration, reseed-local)

function Get-Sha256Hex {
    # Uppercase hex SHA-256, as Get-FileHash prints it. The CryptoServiceProvider class
    # rather than Get-FileHash's SHA256Managed, which throws on servers
    # enforcing FIPS-compliant algorithms. The probes report it so the caller
    # can check a zip end to end.
    param([byte[]]$Bytes)
    $sha = New-Object -TypeName System.Security.Cryptography.SHA256CryptoServiceProvider
    try {
        $hash = $sha.ComputeHash($Bytes)
    } finally {
        # Clear(), not Dispose(): HashAlgorithm.Dispose() is public only from .NET 4.
        $sha.Clear()
    }
    return ([BitConverter]::ToString($hash) -replace '-', '').ToUpperInvariant()
}

function Initialize-CmsbotFolder {
    # %ProgramData%\cmsbot\<Leaf>, created when missing. The cmsbot folder
    # is created with a protected ACL (SYSTEM, Administrators and the
    # account running the probe; nothing inherited from ProgramData, where
    # every user may read and create folders). Both folders must be owned
    # by one of those, so no other local user can swap the file between
    # its checks and its use.
    param([string]$Leaf)
    $programData = [string]$env:ProgramData
    if ($programData -eq '') { $programData = [Environment]::GetFolderPath('CommonApplicationData') }
    if ($programData -eq '') { throw 'the ProgramData folder is unknown on this server' }
    $root = [System.IO.Path]::GetFullPath([System.IO.Path]::Combine($programData, 'cmsbot'))
    $folder = [System.IO.Path]::Combine($root, $Leaf)

    $trusted = @(
        (New-Object -TypeName System.Security.Principal.SecurityIdentifier -ArgumentList 'S-1-5-18'),
        (New-Object -TypeName System.Security.Principal.SecurityIdentifier -ArgumentList 'S-1-5-32-544'),
        [System.Security.Principal.WindowsIdentity]::GetCurrent().User
    )
    if (-not [System.IO.Directory]::Exists($root)) {
        $security = New-Object -TypeName System.Security.AccessControl.DirectorySecurity
        $security.SetAccessRuleProtection($true, $false)
        $inherit = [System.Security.AccessControl.InheritanceFlags]'ContainerInherit, ObjectInherit'
        $propagate = [System.Security.AccessControl.PropagationFlags]::None
        $full = [System.Security.AccessControl.FileSystemRights]::FullControl
        $allow = [System.Security.AccessControl.AccessControlType]::Allow
        foreach ($sid in $trusted) {
            $rule = New-Object -TypeName System.Security.AccessControl.FileSystemAccessRule -ArgumentList $sid, $full, $inherit, $propagate, $allow
            $security.AddAccessRule($rule)
        }
        $null = [System.IO.Directory]::CreateDirectory($root, $security)
    }
    $null = [System.IO.Directory]::CreateDirectory($folder)
    foreach ($dir in $root, $folder) {
        $attributes = [System.IO.File]::GetAttributes($dir)
        if (([int]$attributes -band [int][System.IO.FileAttributes]::ReparsePoint) -ne 0) {
            throw ('refusing ' + $dir + ': it is a link (reparse point), not a folder')
        }
        $ownerSid = [System.IO.Directory]::GetAccessControl($dir, [System.Security.AccessControl.AccessControlSections]::Owner).GetOwner([System.Security.Principal.SecurityIdentifier])
        $ok = $false
        foreach ($sid in $trusted) {
            if ($null -ne $sid -and $sid.Equals($ownerSid)) { $ok = $true }
        }
        if (-not $ok) {
            $ownerName = [string]$ownerSid
            try {
                $ownerName = [string]$ownerSid.Translate([System.Security.Principal.NTAccount]) + ' (' + [string]$ownerSid + ')'
            } catch {
                $null = $_
            }
            throw ('refusing ' + $dir + ': it is owned by ' + $ownerName + ', not by SYSTEM, Administrators or the account running this probe')
        }
    }
    return $folder
}

function Get-CmsbotZipName {
    # The fileName parameter of a probe that writes a zip under
    # %ProgramData%\cmsbot: required, and a bare file name
    # '<Prefix>-<1 to 64 of A-Z a-z 0-9 ->.zip' (no folder, no '..'), so the
    # path built from it stays in the folder. -cmatch and \z: exact case, and
    # no trailing newline let through by '$'. $Prefix is the probe's own
    # constant (e.g. 'cmsbot-export'), never a parameter.
    param($Params, [string]$Prefix)
    if ($Prefix -cnotmatch '^cmsbot-[a-z]+\z') { throw ('invalid zip name prefix: ' + $Prefix) }
    $namePattern = '^' + $Prefix + '-[A-Za-z0-9-]{1,64}\.zip\z'
    $fileName = Get-Field $Params 'fileName' $null
    if ($null -eq $fileName) {
        throw ('parameter fileName is required: a bare name like ' + $Prefix + '-<id>.zip')
    }
    if ($fileName -isnot [string] -or $fileName -cnotmatch $namePattern) {
        throw ('parameter fileName must be a bare file name matching ^' + $Prefix + '-[A-Za-z0-9-]{1,64}\.zip$')
    }
    return $fileName
}

function Get-CmsbotFilePath {
    # The full path of $FileName (already checked by Get-CmsbotZipName) in
    # %ProgramData%\cmsbot\<Leaf>, the folder created and secured first by
    # Initialize-CmsbotFolder. Fails when the resolved path is not inside the
    # folder: a second guard behind the name check.
    param([string]$Leaf, [string]$FileName)
    $folder = Initialize-CmsbotFolder $Leaf
    $path = [System.IO.Path]::GetFullPath([System.IO.Path]::Combine($folder, $FileName))
    if (-not $path.StartsWith($folder.TrimEnd('\') + '\', [StringComparison]::OrdinalIgnoreCase)) {
        throw ('refusing a path outside ' + $folder)
    }
    return $path
}

function Export-CmsbotConfiguration {
    # Export-CsConfiguration into $Path, which must not exist yet (an existing
    # export is a DR backup: never overwritten, the probe fails before
    # anything is exported), and returns the zip's bytes. No file, or an
    # empty one, fails the probe; $Suffix is appended to those two messages
    # (reseed-local adds that nothing was imported). The byte array is
    # returned wrapped, so the pipeline does not unroll it.
    param([string]$Path, [string]$Suffix)
    if ([System.IO.File]::Exists($Path) -or [System.IO.Directory]::Exists($Path)) {
        throw ('the export file already exists and is kept as a backup; choose a new fileName: ' + $Path)
    }
    $null = Export-CsConfiguration -FileName $Path -ErrorAction Stop
    if (-not [System.IO.File]::Exists($Path)) {
        throw ('Export-CsConfiguration returned without error but wrote no file at ' + $Path + $Suffix)
    }
    $bytes = [System.IO.File]::ReadAllBytes($Path)
    if ($bytes.Length -eq 0) {
        throw ('Export-CsConfiguration wrote an empty file at ' + $Path + $Suffix)
    }
    return ,$bytes
}
