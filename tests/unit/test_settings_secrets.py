"""Secrets never leak: not in repr, check-config, argv or the build-info hash (issue 15)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from metering.settings import Settings, SettingsError, load_settings, parse_bool

SECRET = "s3cr3t-Pa55word"


def test_repr_and_masked_hide_the_password() -> None:
    settings = load_settings(env={"METERING_SASL_PASSWORD": SECRET})
    assert settings.sasl_password == SECRET
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings)
    assert SECRET not in json.dumps(settings.masked())
    assert settings.masked()["sasl_password"] == "********"


def test_password_from_a_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "sasl"
    secret_file.write_text(SECRET + "\n")
    settings = load_settings(env={"METERING_SASL_PASSWORD_FILE": str(secret_file)})
    assert settings.sasl_password == SECRET


def test_unreadable_password_file_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(env={"METERING_SASL_PASSWORD_FILE": str(tmp_path / "missing")})
    assert "sasl_password_file" in str(err.value)


def test_no_command_line_flag_takes_the_password() -> None:
    """A flag would show the password in `ps`; only the environment or a file take it."""
    help_text = subprocess.run(
        [sys.executable, "-m", "agents", "check-config", "--help"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert "--sasl-password " not in help_text
    assert "--sasl-password\n" not in help_text
    assert "--sasl-password-file" in help_text
    refused = subprocess.run(
        [sys.executable, "-m", "agents", "check-config", "--sasl-password", SECRET],
        capture_output=True, text=True,
    )
    assert refused.returncode == 2


def test_check_config_masks_the_password() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "agents", "check-config"], capture_output=True, text=True,
        check=True, env={**os.environ, "METERING_SASL_PASSWORD": SECRET},
    )
    assert SECRET not in out.stdout + out.stderr
    assert '"sasl_password": "********"' in out.stdout


def test_fingerprint_does_not_depend_on_the_password_text() -> None:
    a = Settings(sasl_password="one")
    b = Settings(sasl_password="two")
    assert a.fingerprint() == b.fingerprint()


@pytest.mark.parametrize(("raw", "value"), [("true", True), ("YES", True), ("1", True),
                                            ("off", False), ("0", False), ("False", False)])
def test_booleans(raw: str, value: bool) -> None:
    assert parse_bool(raw) is value
    assert load_settings(env={"METERING_FORCE_PERIOD_CHANGE": raw}).force_period_change is value


def test_bad_boolean_is_named() -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(env={"METERING_FORCE_PERIOD_CHANGE": "maybe"})
    assert "METERING_FORCE_PERIOD_CHANGE" in str(err.value)
