"""The Docker Compose stack (compose/) agrees with the metric catalogue (agents/catalogue.py).

No Docker and no network: the files are parsed and cross-checked. ``promtool`` (from
``make promtool``, or on PATH) additionally checks the alert rules and every dashboard query
when it is available; otherwise those tests are skipped with the reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")

from agents import catalogue  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"
COMPOSE_FILE = COMPOSE / "docker-compose.yml"
PROMETHEUS = COMPOSE / "prometheus" / "prometheus.yml"
RULES = COMPOSE / "prometheus" / "rules.yml"
DASHBOARD = COMPOSE / "grafana" / "dashboards" / "metering.json"
PROVISIONING = COMPOSE / "grafana" / "provisioning"

METRIC = re.compile(r"\bmetering_[a-z_]+")
SAMPLE_NAMES = {name for m in catalogue.METRICS for name in catalogue.sample_names(m)}
FAMILY_OF = {name: m.name for m in catalogue.METRICS for name in catalogue.sample_names(m)}

NOT_CHARTED: dict[str, str] = {
    # metric name -> why the dashboard does not show it. Every other catalogue metric must
    # appear in at least one panel query. (Currently every metric is charted.)
}

SERVICES = {"kafka", "kafka-init", "worker", "archive", "prometheus", "grafana"}
SCRAPE_JOBS = {"metering-worker": "worker:6066", "metering-archive": "archive:6067"}
EXTRA_ALERTS = {"MeteringWorkerDown", "MeteringArchiveDown"}


def _load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def _rules() -> list[dict[str, Any]]:
    doc = _load_yaml(RULES)
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of the dashboard."""
    return [(p.get("title", ""), t["expr"]) for p in _panels(_dashboard()["panels"])
            for t in p.get("targets", []) if t.get("expr")]


def _promtool() -> str | None:
    cache = Path(os.environ.get("METERING_CACHE_DIR", Path.home() / ".cache" / "metering"))
    for candidate in (shutil.which("promtool"), cache / "promtool" / "promtool",
                      cache / "promtool-deb" / "usr" / "bin" / "promtool"):
        if candidate and os.access(candidate, os.X_OK) and Path(candidate).is_file():
            return str(candidate)
    return None


PROMTOOL = _promtool()
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not found on PATH or in ~/.cache/metering/promtool/ (run `make promtool`)")


# ---------------------------------------------------------------- docker-compose.yml


def test_compose_file_has_the_services() -> None:
    doc = _load_yaml(COMPOSE_FILE)
    services = doc["services"]
    assert set(services) >= SERVICES, SERVICES - set(services)
    assert services["kafka"]["image"] == "apache/kafka:3.9.1"
    assert services["kafka-init"]["image"] == "apache/kafka:3.9.1"
    init = " ".join(services["kafka-init"]["command"])
    for topic in ("cs", "usage", "metering.rejected"):
        assert topic in init
    assert "kafka-topics.sh" in init
    assert "--partitions 4" in init


def test_worker_and_archive_are_built_and_reachable() -> None:
    services = _load_yaml(COMPOSE_FILE)["services"]
    for name, command, port in (("worker", "worker", 6066), ("archive", "archive", 6067)):
        svc = services[name]
        assert svc["build"]["context"] == ".."
        assert (COMPOSE_FILE.parent / svc["build"]["context"] / svc["build"]["dockerfile"]
                ).is_file()
        assert svc["command"] == [command]
        env = svc["environment"]
        assert env["METERING_BROKER"] == "kafka:9092"
        assert env["METERING_WEB_BIND"] == "0.0.0.0"
        assert f"127.0.0.1:{port}:{port}" in svc["ports"]
        assert "/healthz" in " ".join(svc["healthcheck"]["test"])
    assert any("/data/archive" in v for v in services["archive"]["volumes"])
    dockerfile = (COMPOSE / "Dockerfile").read_text(encoding="utf-8")
    assert "FROM python:3.12-slim" in dockerfile
    assert 'ENTRYPOINT ["metering"]' in dockerfile


def test_compose_mounts_exist() -> None:
    """Every relative bind mount of the compose file points at a file or directory we ship."""
    services = _load_yaml(COMPOSE_FILE)["services"]
    for svc in services.values():
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (COMPOSE / source).exists(), source


# ---------------------------------------------------------------- prometheus.yml


def test_prometheus_scrapes_both_jobs() -> None:
    doc = _load_yaml(PROMETHEUS)
    assert "rules.yml" in doc["rule_files"]
    jobs = {c["job_name"]: c for c in doc["scrape_configs"]}
    for job, target in SCRAPE_JOBS.items():
        config = jobs[job]
        targets = [t for sc in config["static_configs"] for t in sc["targets"]]
        assert targets == [target]
        assert config.get("scrape_interval", doc["global"]["scrape_interval"]) == "15s"
        assert config.get("metrics_path", "/metrics") == "/metrics"
        # a target label "role" would clash with metering_build_info's own label
        for sc in config["static_configs"]:
            assert "role" not in sc.get("labels", {})


def test_grafana_provisioning() -> None:
    ds = _load_yaml(PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    assert [(d["type"], d["uid"], d["url"]) for d in ds] == [
        ("prometheus", "prometheus", "http://prometheus:9090")]
    providers = _load_yaml(PROVISIONING / "dashboards" / "metering.yml")["providers"]
    assert [p["options"]["path"] for p in providers] == ["/etc/grafana/dashboards"]


# ---------------------------------------------------------------- rules.yml


def test_rules_structure() -> None:
    rules = _rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), Counter(names)
    for rule in rules:
        assert set(rule) >= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert rule["annotations"]["description"].strip(), rule["alert"]


