"""The probe wire format: how a probe's script and parameters reach the host.

Standard library only (no pywinrm), so anything that needs the format can import it.

- The shell's environment carries, each packed (UTF-8 text, gzip-compressed as RFC 1952, then
  base64), the shared library (`CMSBOT_PROBE_LIB`), and per probe its script
  (`CMSBOT_SCRIPT_<SLOT>`) and its parameters as JSON (`CMSBOT_PARAMS_<SLOT>`); SLOT is the probe
  name upper-cased, '-' as '_'. Packing keeps the WS-Man Create request (and the host's echo of the
  environment in its response) small: about 38 KB for the CMS Front End of 1,000 servers instead
  of 219 KB, under the 150 KB MaxEnvelopeSizekb of older hosts. .NET 2.0's GZipStream unpacks it.
- Windows caps one environment variable at 32,767 characters, so every value travels in
  chunks NAME_0, NAME_1, ... of at most ENV_CHUNK characters; the reader joins them in order
  up to the first missing index. An empty value is one empty chunk NAME_0.
- The command is `powershell.exe ... -EncodedCommand <bootstrap>` (UTF-16LE, base64): a fixed
  bootstrap that joins the chunks, dot-sources the unpacked library, then the unpacked script,
  with the parameters (joined, still packed) in `$CmsbotParams` for the library to unpack. One
  command may run several probes in turn, each in a child scope (`& {...}`), each answer a line.
"""

from __future__ import annotations

import base64
import functools
import gzip
import re

HEADER = re.compile(r"^# probe: (?P<name>[a-z][a-z0-9-]*) v(?P<version>\d+)\s*$")
LIB_VAR = "CMSBOT_PROBE_LIB"
SCRIPT_PREFIX = "CMSBOT_SCRIPT_"
PARAMS_PREFIX = "CMSBOT_PARAMS_"
POWERSHELL = "powershell.exe"
# Windows caps one environment variable at 32,767 characters: every value travels in
# chunks NAME_0, NAME_1, ... that the bootstrap joins (parameters grow with the deployment).
ENV_CHUNK = 30_000


def slot(name: str) -> str:
    return name.upper().replace("-", "_")


def script_var(name: str) -> str:
    return SCRIPT_PREFIX + slot(name)


def params_var(name: str) -> str:
    return PARAMS_PREFIX + slot(name)


@functools.lru_cache(maxsize=512)
def packed(text: str) -> str:
    """UTF-8, gzip (mtime 0: the same text always packs the same), base64. Cached: a job packs the same
    library and scripts for every server, and compressing them was most of the client's CPU per server."""
    return base64.b64encode(gzip.compress(text.encode("utf-8"), mtime=0)).decode("ascii")


def chunked(env: dict[str, str], name: str, value: str) -> None:
    """Store `value` under `name` as the chunks NAME_0, NAME_1, ..."""
    for i in range(0, max(len(value), 1), ENV_CHUNK):
        env[f"{name}_{i // ENV_CHUNK}"] = value[i:i + ENV_CHUNK]


def joined(env: dict[str, str], name: str) -> str:
    """The value `chunked` stored under `name` (what the bootstrap does)."""
    parts, i = [], 0
    while f"{name}_{i}" in env:
        parts.append(env[f"{name}_{i}"])
        i += 1
    return "".join(parts)


def environment(library: str, probes: dict[str, tuple[str, str]]) -> dict[str, str]:
    """The shell environment for the library and each probe: name -> (script, parameters' JSON)."""
    env: dict[str, str] = {}
    chunked(env, LIB_VAR, packed(library))
    for name, (script, params_json) in probes.items():
        chunked(env, script_var(name), packed(script))
        chunked(env, params_var(name), packed(params_json))
    return env


PRELUDE = (
    "$ErrorActionPreference='Stop';"
    # The answer is plain ASCII (the probes' JSON writer escapes the rest), so UTF-8 output only
    # helps stray text; a host without a console refuses the setting, which must not stop the probe.
    "try{[Console]::OutputEncoding=New-Object System.Text.UTF8Encoding $false}catch{};"
    "$j={param($n)$p='';$i=0;"
    "while($null -ne($c=[Environment]::GetEnvironmentVariable(\"${n}_$i\"))){$p+=$c;$i++};$p};"
    "$d={param($n)$z=New-Object IO.Compression.GZipStream((New-Object IO.MemoryStream(,"
    "[Convert]::FromBase64String((& $j $n)))),([IO.Compression.CompressionMode]::Decompress));"
    "(New-Object IO.StreamReader($z,[Text.Encoding]::UTF8)).ReadToEnd()};"
)


def _runs(name: str) -> str:
    return (f"$CmsbotParams=(& $j '{params_var(name)}');"
            f". ([ScriptBlock]::Create((& $d '{LIB_VAR}')));"
            f". ([ScriptBlock]::Create((& $d '{script_var(name)}')))")


def bootstrap(*names: str) -> str:
    """The fixed PowerShell that runs the probes `names`, in order, from the shell environment. Several
    probes share one powershell.exe (one start, one module load on the host): each runs in a child scope
    of its own (`& {...}`), so nothing one defines is seen by the next, and each writes its own JSON line."""
    if len(names) == 1:
        return PRELUDE + _runs(names[0])
    return PRELUDE + ";".join(f"&{{{_runs(name)}}}" for name in names)


def command_line(*names: str) -> tuple[str, list[str]]:
    """Executable and arguments that run the probes `names`: the bootstrap, passed with -EncodedCommand."""
    encoded = base64.b64encode(bootstrap(*names).encode("utf-16-le")).decode("ascii")
    return POWERSHELL, ["-NoLogo", "-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass",
                        "-EncodedCommand", encoded]
