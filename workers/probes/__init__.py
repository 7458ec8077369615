"""Probe catalogue, the shell environment that runs probes, and the decoding of their answers.

A probe is `workers/probes/<name>.ps1` whose first line is `# probe: <name> v<N>`.
Script and parameters travel through the WinRM shell's environment as base64
(never spliced into script text, never on the command line, so no probe is
bound by the 8191-character command line). The command itself is a fixed,
short bootstrap passed with -EncodedCommand that decodes and runs them. The
format itself is in `workers.probes.wire` (no pywinrm); importing this package
does not load pywinrm either.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from cms.ps_json import clip
from workers.probes import wire
from workers.probes.wire import ENV_CHUNK, HEADER, LIB_VAR, POWERSHELL, joined

if TYPE_CHECKING:
    from workers.transport.winrm import Output

__all__ = ["ENV_CHUNK", "HEADER", "LIB_VAR", "POWERSHELL", "Probe", "clixml_errors", "command", "decode", "joined",
           "library", "names", "probe", "shell_env"]

LIB_NAME = "_lib"
MAX_ERROR = 1000  # characters of a probe's own error message kept (the rest is cut, and says so)


# Invoke-Probe's -PowerShell: the oldest Windows PowerShell the probe runs on (default 2.0, the
# Lync Server 2010 host); an older host answers an error naming both versions (_lib.ps1).
# `# deadline: <N> s (why)` right under the header: how long the probe may take on a real host,
# loading the Lync/SkypeForBusiness module included (several seconds on a busy Front End).
DEADLINE = re.compile(r"^# deadline: (?P<seconds>\d+) s\b", re.M)
MINIMUM_POWERSHELL = re.compile(r"^Invoke-Probe\b.*?-PowerShell\s+'(?P<version>\d+\.\d+)'", re.M)


@dataclass(frozen=True)
class Probe:
    name: str
    version: int
    script: str
    powershell: str = "2.0"  # the oldest Windows PowerShell it runs on
    deadline: float = 30.0  # seconds on a real host, module load included (its header says why)

    @property
    def slot(self) -> str:
        return wire.slot(self.name)

    @property
    def script_var(self) -> str:
        return wire.script_var(self.name)

    @property
    def params_var(self) -> str:
        return wire.params_var(self.name)


def _read(name: str) -> str:
    return resources.files(__package__).joinpath(f"{name}.ps1").read_text(encoding="utf-8")


@cache
def probe(name: str) -> Probe:
    script = _read(name)
    m = HEADER.match(script.splitlines()[0] if script else "")
    if not m or m["name"] != name:
        raise ValueError(f"{name}.ps1 must start with '# probe: {name} v<N>'")
    needs = MINIMUM_POWERSHELL.search(script)
    deadline = DEADLINE.search("\n".join(script.splitlines()[:3]))
    if not deadline:
        raise ValueError(f"{name}.ps1 must say how long it may take on its second line: '# deadline: <N> s (why)'")
    return Probe(name=name, version=int(m["version"]), script=script, powershell=needs["version"] if needs else "2.0",
                 deadline=float(deadline["seconds"]))


def names() -> list[str]:
    files = resources.files(__package__).iterdir()
    return sorted(f.name[:-4] for f in files if f.name.endswith(".ps1") and not f.name.startswith("_"))


@cache
def library() -> str:
    return _read(LIB_NAME)


def shell_env(calls: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Environment for one shell that can run each named probe with its parameters."""
    return wire.environment(library(), {name: (probe(name).script, json.dumps(params, sort_keys=True))
                                        for name, params in calls.items()})


def command(*names: str) -> tuple[str, list[str]]:
    """The fixed bootstrap that runs the probes `names`, in order, from the shell environment."""
    return wire.command_line(*(probe(name).name for name in names))


def decode(name: str, out: Output) -> Any:
    """The probe's `data`, or ProbeFailed with the most useful reason we have."""
    from workers.transport.winrm import ProbeFailed  # here: the catalogue and the wire format load no pywinrm

    try:
        text = out.stdout.decode("utf-8")
    except UnicodeDecodeError:
        raise ProbeFailed(f"{name}: output is not UTF-8 (the shell ignored code page 65001)") from None
    doc = _json_document(text, name)
    if doc is None:
        detail = clixml_errors(out.stderr) or (f"exit code {out.exit_code}" if out.exit_code else "no output")
        raise ProbeFailed(f"{name}: no JSON result ({detail})")
    if doc.get("probe") != name:
        raise ProbeFailed(f"{name}: answered for probe {doc.get('probe')!r}")
    if "error" in doc and doc["error"]:
        err = doc["error"]
        message = err.get("message") if isinstance(err, dict) else str(err)
        raise ProbeFailed(f"{name}: {clip(str(message), MAX_ERROR)}")
    # "ps" (the host's Windows PowerShell) and data.NotReported (cmdlet properties this product
    # version lacks, their fields null) are part of every answer of the 2.0-compatible writer
    # (_lib.ps1); the parsers read NotReported from the data.
    if "data" not in doc:
        raise ProbeFailed(f"{name}: result has no data")
    return doc["data"]


def answered(name: str, out: Output) -> bool:
    """Whether `out` holds a JSON line answering for probe `name` (of a command that ran several)."""
    doc = _json_document(out.stdout.decode("utf-8", errors="replace"), name)
    return doc is not None and doc.get("probe") == name


def _json_document(text: str, name: str) -> dict[str, Any] | None:
    """Probe `name`'s answer: the output as one JSON object, or its last line that is one and answers for
    `name` (a command that ran several probes prints one line each), or else the last object at all."""
    text = text.strip().lstrip("\ufeff")
    found: list[dict[str, Any]] = []
    for c in [text] + [line for line in reversed(text.splitlines()) if line.lstrip().startswith("{")]:
        try:
            doc = json.loads(c)
        except ValueError:
            continue
        if isinstance(doc, dict):
            if doc.get("probe") == name:
                return doc
            found.append(doc)
    return found[0] if found else None


_CLIXML_ERROR = re.compile(r'<S S="Error">(.*?)</S>', re.S)
_CLIXML_ESCAPE = re.compile(r"_x([0-9A-Fa-f]{4})_")


def _clixml_text(raw: str) -> str:
    """CLIXML string -> text: XML entities, then its _xHHHH_ character escapes."""
    text = _CLIXML_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), html.unescape(raw))
    return " ".join(text.split())


def clixml_errors(stderr: bytes) -> str:
    """The error lines of a PowerShell CLIXML stderr stream, as plain text."""
    text = stderr.decode("utf-8", errors="replace")
    if "#< CLIXML" not in text:
        return text.strip()[:300]
    parts = [_clixml_text(p) for p in _CLIXML_ERROR.findall(text)]
    return " ".join(p for p in parts if p)[:300]