def test_every_catalogue_alert_has_a_rule() -> None:
    names = {r["alert"] for r in _rules()}
    wanted = {a for m in catalogue.METRICS for a in m.alerts}
    assert wanted <= names, wanted - names
    assert names == wanted | EXTRA_ALERTS, names - wanted - EXTRA_ALERTS


def test_alerts_use_the_metrics_that_feed_them() -> None:
    """A catalogue metric whose ``alerts`` name X is used by rule X."""
    exprs = {r["alert"]: r["expr"] for r in _rules()}
    for m in catalogue.METRICS:
        for alert in m.alerts:
            used = {FAMILY_OF.get(n, n) for n in METRIC.findall(exprs[alert])}
            assert m.name in used, (alert, m.name)


def test_rule_metrics_exist() -> None:
    for rule in _rules():
        unknown = set(METRIC.findall(rule["expr"])) - SAMPLE_NAMES
        assert not unknown, (rule["alert"], unknown)


def test_down_alerts_watch_the_scrape_jobs() -> None:
    exprs = {r["alert"]: r["expr"] for r in _rules()}
    assert 'up{job="metering-worker"} == 0' in exprs["MeteringWorkerDown"]
    assert 'up{job="metering-archive"} == 0' in exprs["MeteringArchiveDown"]


# ---------------------------------------------------------------- the dashboard


def test_dashboard_is_valid() -> None:
    dash = _dashboard()
    assert dash["uid"]
    assert dash["title"]
    assert dash["schemaVersion"] >= 36
    ids = [p["id"] for p in _panels(dash["panels"])]
    assert len(ids) == len(set(ids)), [i for i, n in Counter(ids).items() if n > 1]
    for panel in _panels(dash["panels"]):
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel.get("targets"), panel["title"]
            assert panel["datasource"]["uid"] in {"${datasource}", "prometheus"}
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["current"]["value"] == "prometheus"


def test_dashboard_metrics_exist() -> None:
    for title, expr in _dashboard_exprs():
        unknown = set(METRIC.findall(expr)) - SAMPLE_NAMES
        assert not unknown, (title, unknown)


def test_every_metric_is_charted() -> None:
    charted = {FAMILY_OF[n] for _, e in _dashboard_exprs() for n in METRIC.findall(e)
               if n in FAMILY_OF}
    assert set(NOT_CHARTED) <= set(catalogue.BY_NAME), "NOT_CHARTED names unknown metrics"
    missing = set(catalogue.BY_NAME) - charted - set(NOT_CHARTED)
    assert not missing, f"not on the dashboard (chart them or list them in NOT_CHARTED): {missing}"
    stale = set(NOT_CHARTED) & charted
    assert not stale, f"charted, so drop them from NOT_CHARTED: {stale}"


def test_usage_hours_divide_seconds_by_3600() -> None:
    usage = [e for _, e in _dashboard_exprs() if "metering_usage_emitted_seconds_total" in e]
    assert usage
    assert all("/ 3600" in e for e in usage)


# ---------------------------------------------------------------- promtool


@needs_promtool
def test_promtool_check_rules() -> None:
    assert PROMTOOL is not None
    proc = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_promtool
def test_promtool_check_config() -> None:
    assert PROMTOOL is not None
    proc = subprocess.run([PROMTOOL, "check", "config", str(PROMETHEUS)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_promtool
def test_promtool_parses_dashboard_queries(tmp_path: Path) -> None:
    """Each dashboard query, with Grafana's range variables filled in, is valid PromQL."""
    assert PROMTOOL is not None
    rules = [{"record": f"dashboard:query_{i}:check",
              "expr": expr.replace("$__rate_interval", "1m").replace("$__range", "3h")
                          .replace("$__interval", "15s")}
             for i, (_, expr) in enumerate(_dashboard_exprs())]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}),
                    encoding="utf-8")
    proc = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_promtool
def test_promtool_rule_unit_tests(tmp_path: Path) -> None:
    """compose/prometheus/rules_test.yml: each alert fires when it should, and not before.

    Annotations are stripped from the copied rules (promtool would otherwise compare every
    rendered description); their templates are checked by ``promtool check rules``.
    """
    assert PROMTOOL is not None
    doc = _load_yaml(RULES)
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(doc), encoding="utf-8")
    shutil.copy(COMPOSE / "prometheus" / "rules_test.yml", tmp_path / "rules_test.yml")
    proc = subprocess.run([PROMTOOL, "test", "rules", "rules_test.yml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_a_unit_test() -> None:
    tests = _load_yaml(COMPOSE / "prometheus" / "rules_test.yml")["tests"]
    tested = {a["alertname"] for t in tests for a in t["alert_rule_test"] if a["exp_alerts"]}
    assert tested == {r["alert"] for r in _rules()}


def test_published_ports_bind_loopback_only() -> None:
    """Kafka (no authentication), metrics and dashboards are never published on every
    interface of the host (issue 15, case 11)."""
    services = _load_yaml(COMPOSE_FILE)["services"]
    published = {name: svc.get("ports", []) for name, svc in services.items()}
    assert published["kafka"], "the host listener is published"
    for name, ports in published.items():
        for port in ports:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on all hosts"


def test_grafana_has_no_default_password() -> None:
    env = _load_yaml(COMPOSE_FILE)["services"]["grafana"]["environment"]
    password = str(env["GF_SECURITY_ADMIN_PASSWORD"])
    assert password.startswith("${GRAFANA_ADMIN_PASSWORD:?"), password
    assert password != "admin"
