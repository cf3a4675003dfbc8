"""One exception root: every project exception is a MeteringError, drawn in its docstring, and
the command line maps them to exit codes in one table."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from agents.cli import main
from agents.cli.exits import (
    EXIT_CODES,
    EXIT_FAILED,
    EXIT_INPUT,
    EXIT_OUTPUT,
    EXIT_USAGE,
    exit_code,
)
from agents.errors import BrokerError, BrokerStartError, JarsUnavailableError, PreflightError
from metering.errors import MeteringError, SettingsError
from storage.errors import InputError, LockedError, LockHeldError, OpenDayError, OutputError

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("metering", "storage", "agents")
_BUILTIN_BASES = frozenset({"Exception", "BaseException", "ValueError", "RuntimeError",
                            "OSError", "KeyError", "TypeError", "LookupError"})


def exception_classes(path: Path, known: set[str]) -> list[str]:
    """Names of the classes defined in ``path`` that derive from a built-in exception or
    from a class named in ``known`` (or whose base's name ends in Error/Exception)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        bases = [getattr(b, "id", None) or getattr(b, "attr", "") for b in node.bases]
        if any(b in _BUILTIN_BASES or b in known or b.endswith(("Error", "Exception"))
               for b in bases):
            found.append(node.name)
    return found


def project_exceptions() -> dict[str, list[str]]:
    """Module name -> the exception classes it defines, over metering/, storage/, agents/."""
    known = {"MeteringError", "StorageError", "AgentError", "BrokerError"}
    out: dict[str, list[str]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            names = exception_classes(path, known)
            if names:
                module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
                out[module] = names
    return out


def test_the_finder_catches_planted_exception_classes(tmp_path: Path) -> None:
    fake = tmp_path / "fake.py"
    fake.write_text("class A(ValueError): pass\nclass B(A): pass\nclass C: pass\n"
                    "class D(errors.MeteringError): pass\nclass E(Exception): pass\n")
    assert exception_classes(fake, {"A"}) == ["A", "B", "D", "E"]


def test_there_are_exceptions_to_check() -> None:
    found = project_exceptions()
    assert {"metering.errors", "storage.errors", "agents.errors"} <= set(found)


def test_every_project_exception_derives_from_metering_error() -> None:
    for module_name, names in project_exceptions().items():
        module = importlib.import_module(module_name)
        for name in names:
            cls = getattr(module, name)
            assert issubclass(cls, MeteringError), f"{module_name}.{name}"


def test_the_root_docstring_draws_every_exception() -> None:
    tree = MeteringError.__doc__ or ""
    for module_name, names in project_exceptions().items():
        for name in names:
            assert f" {name}" in tree, f"{module_name}.{name} is missing from the tree"


def test_callers_can_still_catch_the_builtin_bases() -> None:
    assert issubclass(SettingsError, ValueError)
    assert issubclass(OpenDayError, ValueError)
    assert issubclass(BrokerError, RuntimeError)
    from metering.codec import StateDecodeError
    from metering.wire import WireError

    assert issubclass(StateDecodeError, ValueError)
    assert issubclass(WireError, ValueError)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InputError("x"), EXIT_INPUT),
        (OutputError("x"), EXIT_OUTPUT),
        (OpenDayError("x"), EXIT_USAGE),
        (SettingsError(["x"]), EXIT_USAGE),
        (LockedError("x"), EXIT_FAILED),
        (LockHeldError(Path("l"), "pid 1"), EXIT_FAILED),
        (JarsUnavailableError("x"), EXIT_FAILED),  # by its parent BrokerError
        (BrokerStartError("x"), EXIT_FAILED),
        (PreflightError(2, "refused"), 2),  # carries its own code
        (PreflightError(1, "unreachable"), 1),
        (MeteringError("x"), EXIT_FAILED),
    ],
)
def test_exit_code_of_each_error(error: MeteringError, code: int) -> None:
    assert exit_code(error) == code


def test_a_subclass_without_an_entry_takes_its_parents_code() -> None:
    class Unreadable(InputError):
        pass

    assert Unreadable not in EXIT_CODES
    assert exit_code(Unreadable("x")) == EXIT_INPUT


def test_main_maps_an_error_a_command_left_unhandled(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from agents.cli import kafka

    def broken(_args: object) -> int:
        raise OutputError("disk full")

    monkeypatch.setattr(kafka, "run", broken)
    assert main(["kafka", "status"]) == EXIT_OUTPUT
    assert capsys.readouterr().err == "metering kafka: disk full\n"
