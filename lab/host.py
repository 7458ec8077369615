"""What a Windows host does with a probe command: the lab's own reading of the wire format.

The client sends `powershell.exe ... -EncodedCommand <base64 of UTF-16LE>`, a short bootstrap
that reads the shell's environment (the variables of the WS-Man Create body). powershell.exe
runs it; the lab reads it the same way, written from the documented format (design.md,
section 3), never with the client's helpers, so an encoding bug of the client is caught here:

- a value is the concatenation of the variables NAME_0, NAME_1, ... up to the first missing
  index (Windows caps one variable at 32,767 characters);
- every value is packed: base64 of gzip (RFC 1952) of UTF-8 text. `[Convert]::FromBase64String`
  rejects what .NET rejects, GZipStream what is not gzip, and a bootstrap that fails there is a
  terminating error (`$ErrorActionPreference='Stop'`): powershell.exe writes it to stderr as
  CLIXML and exits 1, without printing anything on stdout;
- the bootstrap dot-sources the decoded library, then the decoded probe script; the script is
  recognised by its first line, `# probe: <name> v<N>`, and calls Invoke-Probe, which the library
  must have defined;
- the parameters travel as packed JSON that the library unpacks inside Invoke-Probe, so bad
  parameters are the probe's own error document (`{"probe": ..., "error": {...}}`), exit code 0;
- on a Windows PowerShell 2.0 host (Lync Server 2010) every dot-sourced script is read for what 2.0
  cannot run (lab/powershell.py): a parse error in either script stops the bootstrap inside
  `[ScriptBlock]::Create` (a terminating error); a construct that fails at run time is terminating
  when it is in the library (Invoke-Probe's own error branch runs the library's code, so an
  incompatible library leaves nothing to report the error with) and is the probe's error document,
  as Invoke-Probe's catch writes it, when it is in the probe script alone.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import zlib
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

from lab import powershell
from lab.powershell import Host

PROBE_LINE = re.compile(r"# probe: ([a-z][a-z0-9-]*) v([0-9]+)[ \t]*")
# the bootstrap's two uses of the shell environment: the parameters' text, and the scripts it dot-sources
PARAMS_FROM = re.compile(r"\$CmsbotParams=\(& \$j '([A-Za-z0-9_]+)'\)")
SOURCES = re.compile(r"\. \(\[ScriptBlock\]::Create\(\(& \$d '([A-Za-z0-9_]+)'\)\)\)")
# a bootstrap that runs several probes: each one's parameters and scripts inside a child scope of its own
CHILD_SCOPES = re.compile(r"&\{(\$CmsbotParams=[^{}]*)\}")
BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
WHITESPACE = re.compile(r"[ \t\r\n]")

BAD_BASE64 = ("The input is not a valid Base-64 string as it contains a non-base 64 character, more than two padding "
              "characters, or an illegal character among the padding characters. ")
BAD_LENGTH = "Invalid length for a Base-64 char array or string."
# System.IO.InvalidDataException from GZipStream (.NET Framework) for data that is not gzip
NOT_GZIP = "The magic number in GZip header is not correct. Make sure you are passing in a GZip stream."


class NotABootstrap(ValueError):
    """Not a command the lab can run (the lab answers only cms-chatops probes)."""


class UnknownScript(ValueError):
    """A script whose first line names no probe the lab simulates."""


class TerminatingError(Exception):
    """The bootstrap stopped: powershell.exe prints this record to stderr and exits 1."""

    def __init__(self, message: str, category: str, error_id: str):
        super().__init__(message)
        self.message, self.category, self.error_id = message, category, error_id

    def clixml(self) -> bytes:
        """Standard error as powershell.exe writes it for a remote (non-console) caller."""
        lines = [self.message, f"    + CategoryInfo          : {self.category}",
                 f"    + FullyQualifiedErrorId : {self.error_id}"]
        records = "".join(f'<S S="Error">{escape(line)}_x000D__x000A_</S>' for line in lines)
        return ('#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
                f"{records}</Objs>").encode()


@dataclass
class Invocation:
    """The probe the bootstrap ended up running, with its parameters as Invoke-Probe reads them."""

    probe: str | None  # None: the script was empty, nothing ran (no output, exit code 0)
    version: int = 0
    header: str = ""  # the script's first line
    params: dict[str, Any] = field(default_factory=dict)
    params_error: str | None = None  # Get-ProbeParams threw: the probe answers with its error document
    params_error_command: str = ""
    params_error_category: str = "NotSpecified"
    imports_module: bool = False  # Invoke-Probe loads the Lync/SkypeForBusiness module first


def environment_value(env: dict[str, str], name: str) -> str:
    """NAME_0 + NAME_1 + ... up to the first index the environment does not hold."""
    value, index = "", 0
    while (chunk := env.get(f"{name}_{index}")) is not None:
        value += chunk
        index += 1
    return value


def from_base64(text: str) -> bytes:
    """[Convert]::FromBase64String: whitespace ignored, anything else outside the alphabet refused."""
    compact = WHITESPACE.sub("", text)
    if not BASE64.fullmatch(compact):
        raise ValueError(BAD_BASE64)
    if len(compact) % 4:
        raise ValueError(BAD_LENGTH)
    try:
        return base64.b64decode(compact, validate=True)
    except binascii.Error:
        raise ValueError(BAD_BASE64) from None


def unpack(text: str) -> str:
    """What the bootstrap's `$d` (and the library's ConvertFrom-PackedText) does with a value: base64,
    then gunzip, then UTF-8. Raises _Unpacking with the .NET method call that would fail."""
    try:
        raw = from_base64(text)
    except ValueError as e:
        raise _Unpacking(f'Exception calling "FromBase64String" with "1" argument(s): "{e}"', "FormatException") \
            from None
    if not raw:
        return ""  # GZipStream over an empty stream reads nothing, no error
    if raw[:2] != b"\x1f\x8b":
        raise _Unpacking(f'Exception calling "ReadToEnd" with "0" argument(s): "{NOT_GZIP}"', "InvalidDataException")
    try:
        # .NET Framework's GZipStream returns what it could decode from a truncated stream, no error
        return zlib.decompressobj(wbits=31).decompress(raw).decode("utf-8", errors="replace")
    except zlib.error:
        raise _Unpacking('Exception calling "ReadToEnd" with "0" argument(s): "Found invalid data while decoding."',
                         "InvalidDataException") from None


class _Unpacking(ValueError):
    def __init__(self, message: str, error_id: str):
        super().__init__(message)
        self.message, self.error_id = message, error_id


def _method_error(e: _Unpacking) -> TerminatingError:
    return TerminatingError(e.message, "NotSpecified: (:) [], MethodInvocationException", e.error_id)


def bootstrap_of(args: list[str]) -> str:
    """The PowerShell text of `-EncodedCommand <base64 of UTF-16LE>`."""
    try:
        encoded = args[args.index("-EncodedCommand") + 1]
        return base64.b64decode(encoded, validate=True).decode("utf-16-le")
    except (ValueError, IndexError, binascii.Error, UnicodeDecodeError):
        raise NotABootstrap("-EncodedCommand bootstrap expected") from None


def _parse_failure(inc: powershell.Incompatibility) -> TerminatingError:
    """A script 2.0 cannot parse: `[ScriptBlock]::Create` throws, wrapped as a .NET method call's exception
    (Windows PowerShell 2.0 names that record DotNetMethodException)."""
    return TerminatingError(f'Exception calling "Create" with "1" argument(s): "{inc.message}"',
                            "NotSpecified: (:) [], MethodInvocationException", "DotNetMethodException")


def run(args: list[str], env: dict[str, str], host: Host = powershell.CURRENT) -> Invocation:
    """Run the bootstrap of `args` against the shell environment `env`, as far as the lab can:
    up to the probe it invokes, on a host running `host`'s PowerShell. Raises NotABootstrap,
    UnknownScript or TerminatingError."""
    bootstrap = bootstrap_of(args)
    if not SOURCES.findall(bootstrap):
        raise NotABootstrap("the bootstrap dot-sources no script from the environment")
    for inc in powershell.check(bootstrap, host):  # the -EncodedCommand text itself must run on this host
        raise TerminatingError(inc.message, inc.category, inc.error_id)
    return _run_one(bootstrap, env, host)


def run_each(args: list[str], env: dict[str, str],
             host: Host = powershell.CURRENT) -> tuple[list[Invocation], TerminatingError | None]:
    """`run` for a bootstrap that runs several probes in turn, each in a child scope (`&{...}`): the probes
    it invoked, in order, and the terminating error that stopped it after them (the rest never ran)."""
    bootstrap = bootstrap_of(args)
    parts = CHILD_SCOPES.findall(bootstrap)
    if len(parts) < 2:
        try:
            return [run(args, env, host)], None
        except TerminatingError as e:
            return [], e
    for inc in powershell.check(bootstrap, host):
        return [], TerminatingError(inc.message, inc.category, inc.error_id)
    done: list[Invocation] = []
    for part in parts:
        try:
            done.append(_run_one(part, env, host))
        except TerminatingError as e:
            return done, e
    return done, None


def _run_one(bootstrap: str, env: dict[str, str], host: Host) -> Invocation:
    sources = SOURCES.findall(bootstrap)
    if not sources:
        raise NotABootstrap("the bootstrap dot-sources no script from the environment")
    params_from = PARAMS_FROM.search(bootstrap)
    params_text = environment_value(env, params_from.group(1)) if params_from else ""
    defined: set[str] = set()
    strict = False
    library_failure: powershell.Incompatibility | None = None
    invocation = Invocation(probe=None)
    for name in sources:  # in order: the library, then the probe
        try:
            script = unpack(environment_value(env, name))
        except _Unpacking as e:
            raise _method_error(e) from None
        script = script.lstrip("\ufeff")
        first = script.splitlines()[0] if script else ""
        header = PROBE_LINE.fullmatch(first)
        found = powershell.check(script, host, defined=defined, strict=strict) if script else []
        parse = next((f for f in found if f.parse), None)
        if parse is not None:
            raise _parse_failure(parse)
        runtime = next((f for f in found if not f.parse), None)
        if header is None:
            if script and not first.startswith("# probe-lib:"):
                raise UnknownScript(first[:80])
            defined |= powershell.functions(script)
            strict = strict or powershell.turns_on_strict_mode(script)
            library_failure = library_failure or runtime
            continue
        if library_failure is not None:
            raise TerminatingError(library_failure.message, library_failure.category, library_failure.error_id)
        if "invoke-probe" not in defined:
            raise TerminatingError(
                "Invoke-Probe : The term 'Invoke-Probe' is not recognized as the name of a cmdlet, function, script "
                "file, or operable program. Check the spelling of the name, or if a path was included, verify that "
                "the path is correct and try again.",
                "ObjectNotFound: (Invoke-Probe:String) [], CommandNotFoundException", "CommandNotFoundException")
        invocation = Invocation(probe=header.group(1), version=int(header.group(2)), header=first,
                                imports_module=powershell.imports_module(script))
        _read_params(invocation, params_text)
        if runtime is not None and invocation.params_error is None:  # Invoke-Probe's catch: the error document
            invocation.params_error, invocation.params_error_command = runtime.message, ""
            invocation.params_error_category = runtime.short_category
    return invocation


def _read_params(invocation: Invocation, text: str) -> None:
    """Get-ProbeParams, run by Invoke-Probe inside its try: an error becomes the probe's error document."""
    if not text:
        return
    try:
        raw = unpack(text)
    except _Unpacking as e:
        invocation.params_error = e.message
        return
    try:
        doc = json.loads(raw.lstrip("\ufeff"))
    except ValueError as e:
        position = getattr(e, "pos", 0)
        invocation.params_error = f"Invalid JSON primitive: {raw[position:position + 40]}."
        invocation.params_error_command = "ConvertFrom-Json"
        return
    # ConvertFrom-Json of anything but an object has no properties: every parameter reads as absent
    invocation.params = doc if isinstance(doc, dict) else {}
