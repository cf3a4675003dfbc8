"""``metering simulate``: determinism, CloudStack's wire quirks, truth, streaming, the CLI."""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from agents.cli import main
from metering.eventtime import format_event_time, parse_event_time
from metering.partitioning import murmur2, partition_for
from metering.simulate.cloud import DAY, Cloud, SimConfig
from metering.simulate.gson import gson_dumps, hashmap_order, java_string_hash
from metering.simulate.render import TimeFormatter, parse_offset
from metering.simulate.run import stream, truth_document, write_records

START = SimConfig().start_ms


def small(seed: int = 5, accounts: int = 12, days: float = 2.0, **kw: Any) -> SimConfig:
    return SimConfig(seed=seed, accounts=accounts, until_ms=START + int(days * DAY), **kw)


def records(cfg: SimConfig) -> list[tuple[str | None, bytes, str]]:
    return [(e.key, e.value, e.category) for e in stream(Cloud(cfg))]


# --------------------------------------------------------------------------- Gson and Kafka


def test_java_string_hash_matches_java() -> None:
    # values of "...".hashCode() in Java
    assert java_string_hash("") == 0
    assert java_string_hash("hello") == 99162322
    assert java_string_hash("eventDateTime") == -116077483
    assert java_string_hash("\u00e9t\u00e9") == 227742  # checked with jshell
    assert java_string_hash("polygenelubricants") == -2147483648


@pytest.mark.parametrize(
    ("put_order", "bus_order"),
    [
        # reference §2.6: the order a JDK 17 HashMap + Gson emits for these key sets
        (("account", "zone", "event", "resource", "id", "eventDateTime"),
         ("eventDateTime", "zone", "resource", "id", "event", "account")),
        (("old-state", "new-state", "resource", "id", "eventDateTime", "status"),
         ("eventDateTime", "old-state", "resource", "id", "new-state", "status")),
        (("event", "dataCenterId", "podId", "subject", "body", "eventDateTime"),
         ("eventDateTime", "subject", "dataCenterId", "event", "body", "podId")),
        (("user", "account", "event", "status", "entity", "entityuuid", "description",
          "eventDateTime", "VirtualMachine"),
         ("eventDateTime", "entityuuid", "description", "event", "user", "account", "entity",
          "status", "VirtualMachine")),
    ],
)
def test_hashmap_key_order_is_the_buses(put_order: tuple[str, ...],
                                        bus_order: tuple[str, ...]) -> None:
    assert hashmap_order(put_order) == bus_order


def test_gson_escapes_html_characters_and_drops_nulls() -> None:
    out = gson_dumps({"description": "name='web' a=b <x> & y", "zone": None})
    assert out == (b'{"description":"name\\u003d\\u0027web\\u0027 a\\u003db \\u003cx\\u003e '
                   b'\\u0026 y"}')
    assert orjson.loads(out) == {"description": "name='web' a=b <x> & y"}


