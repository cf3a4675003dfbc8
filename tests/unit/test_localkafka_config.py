"""Unit tests of the local broker's configuration rendering (no sockets, no JVM)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents import localkafka


def _parse(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line)


def test_render_is_single_node_kraft_on_loopback() -> None:
    props = _parse(
        localkafka.render_server_properties(
            client_port=19092, controller_port=19093, log_dir=Path("/tmp/k")
        )
    )
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["controller.listener.names"] == "CONTROLLER"
    assert props["log.dirs"] == "/tmp/k"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("offsets.topic.replication.factor", "1"),
        ("transaction.state.log.replication.factor", "1"),
        ("transaction.state.log.min.isr", "1"),
        ("default.replication.factor", "1"),
        ("group.initial.rebalance.delay.ms", "0"),
        ("auto.create.topics.enable", "false"),
    ],
)
def test_render_fast_single_node_settings(key: str, value: str) -> None:
    props = _parse(
        localkafka.render_server_properties(client_port=1, controller_port=2, log_dir="/x")
    )
    assert props[key] == value


def test_render_is_deterministic() -> None:
    kw = {"client_port": 5, "controller_port": 6, "log_dir": "/d"}
    assert localkafka.render_server_properties(**kw) == localkafka.render_server_properties(**kw)


def test_heap_is_at_most_one_gib() -> None:
    assert localkafka.DEFAULT_HEAP in {"512m", "768m", "1g"}


def test_jars_dir_honours_cache_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("METERING_CACHE_DIR", str(tmp_path))
    assert localkafka.jars_dir("9.9.9") == tmp_path / "kafka-9.9.9"


def test_missing_maven_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("METERING_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(localkafka.shutil, "which", lambda _name: None)
    with pytest.raises(localkafka.JarsUnavailableError, match="Maven"):
        localkafka.ensure_jars("0.0.1")


def test_pom_exists_and_pins_version() -> None:
    text = localkafka._POM.read_text()
    assert "kafka_2.13" in text
    assert f"<kafka.version>{localkafka.KAFKA_VERSION}</kafka.version>" in text


def test_cluster_id_starting_with_a_dash_is_attached_to_its_option(tmp_path: Path) -> None:
    """About one random id in 64 starts with '-'; as a separate argument the storage tool
    took it for an option and the broker failed to start (issue 16)."""
    cmd = localkafka.format_command(["-cp", "x"], "-Ab3_cdEfGhIjKlMnOpQrSt", tmp_path / "p")
    assert "--cluster-id=-Ab3_cdEfGhIjKlMnOpQrSt" in cmd
    assert "-t" not in cmd
    assert "--cluster-id" not in cmd
    ids = {localkafka.new_cluster_id() for _ in range(2000)}
    assert any(i.startswith("-") for i in ids), "the case this guards against is real"
    assert all(len(i) == 22 for i in ids)


@pytest.mark.kafka
def test_storage_tool_formats_with_a_dash_id(tmp_path: Path) -> None:
    """The real StorageTool (Maven Central jars) accepts an id that starts with '-'."""
    import subprocess

    klibs = localkafka.ensure_jars()
    props = tmp_path / "server.properties"
    props.write_text(localkafka.render_server_properties(
        client_port=localkafka.free_port(), controller_port=localkafka.free_port(),
        log_dir=tmp_path / "data"))
    cid = "-" + localkafka.new_cluster_id()[1:]
    run = subprocess.run(localkafka.format_command(["-cp", f"{klibs}/*"], cid, props),
                         capture_output=True, text=True, check=False, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    meta = (tmp_path / "data" / "meta.properties").read_text()
    assert f"cluster.id={cid}" in meta
