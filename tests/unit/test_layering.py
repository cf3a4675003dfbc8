"""The layers: ``metering/`` is the pure core, ``storage/`` the Parquet side, ``agents/`` the edge.

* the core imports no faust, Kafka client, RocksDB binding, argparse, pyarrow, pandas,
  ``storage`` or ``agents``, and never writes to stdout or stderr;
* storage imports no argparse, faust, Kafka client, RocksDB binding or ``agents``, and
  never writes to stdout or stderr either (the command line in ``agents.cli`` does).

Each check is also run on planted examples, to show it can fail.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "metering"
STORAGE = ROOT / "storage"
FORBIDDEN = ("faust", "mode", "aiokafka", "kafka", "confluent_kafka", "rocksdict", "agents")
"""Never imported by the core (nor by storage)."""
CORE_FORBIDDEN = (*FORBIDDEN, "argparse", "pyarrow", "pandas", "storage")
"""Also not imported by the core: command lines, Arrow/pandas and the storage layer."""
STORAGE_FORBIDDEN = (*FORBIDDEN, "argparse")
CORE_FILES = sorted(CORE.rglob("*.py"))
STORAGE_FILES = sorted(STORAGE.rglob("*.py"))


def imported_modules(path: Path, root: Path = ROOT) -> list[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved).

    Covers ``import x``, ``from x import y``, relative imports (resolved against the file's
    package under ``root``), and literal ``__import__("x")`` / ``import_module("x")`` calls,
    at any depth (inside functions and ``if`` blocks too).
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    package = path.relative_to(root).parts[:-1]  # the package holding the file
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                if node.level > len(package):
                    base = ["<beyond-top-level>"]
                prefix = ".".join(base)
                if node.module:
                    names.append(f"{prefix}.{node.module}" if prefix else node.module)
                else:
                    names += [f"{prefix}.{a.name}" if prefix else a.name for a in node.names]
            elif node.module:
                names.append(node.module)
        elif isinstance(node, ast.Call):
            func = node.func
            called = getattr(func, "id", None) or getattr(func, "attr", None)
            if called in ("__import__", "import_module"):
                names += [
                    a.value
                    for a in node.args[:1]
                    if isinstance(a, ast.Constant) and isinstance(a.value, str)
                ]
    return names


def forbidden(names: list[str], roots: tuple[str, ...] = FORBIDDEN) -> list[str]:
    return [n for n in names if n.split(".")[0] in roots]


_STREAMS = frozenset({"stdout", "stderr", "__stdout__", "__stderr__"})


def console_writes(path: Path) -> list[str]:
    """Every place ``path`` may write to the console: ``print(...)`` calls, any use of
    ``sys.stdout``/``sys.stderr`` (also as ``sys.__stdout__``, or imported from ``sys``);
    each as ``line: what``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id == "print":
            found.append(f"{node.lineno}: print(")
        elif isinstance(node, ast.Attribute) and node.attr in _STREAMS \
                and isinstance(node.value, ast.Name) and node.value.id == "sys":
            found.append(f"{node.lineno}: sys.{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module == "sys":
            found += [f"{node.lineno}: from sys import {a.name}"
                      for a in node.names if a.name in _STREAMS]
    return found


def test_the_core_has_modules_to_check() -> None:
    names = {p.name for p in CORE_FILES}
    assert {"decode.py", "engine.py", "lifecycle.py", "codec.py"} <= names
    assert (ROOT / "storage" / "replay.py").is_file()  # the batch runner moved out of the core


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(CORE)))
def test_core_module_imports_nothing_of_the_edge(path: Path) -> None:
    bad = forbidden(imported_modules(path), CORE_FORBIDDEN)
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(CORE)))
def test_core_module_writes_nothing_to_the_console(path: Path) -> None:
    found = console_writes(path)
    assert not found, f"{path.relative_to(ROOT)} writes to stdout/stderr at {found}"


def test_storage_has_modules_to_check() -> None:
    names = {p.name for p in STORAGE_FILES}
    assert {"dataset.py", "parts.py", "replay.py", "archive.py", "compact.py",
            "report.py"} <= names


@pytest.mark.parametrize("path", STORAGE_FILES, ids=lambda p: str(p.relative_to(STORAGE)))
def test_storage_module_imports_no_command_line_and_no_streaming(path: Path) -> None:
    bad = forbidden(imported_modules(path), STORAGE_FORBIDDEN)
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize("path", STORAGE_FILES, ids=lambda p: str(p.relative_to(STORAGE)))
def test_storage_module_writes_nothing_to_the_console(path: Path) -> None:
    found = console_writes(path)
    assert not found, f"{path.relative_to(ROOT)} writes to stdout/stderr at {found}"


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(CORE)))
def test_core_relative_imports_stay_inside_metering(path: Path) -> None:
    for name in imported_modules(path):
        assert not name.startswith("<beyond-top-level>"), f"{path} imports {name}"


