"""Every Prometheus metric metering exposes: name, type, labels, meaning and the alert it feeds.

This is the single list the code, the README table, the Grafana dashboard and the alert rules
are checked against (``tests/unit/test_catalogue.py``, ``tests/unit/test_compose.py``). It
imports nothing heavy, so tools can read it without starting Faust.

Conventions (https://prometheus.io/docs/practices/naming/): base units (seconds, bytes),
``_total`` for counters, and labels of low cardinality only: categories, outcomes, reasons,
usage types, topics and partitions, never account or resource ids. Usage is exported in
seconds (``metering_usage_emitted_seconds_total``); dashboards divide by 3600 for hours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

Kind = Literal["counter", "gauge", "histogram"]
Role = Literal["worker", "archive", "both"]


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric family as scraped (counters with their ``_total`` suffix)."""

    name: str
    kind: Kind
    labels: tuple[str, ...]
    help: str
    role: Role
    alerts: tuple[str, ...] = ()
    """Names of the alert rules (``compose/prometheus/rules.yml``) it feeds."""


METRICS: Final[tuple[MetricSpec, ...]] = (
    MetricSpec("metering_records_consumed_total", "counter", ("category", "outcome"),
               "Input records consumed from the CloudStack topic, by category (usage, "
               "action, resource_state, async_job, alert, invalid) and outcome (metered, "
               "ignored, rejected)", "worker",
               ("MeteringRejectRateHigh",)),
    MetricSpec("metering_records_rejected_total", "counter", ("reason",),
               "Input records rejected (sent to the rejects topic), by reason", "worker",
               ("MeteringRejectRateHigh",)),
    MetricSpec("metering_intervals_emitted_total", "counter", ("usage_type",),
               "Usage intervals sent to the usage topic, by usage type name", "worker"),
    MetricSpec("metering_usage_emitted_seconds_total", "counter", ("usage_type",),
               "Usage sent to the usage topic, in seconds of raw usage (hours = / 3600), by "
               "usage type name", "worker"),
    MetricSpec("metering_open_resources", "gauge", ("usage_type",),
               "Resources with an open interval in this worker's partitions, by usage type "
               "name", "worker"),
    MetricSpec("metering_consumer_lag_records", "gauge", ("group", "topic", "partition"),
               "Records not yet committed by the consumer group: end offset minus committed "
               "offset, per assigned partition (refreshed every metrics_interval seconds "
               "and after each rebalance)", "both",
               ("MeteringConsumerLagGrowing", "MeteringArchiveStalled")),
    MetricSpec("metering_event_time_lag_seconds", "gauge", ("partition",),
               "Wall clock minus the event-time watermark of each internal partition (how "
               "far behind CloudStack's clock metering runs)", "worker",
               ("MeteringEventTimeLagHigh",)),
    MetricSpec("metering_processing_latency_seconds", "histogram", (),
               "Input record timestamp to its interval acknowledged on the usage topic, for "
               "intervals closed by an event (period cuts wait for the period by design)",
               "worker",
               ("MeteringProcessingSlow",)),
    MetricSpec("metering_state_store_bytes", "gauge", (),
               "Bytes of this worker's RocksDB table files on disk", "worker"),
    MetricSpec("metering_assigned_partitions", "gauge", ("topic",),
               "Partitions currently assigned to this process", "both"),
    MetricSpec("metering_archive_files_written_total", "counter", (),
               "Parquet part files made durable by the archive", "archive"),
    MetricSpec("metering_archive_bytes_written_total", "counter", (),
               "Bytes of Parquet part files made durable by the archive", "archive"),
    MetricSpec("metering_archive_rows_written_total", "counter", (),
               "Usage intervals written to Parquet by the archive", "archive"),
    MetricSpec("metering_archive_records_rejected_total", "counter", (),
               "Usage-topic records that are not intervals (kept under _rejected/)",
               "archive"),
    MetricSpec("metering_archive_records_skipped_total", "counter", (),
               "Re-delivered usage records already archived (at or below the checkpoint)",
               "archive"),
    MetricSpec("metering_archive_write_failures_total", "counter", (),
               "Failed attempts to write a batch (retried; offsets do not advance)",
               "archive",
               ("MeteringArchiveFailing",)),
    MetricSpec("metering_archive_last_success_timestamp_seconds", "gauge", (),
               "UTC epoch seconds of the last batch made durable (0: none yet)", "archive",
               ("MeteringArchiveStalled",)),
    MetricSpec("metering_archive_failing", "gauge", (),
               "1 while the archive's last write attempt failed, else 0", "archive",
               ("MeteringArchiveFailing",)),
    MetricSpec("metering_build_info", "gauge", ("version", "config_hash", "role"),
               "Always 1; labels carry the version and a hash of the effective settings",
               "both"),
)

BY_NAME: Final = {m.name: m for m in METRICS}

LATENCY_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
"""Buckets of ``metering_processing_latency_seconds``, in seconds.

The fine end resolves the target (p99 < 1 s at steady rates: a batch waits up to
``batch_within`` = 0.5 s, two Kafka hops add tens of ms); 2-60 s show a worker falling
behind; 300 and 900 s cover catch-up after an outage (beyond that, consumer lag and
event-time lag are the better signals). Twelve buckets keep the series count small."""


def sample_names(spec: MetricSpec) -> tuple[str, ...]:
    """Names of the samples a family produces in the text format (histograms have three)."""
    if spec.kind == "histogram":  # prometheus_client also adds <name>_created
        return (f"{spec.name}_bucket", f"{spec.name}_sum", f"{spec.name}_count")
    return (spec.name,)


def markdown_table() -> str:
    """The README's metric table (checked against the README by a test)."""
    lines = ["| metric | type | labels | meaning | alerts |", "|---|---|---|---|---|"]
    for m in METRICS:
        labels = ", ".join(f"`{label}`" for label in m.labels) or "-"
        alert = ", ".join(f"`{a}`" for a in m.alerts) or "-"
        lines.append(f"| `{m.name}` | {m.kind} | {labels} | {m.help} | {alert} |")
    return "\n".join(lines) + "\n"
