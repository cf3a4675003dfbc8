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


HEAVY = ("pyarrow", "pandas", "faust", "aiokafka", "numpy", "matplotlib")


def _modules_loaded_by(argv: list[str]) -> set[str]:
    """Heavy top-level packages imported by ``metering ARGV`` (run in a fresh interpreter)."""
    code = (
        "import sys\n"
        "from agents.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(','.join(sorted(m for m in {HEAVY!r} if m in sys.modules)), file=sys.stderr)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    last = run.stderr.strip().splitlines()[-1] if run.stderr.strip() else ""
    return set(filter(None, last.split(",")))


def test_top_level_help_imports_no_subcommand_module() -> None:
    """`metering --help` draws from the command table alone (issue 16: it took 1.3 s)."""
    assert _modules_loaded_by(["--help"]) == set()
    assert _modules_loaded_by(["--version"]) == set()


def test_command_table_matches_what_modules_register() -> None:
    from agents.cli import COMMANDS, build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    registered = {c.dest: c.help for c in sub._choices_actions}
    assert registered == {name: help_line for name, (_m, help_line) in COMMANDS.items()}


def test_every_subcommand_help_works_alone() -> None:
    """`metering CMD --help` builds a parser with only CMD's module (and stubs for others)."""
    from agents.cli import COMMANDS, main

    for name in COMMANDS:
        with pytest.raises(SystemExit) as done:
            main([name, "--help"])
        assert done.value.code == 0, name


@pytest.mark.parametrize("command", ["replay", "compact", "report", "simulate", "worker",
                                     "archive", "check-config", "demo", "kafka"])
def test_subcommand_help_loads_no_heavy_library(command: str) -> None:
    """`metering CMD --help` stays fast: pyarrow, pandas and faust load only when a command
    runs (issue 16: building the parser loaded pyarrow and pandas, 1.3 s)."""
    assert _modules_loaded_by([command, "--help"]) == set()


def test_python_m_agents_help_imports_no_heavy_library() -> None:
    """``python -m agents --help`` (what the ``metering`` script runs) loads none of pyarrow,
    pandas, faust, aiokafka: heavy imports happen only in the subcommand that needs them."""
    code = (
        "import runpy, sys\n"
        "sys.argv = ['agents', '--help']\n"
        "try:\n"
        "    runpy.run_module('agents', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        "heavy = ('pyarrow', 'pandas', 'faust', 'aiokafka', 'storage.dataset')\n"
        "print(','.join(sorted(m for m in heavy if m in sys.modules)), file=sys.stderr)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert "usage: metering" in run.stdout
    assert run.stderr.strip() == "", f"metering --help loaded {run.stderr.strip()}"