@pytest.mark.parametrize(
    ("source", "caught"),
    [
        ("import faust", ["faust"]),
        ("import aiokafka.errors as e", ["aiokafka.errors"]),
        ("from kafka import KafkaProducer", ["kafka"]),
        ("from mode import Service", ["mode"]),
        ("from rocksdict import Rdict", ["rocksdict"]),
        ("from agents.app import app", ["agents.app"]),
        ("import agents", ["agents"]),
        ("if True:\n    import faust.web", ["faust.web"]),
        ("def f():\n    from agents import cli", ["agents"]),
        ("__import__('rocksdict')", ["rocksdict"]),
        ("import importlib\nimportlib.import_module('faust')", ["faust"]),
        ("from metering.events import Source\nimport orjson\nimport modelling", []),
        ("from . import events", []),
    ],
)
def test_the_import_walker_catches_edge_imports(
    tmp_path: Path, source: str, caught: list[str]
) -> None:
    fake = tmp_path / "metering" / "fake.py"
    fake.parent.mkdir()
    fake.write_text(source + "\n")
    assert forbidden(imported_modules(fake, tmp_path)) == caught


@pytest.mark.parametrize(
    ("source", "core", "storage"),
    [
        ("import argparse", ["argparse"], ["argparse"]),
        ("import pyarrow.parquet as pq", ["pyarrow.parquet"], []),
        ("def f():\n    import pandas as pd", ["pandas"], []),
        ("from storage.dataset import to_table", ["storage.dataset"], []),
        ("from agents.cli.exits import fail", ["agents.cli.exits"], ["agents.cli.exits"]),
        ("import aiokafka", ["aiokafka"], ["aiokafka"]),
        ("from metering.events import Source\nimport orjson", [], []),
    ],
)
def test_the_layer_lists_catch_planted_imports(
    tmp_path: Path, source: str, core: list[str], storage: list[str]
) -> None:
    fake = tmp_path / "metering" / "fake.py"
    fake.parent.mkdir()
    fake.write_text(source + "\n")
    names = imported_modules(fake, tmp_path)
    assert forbidden(names, CORE_FORBIDDEN) == core
    assert forbidden(names, STORAGE_FORBIDDEN) == storage


@pytest.mark.parametrize(
    ("source", "caught"),
    [
        ("print('hello')", ["1: print("]),
        ("def f():\n    print(1, file=None)", ["2: print("]),
        ("import sys\nsys.stderr.write('x')", ["2: sys.stderr"]),
        ("import sys\nout = sys.stdout", ["2: sys.stdout"]),
        ("import sys\nsys.__stderr__.flush()", ["2: sys.__stderr__"]),
        ("from sys import stderr", ["1: from sys import stderr"]),
        ("import sys\ndata = sys.stdin.buffer.read()", []),
        ("log = print_table = None\nlog.print('x')", []),
    ],
)
def test_the_console_check_catches_planted_writes(
    tmp_path: Path, source: str, caught: list[str]
) -> None:
    fake = tmp_path / "fake.py"
    fake.write_text(source + "\n")
    assert console_writes(fake) == caught


def test_relative_imports_are_resolved(tmp_path: Path) -> None:
    fake = tmp_path / "metering" / "sub" / "fake.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("from . import a\nfrom ..events import Source\nfrom ... import agents\n")
    assert imported_modules(fake, tmp_path) == [
        "metering.sub.a",
        "metering.events",
        "<beyond-top-level>.agents",
    ]


def test_importing_every_core_module_loads_no_edge_package() -> None:
    code = (
        "import importlib, pkgutil, sys\n"
        "import metering\n"
        "for m in pkgutil.walk_packages(metering.__path__, 'metering.'):\n"
        "    importlib.import_module(m.name)\n"
        f"bad = sorted(n for n in sys.modules if n.split('.')[0] in {CORE_FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"importing metering loads {done.stdout.strip()}"


def test_the_core_parses_no_command_line() -> None:
    """Argument parsing, exit codes and printing live at the edge (agents/), not in the core."""
    offenders = {str(p.relative_to(ROOT)): n for p in CORE_FILES
                 for n in imported_modules(p) if n.split(".")[0] == "argparse"}
    assert not offenders, offenders


def test_importing_every_storage_module_loads_no_edge_package() -> None:
    code = (
        "import importlib, pkgutil, sys\n"
        "import storage\n"
        "for m in pkgutil.walk_packages(storage.__path__, 'storage.'):\n"
        "    importlib.import_module(m.name)\n"
        f"bad = sorted(n for n in sys.modules if n.split('.')[0] in {STORAGE_FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"importing storage loads {done.stdout.strip()}"
