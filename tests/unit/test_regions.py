"""Regions (issue 19 item 5): the ``region`` field, old rows, and the pure region module."""

from __future__ import annotations

from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from metering.decode import decode
from metering.engine import Engine, Policy
from metering.events import (
    AccountCreated,
    AccountDeleted,
    Enrichment,
    Ignored,
    Rejected,
    Source,
    UsageEvent,
)
from metering.intervals import (
    UsageInterval,
    decode_interval,
    encode_interval,
    make_interval,
    resource_key,
)
from metering.periods import PeriodGrid
from metering.regions import (
    SEP,
    RegionError,
    TopicRegions,
    input_topic_regions,
    label,
    parse_input_topics,
    qualified,
    qualify,
    region_problem,
)
from storage.compact import read_part
from storage.dataset import ARROW_SCHEMA, read_dataset, to_table
from storage.parts import partition_dir, write_atomic
from storage.report import usage_report
from tests.refinterp import reference_usage_by_region
from tests.unit.test_properties import Trace, traces

HOUR = 3_600_000
T0 = 1_741_910_400_000  # 2025-03-14T00:00:00Z


def row(account: str = "acct-1", resource: str = "vm-1", start: int = T0,
        hours: int = 1, offset: int = 0) -> UsageInterval:
    return make_interval(
        usage_type=1, resource_id=resource, zone_id="z1", account_id=account, domain_id=None,
        offering_id=None, template_id=None, start=start, end=start + hours * HOUR,
        period_start=start, final=False, close_reason="period", source_topic="cs",
        source_partition=0, source_offset=offset)


# -- the pure module ---------------------------------------------------------------------------


def test_qualify_keys_every_meterable_value_by_region() -> None:
    assert qualify(UsageEvent("VM.START", "a", "vm", "z", 5), "eu") == UsageEvent(
        "VM.START", "eu|a", "eu|vm", "z", 5)
    assert qualify(Enrichment("vm", 5, "so", "t", None), "eu") == Enrichment(
        "eu|vm", 5, "so", "t", None)
    assert qualify(AccountCreated("a", "d", 5), "eu") == AccountCreated("eu|a", "d", 5)
    assert qualify(AccountDeleted("a", 5), "eu") == AccountDeleted("eu|a", 5)


ids = st.text(min_size=1, max_size=40)  # any id, "|" included: decode accepts any string
regions = st.from_regex(r"\A[A-Za-z0-9._-]{1,64}\Z")


@given(account=ids, resource=ids, region=regions)
def test_label_inverts_qualification_whatever_the_ids_hold(
        account: str, resource: str, region: str) -> None:
    engine_row = row(qualified(region, account), qualified(region, resource))
    published = label(engine_row)
    assert (published.account_id, published.resource_id, published.region) == (
        account, resource, region)
    assert published.interval_id == engine_row.interval_id
    assert published[:20] == engine_row._replace(account_id=account, resource_id=resource)[:20]
    assert type(published) is UsageInterval


@given(account=ids, resource=ids, a=regions, b=regions)
def test_two_regions_never_share_an_interval_id(account: str, resource: str, a: str,
                                                b: str) -> None:
    if a != b:
        assert (row(qualified(a, account), qualified(a, resource)).interval_id
                != row(qualified(b, account), qualified(b, resource)).interval_id)


def test_label_refuses_a_row_that_was_not_qualified() -> None:
    with pytest.raises(RegionError, match="not qualified"):
        label(row("acct-1", "vm-1"))
    with pytest.raises(RegionError, match="not qualified"):
        label(row("eu|acct-1", "us|vm-1"))


def test_input_topics_parse_and_every_problem_is_named() -> None:
    assert parse_input_topics("cs.region-a=a, cs.region-b=b") == [
        ("cs.region-a", "a"), ("cs.region-b", "b")]
    assert parse_input_topics("cs1,cs2") == [("cs1", None), ("cs2", None)]
    with pytest.raises(ValueError, match="is not a valid Kafka topic name") as caught:
        parse_input_topics("cs a=x,cs.b=b|c,cs.c=c,cs.c=d")
    message = str(caught.value)
    assert "'cs a' is not a valid Kafka topic name" in message
    assert "'b|c' is not a region name" in message
    assert "topic 'cs.c' is listed twice" in message
    with pytest.raises(ValueError, match=r"cs\.b has none: give every input a region, or none"):
        parse_input_topics("cs.a=a,cs.b")
    with pytest.raises(ValueError, match="no topic given"):
        parse_input_topics(" , ")
    assert region_problem("eu-west.1") is None
    assert region_problem("") is not None
    assert region_problem("x" * 65) is not None
    assert SEP not in "".join(c for c in map(chr, range(128)) if region_problem(c) is None)