@pytest.mark.parametrize(
    ("data", "expected"),
    [  # Kafka's UtilsTest.testMurmur2
        (b"21", -973932308),
        (b"foobar", -790332482),
        (b"a-little-bit-long-string", -985981536),
        (b"a-little-bit-longer-string", -1486304829),
        (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        (b"abc", 479470107),
    ],
)
def test_murmur2_matches_kafka(data: bytes, expected: int) -> None:
    assert murmur2(data) == expected
    assert 0 <= partition_for(data, 7) < 7


@pytest.mark.parametrize("offset", [0, 330, -420, 345, -60])
def test_time_formatter_matches_the_reference_formatter(offset: int) -> None:
    fmt = TimeFormatter(offset)
    for ms in range(START - 3 * DAY, START + 400 * DAY, 7_777_777_000):
        text = fmt(ms)
        assert text == format_event_time(ms, offset)
        assert parse_event_time(text) == ms


def test_parse_offset() -> None:
    assert parse_offset("+0530") == 330
    assert parse_offset("-07:00") == -420
    for bad in ("0530", "+5", "+2500", "UTC"):
        with pytest.raises(ValueError, match="offset"):
            parse_offset(bad)


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    cfg = small()
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    write_records(cfg, a)
    write_records(cfg, b)
    write_records(small(seed=6), c)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    k1, k2 = tmp_path / "k1.gz", tmp_path / "k2.gz"
    write_records(cfg, k1, fmt="kcat")
    write_records(cfg, k2, fmt="kcat")
    assert gzip.decompress(k1.read_bytes()) == gzip.decompress(k2.read_bytes())


def test_malformed_extras_do_not_change_the_cloud() -> None:
    clean = records(small(malformed=0.0))
    noisy = records(small(malformed=0.05))
    assert [r for r in noisy if r[2] != "malformed"] == clean
    assert sum(r[2] == "malformed" for r in noisy) > 10


# --------------------------------------------------------------------------- realism


@pytest.fixture(scope="module")
def default_run() -> tuple[list[tuple[str | None, bytes, str]], dict[str, Any]]:
    """What ``metering simulate`` produces with its default options."""
    cfg = SimConfig(seed=1, accounts=20, until_ms=START + 2 * DAY)
    cloud = Cloud(cfg)
    recs = [(e.key, e.value, e.category) for e in stream(cloud)]
    summary = type("S", (), {"records": len(recs), "categories": Counter(r[2] for r in recs)})
    return recs, truth_document(cfg, cloud, summary)  # type: ignore[arg-type]


def test_every_category_and_quirk_occurs_in_a_default_run(default_run: Any) -> None:
    recs, truth = default_run
    cats = Counter(c for _, _, c in recs)
    assert set(cats) == {"usage", "action", "resource_state", "async_job", "alert", "unknown",
                         "malformed"}
    parsed = [(k, orjson.loads(v), v) for k, v, c in recs if c != "malformed"]
    usage = [(k, d) for k, d, _ in parsed if "resource" in d and "old-state" not in d]
    actions = [d for _, d, _ in parsed if "user" in d and "status" in d and "jobId" not in d]
    statuses = {d["status"] for d in actions}
    assert statuses >= {"Scheduled", "Started", "Created", "Completed"}
    assert any(d["description"].startswith("Error while") for d in actions)
    assert any("ServiceOffering" in d and "VirtualMachineTemplate" in d for d in actions)
    assert any(d["event"] == "ACCOUNT.CREATE" and "Domain" in d for d in actions)
    deletes = [d for d in actions if d["event"] == "ACCOUNT.DELETE"]
    assert {d["status"] for d in deletes} >= {"Scheduled", "Started", "Completed"}
    assert any(d["description"].startswith("Error") for d in deletes)
    states = [d for _, d, _ in parsed if "old-state" in d]
    assert {d.get("status") for d in states} >= {"preStateTransitionEvent",
                                                  "postStateTransitionEvent", None}
    jobs = [(k, d) for k, d, _ in parsed if "jobId" in d]
    assert all("eventDateTime" not in d and isinstance(d["cmdInfo"], dict) for _, d in jobs)
    assert all(k == d["instanceUuid"] for k, d in jobs)
    alerts = [(k, d) for k, d, _ in parsed if d.get("event", "").startswith("ALERT.")]
    assert alerts
    assert all(k is None for k, _ in alerts)
    events = Counter(d["event"] for _, d in usage)
    for ignored in ("NET.IP6ASSIGN", "PORTABLE.IPASSIGN", "SNAPSHOT.COPY"):
        assert events[ignored] > 0, ignored
    assert all("id" not in d and k is None for k, d in usage if d["event"] == "NET.IP6ASSIGN")
    assert all(k == d["id"] for k, d in usage if "id" in d)
    assert any(d["event"] == "NETWORK.CREATE" and d["resource"] == "Allocated"
               for _, d in usage)
    assert all("zone" not in d for _, d in usage if d["event"].startswith("VPN.USER"))
    assert any(d["event"] == "TEMPLATE.DELETE" and "zone" not in d for _, d in usage)
    # one TEMPLATE.CREATE per zone for the same template
    zones_per_template = Counter(d["id"] for _, d in usage if d["event"] == "TEMPLATE.CREATE")
    assert max(zones_per_template.values()) >= 2
    raw = b"\n".join(v for _, v, _ in recs)
    assert b"\\u003d" in raw
    assert b"\\u0027" in raw
    assert b" +0530\"" in raw
    assert set(truth["ms_by_usage_type"]) == {
        "RUNNING_VM", "ALLOCATED_VM", "IP_ADDRESS", "VOLUME", "TEMPLATE", "ISO", "SNAPSHOT",
        "SECURITY_GROUP", "LOAD_BALANCER_POLICY", "PORT_FORWARDING_RULE", "NETWORK_OFFERING",
        "VPN_USERS", "VM_SNAPSHOT", "VOLUME_SECONDARY", "VM_SNAPSHOT_ON_PRIMARY", "BACKUP",
        "NETWORK", "VPC"}
    assert truth["zero_length_intervals"] >= 1  # a close earlier than its open (skew)
    assert {m["reason"] for m in truth["malformed"]} == {
        "invalid_json", "not_an_object", "missing_event_time", "invalid_event_time"}


def test_vm_quirks_ha_restart_duplicate_close_destroy_while_running(default_run: Any) -> None:
    recs, _ = default_run
    by_vm: dict[str, list[str]] = {}
    for _k, v, c in recs:
        if c == "usage":
            d = orjson.loads(v)
            if d["resource"] == "com.cloud.vm.VirtualMachine" and d["event"].startswith("VM."):
                by_vm.setdefault(d["id"], []).append(d["event"])
    seqs = list(by_vm.values())

    def has(pattern: list[str]) -> bool:
        return any(pattern == s[i:i + len(pattern)] for s in seqs for i in range(len(s)))

    assert has(["VM.START", "VM.START"])  # HA restart while running
    assert has(["VM.STOP", "VM.STOP"])  # duplicated close
    assert has(["VM.START", "VM.DESTROY"])  # destroy without a preceding stop
    assert has(["VM.STOP", "VM.DESTROY"])  # destroy after a stop
    assert has(["VM.STOP", "VM.UPGRADE", "VM.START"])  # upgrade while stopped


def test_deleted_accounts_publish_nothing_afterwards(default_run: Any) -> None:
    recs, truth = default_run
    deleted = {a: v["deleted_at_ms"] for a, v in truth["accounts"].items()
               if v["deleted_at_ms"]}
    assert deleted
    for _, v, c in recs:
        if c == "usage":
            d = orjson.loads(v)
            at = deleted.get(d["account"])
            assert at is None or parse_event_time(d["eventDateTime"]) < at


def test_records_are_in_publication_order_per_key(default_run: Any) -> None:
    recs, _ = default_run
    last: dict[str, int] = {}
    skewed = 0
    for k, v, c in recs:
        if k is None or c != "usage":
            continue
        t = parse_event_time(orjson.loads(v)["eventDateTime"])
        assert t is not None
        if t < last.get(k, t):
            skewed += 1  # only the deliberate clock-skew closes go back in time
        last[k] = max(t, last.get(k, t))
    assert 1 <= skewed <= 10


def test_memory_stays_proportional_to_live_resources() -> None:
    """The record heap only holds the next seconds of records, not the run."""
    cloud = Cloud(small(accounts=200, days=10))
    peak_out = peak_procs = n = 0
    for _ in cloud.records():
        n += 1
        peak_out = max(peak_out, len(cloud._out))
        peak_procs = max(peak_procs, len(cloud._procs))
    assert n > 40_000
    assert peak_out < 200
    assert peak_procs < 200 * 15  # about one process per live resource


# --------------------------------------------------------------------------- command line


def test_cli_writes_records_and_truth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, truth = tmp_path / "x.jsonl", tmp_path / "t.json"
    code = main(["simulate", "--accounts", "5", "--days", "1", "--output", str(out),
                 "--truth", str(truth), "--tz-offset=-0700,+0000", "--no-progress"])
    assert code == 0
    text = capsys.readouterr().out
    assert "records/s" in text
    assert "categories:" in text
    lines = out.read_bytes().splitlines()
    doc = orjson.loads(truth.read_bytes())
    assert doc["records"] == len(lines)
    assert doc["tz_offsets"] == ["-0700", "+0000"]
    assert any(b" -0700\"" in line for line in lines)
    assert any(b" +0000\"" in line for line in lines)
    assert {p.name for p in tmp_path.iterdir()} == {"t.json", "x.jsonl"}  # no temp files


def test_cli_kcat_envelopes_carry_murmur2_partitions(tmp_path: Path) -> None:
    out = tmp_path / "x.kcat"
    assert main(["simulate", "--accounts", "3", "--days", "0.5", "--format", "kcat",
                 "--partitions", "6", "--topic", "cloud", "--output", str(out)]) == 0
    offsets: Counter[int] = Counter()
    for line in out.read_bytes().splitlines():
        env = orjson.loads(line)
        assert env["topic"] == "cloud"
        if env["key"] is not None:
            assert env["partition"] == partition_for(env["key"].encode(), 6)
        assert env["offset"] == offsets[env["partition"]]
        offsets[env["partition"]] += 1
        assert isinstance(env["payload"], str)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--accounts", "0", "--output", "x"], "--accounts"),
        (["--days", "-1", "--output", "x"], "--days"),
        (["--tz-offset", "+2500", "--output", "x"], "--tz-offset"),
        (["--start", "yesterday", "--output", "x"], "--start"),
        (["--until", "2025-03-01T00:00:00", "--output", "x"], "no time zone"),
        (["--malformed", "1.5", "--output", "x"], "--malformed"),
        ([], "nothing to do"),
        (["--rate", "10", "--to-kafka", "h:1", "--truth", "t.json"], "--truth is not"),
        (["--duration", "5", "--output", "x"], "--duration"),
        (["--output", "/nonexistent/dir/x.jsonl"], "does not exist"),
    ],
)
def test_cli_bad_options_exit_2_naming_the_problem(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["simulate", *argv]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("seed", "offsets"), [(1, (330,)), (2, (0, -420)), (4, (345,))])
def test_truth_agrees_with_an_independent_contract_interpreter(
    seed: int, offsets: tuple[int, ...]
) -> None:
    """The truth is kept by construction; a separate reading of the contract agrees."""
    from tests.refinterp import reference_usage

    cfg = small(seed=seed, accounts=40, days=5, tz_offsets=offsets, malformed=0.01)
    cloud = Cloud(cfg)
    values = [e.value for e in stream(cloud)]
    want = {(a, t, r if z is None else f"{r}@{z}"): ms
            for (a, t, r, z), ms in cloud.truth.totals.items() if ms > 0}
    got = reference_usage(values, cfg.until_ms)
    assert sum(want.values()) > 0
    assert got == want
