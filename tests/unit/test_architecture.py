"""The boundaries of docs/architecture.md, kept by tests: which package may import which, what
importing a package loads, and that only hub/ names a Redis key."""

from __future__ import annotations

import ast
import json
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("cms", "hub", "workers", "bot", "lab")
# who may import whom (first-party only); bench may use everything but tests
ALLOWED = {
    "cms": set(),
    "hub": {"cms"},
    "workers": {"cms", "hub"},
    "bot": {"cms", "hub"},
    "lab": {"cms"},
    "bench": {"cms", "hub", "bot", "lab"},
}
# bot/cli.py is the one command line of every process: it may start a worker or the lab,
# importing them inside the subcommands that run them, never at module level
ENTRY_POINT_EXCEPTIONS = {"bot/cli.py": {"workers", "lab"}}


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level) for every first-party import of a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found += [(n, id(node) in top) for n in names if n.split(".")[0] in (*PACKAGES, "bench", "tests")]
    return found


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


@pytest.mark.parametrize("package", [*PACKAGES, "bench"])
def test_dependencies_point_one_way(package):
    wrong = []
    for path in _sources(package):
        rel = str(path.relative_to(ROOT))
        for name, top_level in _imports(path):
            target = name.split(".")[0]
            if target == package:
                continue
            if target in ENTRY_POINT_EXCEPTIONS.get(rel, set()) and not top_level:
                continue
            if target not in ALLOWED[package]:
                wrong.append(f"{rel} imports {name}")
    assert not wrong, "\n".join(sorted(set(wrong)))


def _loaded_after_import(modules: list[str]) -> set[str]:
    code = ("import importlib, json, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted({k.split('.')[0] for k in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout))


def _all_modules(package: str) -> list[str]:
    return [package] + [m.name for m in pkgutil.walk_packages([str(ROOT / package)], prefix=f"{package}.")]


def test_the_core_loads_no_io_library():
    loaded = _loaded_after_import(_all_modules("cms"))
    assert not loaded & {"redis", "rq", "winrm", "slack_sdk", "slack_bolt", "requests", "urllib3"}


def test_the_hub_loads_no_transport_and_no_slack():
    loaded = _loaded_after_import(_all_modules("hub"))
    assert "redis" in loaded  # it is the owner of Redis: the check below would mean nothing otherwise
    assert not loaded & {"winrm", "slack_sdk", "slack_bolt"}


@pytest.mark.parametrize("package", ["bot", "lab"])
def test_the_bot_and_the_lab_never_load_pywinrm(package):
    loaded = _loaded_after_import(_all_modules(package))
    assert "winrm" not in loaded


KEY = re.compile(r"\bcmsbot:[a-z{]")  # "cmsbot:lock:cms", f"cmsbot:{x}"; not "cmsbot: error"


def _key_literals(path: Path) -> list[str]:
    """String literals (plain or parts of f-strings) that spell a cmsbot Redis key."""
    return [f"{path.name}:{node.lineno}: {node.value[:60]!r}"
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and KEY.search(node.value)]


def test_only_the_hub_names_a_redis_key():
    hits = [h for package in ("cms", "workers", "bot", "lab", "bench") for path in _sources(package)
            for h in _key_literals(path)]
    assert not hits, "\n".join(hits)


def test_the_key_check_finds_a_hand_built_key(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('LOCK = "cmsbot:lock:cms"\nprint("cmsbot: cannot connect")\n'
                      'def k(i):\n    return f"cmsbot:request:{i}"\n')
    assert [h.split(": ", 1)[0] for h in _key_literals(sample)] == ["sample.py:1", "sample.py:4"]


def test_every_package_is_a_typed_regular_package():
    for package in PACKAGES:
        folders = {p.parent for p in (ROOT / package).rglob("*.py")}
        missing = sorted(str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").exists())
        assert not missing, f"no __init__.py in {missing}"
        assert (ROOT / package / "py.typed").exists(), f"{package}/py.typed"