def test_the_worker_inputs_fall_back_to_input_topic() -> None:
    plain = input_topic_regions("cs", "")
    assert plain.topics == ("cs",)
    assert not plain.regional
    value = UsageEvent("VM.START", "a", "vm", None, 5)
    assert plain.qualify(value, "cs") is value
    assert plain.label(row()) == row()
    two = input_topic_regions("cs", "cs.a=a,cs.b=b")
    assert two.topics == ("cs.a", "cs.b")
    assert two.regional
    assert two.region_of("cs.b") == "b"
    assert two.region_of("cs") is None
    assert two.qualify(value, "cs.b") == qualify(value, "b")
    with pytest.raises(ValueError, match="give every input a region"):
        TopicRegions([("x", "a"), ("y", None)])


# -- the field in every format, and old rows ---------------------------------------------------


def test_region_is_the_last_field_and_round_trips_through_json() -> None:
    regional = label(row("eu|acct-1", "eu|vm-1"))
    raw = encode_interval(regional)
    assert raw.endswith(b'"schema_version":2,"region":"eu"}')
    assert decode_interval(raw) == regional
    assert ARROW_SCHEMA.names[-1] == "region"
    assert ARROW_SCHEMA.field("region").nullable


def test_a_version_1_record_without_region_still_decodes() -> None:
    obj = orjson.loads(encode_interval(row()))
    del obj["region"]
    obj["schema_version"] = 1
    old = decode_interval(orjson.dumps(obj))
    assert old.region is None
    assert old.schema_version == 1
    assert old[:19] == row()[:19]


def _write_version_1_file(root: Path, rows: list[UsageInterval], name: str) -> None:
    """A part file as version 1 wrote it: no region column, schema_version 1."""
    table = to_table(rows).drop_columns(["region"])
    table = table.set_column(table.schema.get_field_index("schema_version"),
                             table.schema.field("schema_version"),
                             pa.array([1] * len(rows), pa.int32()))
    write_atomic(table, partition_dir(root, "2025-03-14") / name)


