"""The ``metering`` command line: help, version, exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest

import metering
from agents.cli import main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert metering.__version__ in capsys.readouterr().out


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: metering" in capsys.readouterr().out


def test_unknown_command_exits_2() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2


def test_console_script_help_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "agents", "--help"], capture_output=True, text=True, check=True
    )
    assert "Exit codes" in out.stdout


def test_readme_configuration_table_lists_every_setting() -> None:
    from dataclasses import fields
    from pathlib import Path

    from metering.settings import Settings

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    missing = [f.name for f in fields(Settings) if f"`METERING_{f.name.upper()}`" not in readme]
    assert not missing, f"README configuration table lacks {missing}"
