"""Probe catalogue and the probe runner's wire format.

A probe is `workers/probes/<name>.ps1` whose first line is `# probe: <name> v<N>`.
Script and parameters travel through the WinRM shell's environment as base64
(never spliced into script text, never on the command line, so no probe is
bound by the 8191-character command line). The command itself is a fixed,
short bootstrap passed with -EncodedCommand that decodes and runs them.
"""

from __future__ import annotations

import base64
import html
import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from workers.transport.winrm import Output, ProbeFailed

HEADER = re.compile(r"^# probe: (?P<name>[a-z][a-z0-9-]*) v(?P<version>\d+)\s*$")
LIB_NAME = "_lib"
LIB_VAR = "CMSBOT_PROBE_LIB"
POWERSHELL = "powershell.exe"
# Windows caps one environment variable at 32,767 characters: every value travels in
# chunks NAME_0, NAME_1, ... that the bootstrap joins (parameters grow with the deployment).
ENV_CHUNK = 30_000


@dataclass(frozen=True)
class Probe:
    name: str
    version: int
    script: str

    @property
    def slot(self) -> str:
        return self.name.upper().replace("-", "_")

    @property
    def script_var(self) -> str:
        return f"CMSBOT_SCRIPT_{self.slot}"

    @property
    def params_var(self) -> str:
        return f"CMSBOT_PARAMS_{self.slot}"


def _read(name: str) -> str:
    return resources.files(__package__).joinpath(f"{name}.ps1").read_text(encoding="utf-8")


@cache
def probe(name: str) -> Probe:
    script = _read(name)
    m = HEADER.match(script.splitlines()[0] if script else "")
    if not m or m["name"] != name:
        raise ValueError(f"{name}.ps1 must start with '# probe: {name} v<N>'")
    return Probe(name=name, version=int(m["version"]), script=script)


def names() -> list[str]:
    files = resources.files(__package__).iterdir()
    return sorted(f.name[:-4] for f in files if f.name.endswith(".ps1") and not f.name.startswith("_"))


@cache
def library() -> str:
    return _read(LIB_NAME)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _chunked(env: dict[str, str], name: str, value: str) -> None:
    for i in range(0, max(len(value), 1), ENV_CHUNK):
        env[f"{name}_{i // ENV_CHUNK}"] = value[i:i + ENV_CHUNK]


def joined(env: dict[str, str], name: str) -> str:
    """The value `_chunked` stored under `name` (what the bootstrap does, for the lab)."""
    parts, i = [], 0
    while f"{name}_{i}" in env:
        parts.append(env[f"{name}_{i}"])
        i += 1
    return "".join(parts)


def shell_env(calls: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Environment for one shell that can run each named probe with its parameters."""
    env: dict[str, str] = {}
    _chunked(env, LIB_VAR, _b64(library()))
    for name, params in calls.items():
        p = probe(name)
        _chunked(env, p.script_var, _b64(p.script))
        _chunked(env, p.params_var, _b64(json.dumps(params, sort_keys=True)))
    return env


def command(name: str) -> tuple[str, list[str]]:
    """The fixed bootstrap that runs probe `name` from the shell environment."""
    p = probe(name)
    bootstrap = (
        "$ErrorActionPreference='Stop';"
        "[Console]::OutputEncoding=New-Object System.Text.UTF8Encoding $false;"
        "$j={param($n)$p='';$i=0;"
        "while($null -ne($c=[Environment]::GetEnvironmentVariable(\"${n}_$i\"))){$p+=$c;$i++};$p};"
        "$d={param($n)[Text.Encoding]::UTF8.GetString([Convert]::FromBase64String((& $j $n)))};"
        f"$CmsbotParams=(& $j '{p.params_var}');"
        f". ([ScriptBlock]::Create((& $d '{LIB_VAR}')));"
        f". ([ScriptBlock]::Create((& $d '{p.script_var}')))"
    )
    encoded = base64.b64encode(bootstrap.encode("utf-16-le")).decode("ascii")
    return POWERSHELL, ["-NoLogo", "-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass",
                        "-EncodedCommand", encoded]


def decode(name: str, out: Output) -> Any:
    """The probe's `data`, or ProbeFailed with the most useful reason we have."""
    try:
        text = out.stdout.decode("utf-8")
    except UnicodeDecodeError:
        raise ProbeFailed(f"{name}: output is not UTF-8 (the shell ignored code page 65001)") from None
    doc = _json_document(text)
    if doc is None:
        detail = clixml_errors(out.stderr) or (f"exit code {out.exit_code}" if out.exit_code else "no output")
        raise ProbeFailed(f"{name}: no JSON result ({detail})")
    if doc.get("probe") != name:
        raise ProbeFailed(f"{name}: answered for probe {doc.get('probe')!r}")
    if "error" in doc and doc["error"]:
        err = doc["error"]
        message = err.get("message") if isinstance(err, dict) else str(err)
        raise ProbeFailed(f"{name}: {message}")
    if "data" not in doc:
        raise ProbeFailed(f"{name}: result has no data")
    return doc["data"]


def _json_document(text: str) -> dict[str, Any] | None:
    text = text.strip().lstrip("\ufeff")
    candidates = [text] + [line for line in reversed(text.splitlines()) if line.lstrip().startswith("{")]
    for c in candidates:
        try:
            doc = json.loads(c)
        except ValueError:
            continue
        if isinstance(doc, dict):
            return doc
    return None


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