def test_datasets_mixing_version_1_files_and_regional_rows_read(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    old = [row("acct-1", "vm-old", T0 + i * HOUR, offset=i) for i in range(3)]
    _write_version_1_file(root, old, "a-old.parquet")  # the first file a reader opens
    new = [label(row("eu|acct-1", "eu|vm-1", T0)), label(row("us|acct-1", "us|vm-1", T0))]
    write_atomic(to_table(new), partition_dir(root, "2025-03-14") / "b-new.parquet")
    assert pq.read_schema(root / "usage_date=2025-03-14" / "a-old.parquet").names[-1] == (
        "schema_version")
    table = read_dataset(root)
    assert sorted(table.column("region").to_pylist(), key=lambda r: r or "") == [
        None, None, None, "eu", "us"]
    part = read_part(root / "usage_date=2025-03-14" / "a-old.parquet")
    assert part.schema.equals(ARROW_SCHEMA)
    assert part.column("region").null_count == 3
    by_account = usage_report(root, ["account"])
    assert by_account.rows == [{"account_id": "acct-1", "intervals": 5, "hours": 5.0}]
    by_region = usage_report(root, ["account", "region"])
    assert by_region.rows == [
        {"account_id": "acct-1", "region": "eu", "intervals": 1, "hours": 1.0},
        {"account_id": "acct-1", "region": "us", "intervals": 1, "hours": 1.0},
        {"account_id": "acct-1", "region": None, "intervals": 3, "hours": 3.0},
    ]


# -- replay: a region per input file -----------------------------------------------------------


def _simulated(tmp_path: Path, seed: int, name: str, fmt: str = "jsonl") -> tuple[Path, str]:
    """A simulated cloud's trace (written as ``name``) and its horizon (ISO 8601)."""
    from agents.cli import main

    trace, truth = tmp_path / name, tmp_path / f"{name}.truth.json"
    assert main(["simulate", "--accounts", "12", "--days", "2", "--seed", str(seed),
                 "--format", fmt, "--output", str(trace), "--truth", str(truth),
                 "--no-progress"]) == 0
    return trace, str(orjson.loads(truth.read_bytes())["until"])


def _rows(root: Path) -> list[dict[str, object]]:
    rows = read_dataset(root).to_pylist()
    for r in rows:
        r.pop("usage_date")
    return rows


def _content(rows: list[dict[str, object]]) -> list[tuple[object, ...]]:
    """Rows without interval_id and region, sorted (a multiset)."""
    return sorted((tuple((k, v) for k, v in r.items() if k not in ("interval_id", "region"))
                   for r in rows), key=repr)


def test_replay_with_regions_equals_each_region_metered_alone(tmp_path: Path) -> None:
    """The same cloud (same accounts, same resource ids) in two regions: two sets of
    intervals, each the one its file gives alone, with distinct ids; report sums them."""
    from agents.cli import main

    a, until = _simulated(tmp_path, 5, "cs-a.jsonl")
    b = tmp_path / "cs-b.jsonl"
    b.write_bytes(a.read_bytes())
    alone = {}
    for name, trace in (("a", a), ("b", b)):
        assert main(["replay", str(trace), "-o", str(tmp_path / f"alone-{name}"), "--until",
                     until, "--no-progress"]) == 0
        alone[name] = _rows(tmp_path / f"alone-{name}")
    assert main(["replay", "--input", str(a), "--region", "eu", "--input", str(b),
                 "--region", "us", "-o", str(tmp_path / "both"), "--until", until,
                 "--no-progress"]) == 0
    both = _rows(tmp_path / "both")
    eu = [r for r in both if r["region"] == "eu"]
    us = [r for r in both if r["region"] == "us"]
    assert len(eu) + len(us) == len(both)
    assert len(eu) > 1000
    assert _content(eu) == _content(alone["a"])
    assert _content(us) == _content(alone["b"])
    assert any(r["domain_id"] for r in eu)  # enrichment found the region's ACCOUNT.CREATE
    assert not {r["interval_id"] for r in eu} & {r["interval_id"] for r in us}
    assert not {r["interval_id"] for r in eu} & {r["interval_id"] for r in alone["a"]}

    one = usage_report(tmp_path / "alone-a", ["account"])
    summed = usage_report(tmp_path / "both", ["account"])
    split = usage_report(tmp_path / "both", ["region"])
    assert [r["account_id"] for r in summed.rows] == [r["account_id"] for r in one.rows]
    assert summed.total_ms == 2 * one.total_ms
    for mine, single in zip(summed.rows, one.rows, strict=True):
        assert mine["intervals"] == 2 * single["intervals"]
    assert [(r["region"], r["intervals"]) for r in split.rows] == [
        ("eu", len(eu)), ("us", len(us))]


def test_replay_refuses_regions_for_some_inputs_or_one_lane_in_two_regions(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agents.cli import main

    a, _ = _simulated(tmp_path, 6, "a.jsonl", fmt="kcat")  # envelopes keep their topic
    b = tmp_path / "b.jsonl"
    b.write_bytes(a.read_bytes())
    out = str(tmp_path / "out")

    def usage_error(argv: list[str]) -> str:
        with pytest.raises(SystemExit) as caught:
            main(argv)
        assert caught.value.code == 2
        return capsys.readouterr().err

    assert ("some inputs have a region and " + str(a) + " has none: give every input a "
            "region (--input FILE --region NAME), or none") in usage_error(
        ["replay", str(a), "--input", str(b), "--region", "us", "-o", out])
    assert "--region: 'eu/1' is not a region name" in usage_error(
        ["replay", "--input", str(a), "--region", "eu/1", "-o", out])
    assert "--region us must follow an --input FILE without a region" in usage_error(
        ["replay", "--input", str(a), "--region", "eu", "--region", "us", "-o", out])
    assert "no input: give INPUT files or --input FILE" in usage_error(["replay", "-o", out])
    assert main(["replay", "--input", str(a), "--region", "eu", "--input", str(b),
                 "--region", "us", "-o", out, "--no-progress"]) == 3
    err = capsys.readouterr().err
    assert "(topic/partition) come from inputs of regions eu and us" in err, err


# -- the worker's settings ---------------------------------------------------------------------


def test_input_topics_setting_is_validated_with_every_problem_named() -> None:
    from metering.settings import SettingsError, load_settings

    ok = load_settings(env={"METERING_INPUT_TOPICS": "cs.region-a=a,cs.region-b=b"})
    assert input_topic_regions(ok.input_topic, ok.input_topics).topics == (
        "cs.region-a", "cs.region-b")
    with pytest.raises(SettingsError) as caught:
        load_settings(env={"METERING_INPUT_TOPICS": "cs.a=a,cs.b,usage=u"})
    assert caught.value.problems == [
        "input_topics: some inputs have a region and cs.b has none: give every input a "
        "region, or none"]
    with pytest.raises(SettingsError) as caught:
        load_settings(env={"METERING_INPUT_TOPICS": "cs.a=a,usage=u"})
    assert caught.value.problems == [
        "input_topics: 'usage' is also an output or internal topic"]


# -- the rule against the reference interpreter ------------------------------------------------


@given(st.lists(st.tuples(st.sampled_from(["eu", "us"]), st.integers(0, 10**6)), max_size=60),
       traces(), traces(), st.sampled_from(["hour", "day"]))
def test_regional_totals_equal_the_reference_interpreter(
        order: list[tuple[str, int]], eu: Trace, us: Trace, period: str) -> None:
    """Two regions' records interleaved in one stream (the same account and resource ids in
    both: the property traces share them) meter as the reference interpreter's regional
    mode says: per (region, account, usage type, resource key), never mixed. As in
    tests/unit/test_properties.py the comparison runs without rule 4b's watermark limit
    (the interpreter has no watermarks)."""
    queues = {"eu": list(eu.records), "us": list(us.records)}
    stream: list[tuple[str, bytes]] = []
    for region, _ in order:  # an interleaving drawn by Hypothesis, then the rest in order
        if queues[region]:
            stream.append((region, queues[region].pop(0)))
    stream += [("eu", r) for r in queues["eu"]] + [("us", r) for r in queues["us"]]
    until = max(eu.until, us.until)
    meter = Engine(Policy(grid=PeriodGrid(period, "UTC"), lateness_ms=None,  # type: ignore[arg-type]
                          max_watermark_jump_ms=None))
    rows: list[UsageInterval] = []
    for i, (region, raw) in enumerate(stream):
        value = decode(raw)
        if isinstance(value, Ignored | Rejected) or value.time_ms >= until:
            continue
        rows += meter.process(qualify(value, region), Source("cs", 0, i))
    rows += meter.finish(until).rows
    got: dict[tuple[str, str, int, str], int] = {}
    for r in (label(row) for row in rows):
        key = (str(r.region), r.account_id, r.usage_type,
               resource_key(r.usage_type, r.resource_id, r.zone_id))
        got[key] = got.get(key, 0) + r.duration_ms
    assert {k: v for k, v in got.items() if v} == reference_usage_by_region(stream, until)


def test_an_ignored_action_far_ahead_expires_no_remembered_close() -> None:
    """Found by the property test above (a fresh-clone run, 2026-11-29): a *scheduled*
    ACCOUNT.DELETE eight months ahead is ignored, so it moves no watermark, and a VM.STOP
    remembered before its older VM.START arrives is still claimed (rule 3): [START, STOP)
    is metered, nothing stays open. The reference interpreter had let every action record
    move its watermark, expiring the close and leaving the VM running for eight months."""
    def record(ts: str, event: str, **extra: str) -> bytes:
        return orjson.dumps({"eventDateTime": f"2025-{ts} +0000", "event": event, **extra})

    vm = {"resource": "com.cloud.X", "id": "vm-0", "account": "acct-0"}
    stream = [
        ("us", record("11-01 21:00:00", "ACCOUNT.DELETE", status="Scheduled",
                      description="deleting account", entityuuid="acct-0")),
        ("eu", record("03-08 22:17:04", "VM.STOP", **vm)),
        ("eu", record("03-08 22:17:03", "VM.START", zone="zone-1", **vm)),
    ]
    until = 1_762_030_800_001  # 2025-11-01T21:00:00.001Z
    meter = Engine(Policy(grid=PeriodGrid("hour", "UTC"), lateness_ms=None,
                          max_watermark_jump_ms=None))
    rows: list[UsageInterval] = []
    for i, (region, raw) in enumerate(stream):
        value = decode(raw)
        if not isinstance(value, Ignored | Rejected):
            rows += meter.process(qualify(value, region), Source("cs", 0, i))
    rows += meter.finish(until).rows
    assert [(r.usage_type, r.duration_ms) for r in rows] == [(1, 1000)]
    assert reference_usage_by_region(stream, until) == {("eu", "acct-0", 1, "vm-0"): 1000}
