"""What a Windows host does with a probe command: the lab's own reading of the wire format.

The client sends `powershell.exe ... -EncodedCommand <base64 of UTF-16LE>`, a short bootstrap
that reads the shell's environment (the variables of the WS-Man Create body). powershell.exe
runs it; the lab reads it the same way, written from the documented format (design.md,
section 3), never with the client's helpers, so an encoding bug of the client is caught here:

- a value is the concatenation of the variables NAME_0, NAME_1, ... up to the first missing
  index (Windows caps one variable at 32,767 characters);
- `[Convert]::FromBase64String` rejects what .NET rejects, and a bootstrap that fails there is a
  terminating error (`$ErrorActionPreference='Stop'`): powershell.exe writes it to stderr as
  CLIXML and exits 1, without printing anything on stdout;
- the bootstrap dot-sources the decoded library, then the decoded probe script; the script is
  recognised by its first line, `# probe: <name> v<N>`, and calls Invoke-Probe, which the library
  must have defined;
- the parameters travel as base64 JSON that the library decodes inside Invoke-Probe, so bad
  parameters are the probe's own error document (`{"probe": ..., "error": {...}}`), exit code 0.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

PROBE_LINE = re.compile(r"# probe: ([a-z][a-z0-9-]*) v([0-9]+)[ \t]*")
FUNCTION = re.compile(r"^[ \t]*function[ \t]+([A-Za-z][\w-]*)", re.M | re.I)
# the bootstrap's two uses of the shell environment: the parameters' text, and the scripts it dot-sources
PARAMS_FROM = re.compile(r"\$CmsbotParams=\(& \$j '([A-Za-z0-9_]+)'\)")
SOURCES = re.compile(r"\. \(\[ScriptBlock\]::Create\(\(& \$d '([A-Za-z0-9_]+)'\)\)\)")
BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
WHITESPACE = re.compile(r"[ \t\r\n]")

BAD_BASE64 = ("The input is not a valid Base-64 string as it contains a non-base 64 character, more than two padding "
              "characters, or an illegal character among the padding characters. ")
BAD_LENGTH = "Invalid length for a Base-64 char array or string."


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


def _method_error(message: str) -> TerminatingError:
    return TerminatingError(f'Exception calling "FromBase64String" with "1" argument(s): "{message}"',
                            "NotSpecified: (:) [], MethodInvocationException", "FormatException")


def bootstrap_of(args: list[str]) -> str:
    """The PowerShell text of `-EncodedCommand <base64 of UTF-16LE>`."""
    try:
        encoded = args[args.index("-EncodedCommand") + 1]
        return base64.b64decode(encoded, validate=True).decode("utf-16-le")
    except (ValueError, IndexError, binascii.Error, UnicodeDecodeError):
        raise NotABootstrap("-EncodedCommand bootstrap expected") from None


def run(args: list[str], env: dict[str, str]) -> Invocation:
    """Run the bootstrap of `args` against the shell environment `env`, as far as the lab can:
    up to the probe it invokes. Raises NotABootstrap, UnknownScript or TerminatingError."""
    bootstrap = bootstrap_of(args)
    sources = SOURCES.findall(bootstrap)
    if not sources:
        raise NotABootstrap("the bootstrap dot-sources no script from the environment")
    params_from = PARAMS_FROM.search(bootstrap)
    params_text = environment_value(env, params_from.group(1)) if params_from else ""
    defined: set[str] = set()
    invocation = Invocation(probe=None)
    for name in sources:  # in order: the library, then the probe
        try:
            script = from_base64(environment_value(env, name)).decode("utf-8", errors="replace")
        except ValueError as e:
            raise _method_error(str(e)) from None
        script = script.lstrip("\ufeff")
        first = script.splitlines()[0] if script else ""
        header = PROBE_LINE.fullmatch(first)
        if header is None:
            if script and not first.startswith("# probe-lib:"):
                raise UnknownScript(first[:80])
            defined |= {f.lower() for f in FUNCTION.findall(script)}
            continue
        if "invoke-probe" not in defined:
            raise TerminatingError(
                "Invoke-Probe : The term 'Invoke-Probe' is not recognized as the name of a cmdlet, function, script "
                "file, or operable program. Check the spelling of the name, or if a path was included, verify that "
                "the path is correct and try again.",
                "ObjectNotFound: (Invoke-Probe:String) [], CommandNotFoundException", "CommandNotFoundException")
        invocation = Invocation(probe=header.group(1), version=int(header.group(2)), header=first)
        _read_params(invocation, params_text)
    return invocation


def _read_params(invocation: Invocation, text: str) -> None:
    """Get-ProbeParams, run by Invoke-Probe inside its try: an error becomes the probe's error document."""
    if not text:
        return
    try:
        raw = from_base64(text).decode("utf-8", errors="replace")
    except ValueError as e:
        invocation.params_error = f'Exception calling "FromBase64String" with "1" argument(s): "{e}"'
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
