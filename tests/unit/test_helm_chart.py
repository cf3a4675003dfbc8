"""The Helm chart (deploy/helm/metering), validated offline: no cluster, no network.

``helm lint --strict`` and ``helm template`` run with the default values and each values
file under ``ci/``; every rendered object is validated against the Kubernetes API schemas
(``kubernetes-validate``, strict: unknown fields are errors) at the chart's lowest and at a
current Kubernetes version, and the custom resources (ServiceMonitor, PrometheusRule,
Strimzi KafkaTopic and KafkaUser) against their CRDs' OpenAPI schemas, vendored under
``tests/data/crds/`` (descriptions stripped; unknown fields made errors, as ``kubectl
--validate=strict`` does). Then the properties that matter are checked on the objects.

helm is the one from ``make helm`` (built from its Go module into ~/.cache/metering/helm),
``$METERING_HELM`` or PATH; without it these tests are skipped with that reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import fields
from functools import cache
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate")
jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "metering"
CRDS = ROOT / "tests" / "data" / "crds"
RULES = ROOT / "compose" / "prometheus" / "rules.yml"
VALUES_FILES = [None, *sorted((CHART / "ci").glob("*.yaml"))]
KUBE_VERSIONS = ("1.25.0", "1.31.0")
"""The chart's lowest supported version (Chart.yaml kubeVersion) and a current one."""
CUSTOM = {"ServiceMonitor", "PrometheusRule", "KafkaTopic", "KafkaUser"}
PENDING_SETTINGS = {"security_protocol": "string", "sasl_mechanism": "string",
                    "sasl_username": "string", "ssl_cafile": "string", "ssl_certfile": "string",
                    "ssl_keyfile": "string", "ssl_check_hostname": "boolean",
                    "topic_prefix": "string"}
"""Settings of the Kafka security work (branch h-sec: TLS, SASL, tenant prefix) that the
chart already wires; merged with it they are fields of ``Settings`` like the others, and the
checks below then hold for them as for every setting."""


def _helm() -> str | None:
    cache_dir = Path(os.environ.get("METERING_CACHE_DIR", Path.home() / ".cache" / "metering"))
    for candidate in (os.environ.get("METERING_HELM"), shutil.which("helm"),
                      cache_dir / "helm" / "helm"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


HELM = _helm()
needs_helm = pytest.mark.skipif(
    HELM is None, reason="helm not found: `make helm` builds it from its Go module into "
    "~/.cache/metering/helm (needs Go and the Go module proxy), or set METERING_HELM")


def _run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    assert HELM is not None
    return subprocess.run([HELM, *args], capture_output=True, text=True, timeout=120)


def _values_args(values: Path | None, sets: tuple[str, ...] = ()) -> list[str]:
    args = ["-f", str(values)] if values else []
    for s in sets:
        args += ["--set", s]
    return args


@cache
def render(values: Path | None = None, sets: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """``helm template`` of the chart: the rendered objects (fails the test on an error)."""
    out = _run_helm("template", "rel", str(CHART), "--namespace", "billing",
                    "--kube-version", KUBE_VERSIONS[-1], *_values_args(values, sets))
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _id(values: Path | None) -> str:
    return values.name if values else "defaults"


def _strict(schema: Any) -> Any:
    """A CRD schema with unknown fields made errors (where the CRD does not keep them)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@cache
def _crd_schemas() -> dict[tuple[str, str], Any]:
    schemas = {}
    for path in CRDS.glob("*.json"):
        crd = json.loads(path.read_text())
        schemas[(crd["apiVersion"], crd["kind"])] = _strict(crd["schema"])
    return schemas


def validate(obj: dict[str, Any]) -> None:
    """Raise if ``obj`` is not valid for its kind (API schema or CRD schema, strict)."""
    if obj["kind"] in CUSTOM:
        schema = _crd_schemas().get((obj["apiVersion"], obj["kind"]))
        assert schema is not None, f"no vendored CRD schema for {obj['apiVersion']} {obj['kind']}"
        # CRD schemas are OpenAPI v3 (about JSON Schema draft 4); their patterns are Go
        # regexps, which Python's re cannot always compile: no metaschema check here.
        jsonschema.Draft4Validator(schema).validate(obj)
        return
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


def _one(objs: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"{len(found)} {kind} named *{name_suffix}"
    return found[0]


def _container(sts: dict[str, Any]) -> dict[str, Any]:
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


# -- lint, render, validate ------------------------------------------------------------------


@needs_helm
@pytest.mark.parametrize("values", VALUES_FILES, ids=_id)
def test_helm_lint_strict(values: Path | None) -> None:
    out = _run_helm("lint", "--strict", str(CHART), "--kube-version", KUBE_VERSIONS[-1],
                    *_values_args(values))
    assert out.returncode == 0, out.stdout + out.stderr


@needs_helm
@pytest.mark.parametrize("values", VALUES_FILES, ids=_id)
def test_every_rendered_object_is_valid_against_its_schema(values: Path | None) -> None:
    objs = render(values)
    assert objs
    for obj in objs:
        try:
            validate(obj)
        except Exception as exc:  # name the object in the failure
            raise AssertionError(f"{obj['kind']} {obj['metadata']['name']}: {exc}") from exc


@needs_helm
def test_the_validators_reject_an_unknown_field() -> None:
    """The validation above can fail: a misspelt field in a core and in a custom object."""
    objs = render(CHART / "ci" / "full-values.yaml")
    sts = json.loads(json.dumps(_one(objs, "StatefulSet", "-metering")))
    sts["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, KUBE_VERSIONS[-1], strict=True)
    user = json.loads(json.dumps(_one(objs, "KafkaUser", "-worker")))
    user["spec"]["authorization"]["acls"][0]["operation"] = "Read"  # v1 has operations only
    with pytest.raises(jsonschema.ValidationError):
        validate(user)


@needs_helm
def test_rendered_object_list() -> None:
    """Which objects each install makes (the README lists the full set)."""
    kinds = {_id(v): sorted(f"{o['kind']}/{o['metadata']['name']}" for o in render(v))
             for v in VALUES_FILES}
    assert kinds["defaults"] == [
        "PodDisruptionBudget/rel-metering", "Service/rel-metering-archive",
        "Service/rel-metering-headless", "ServiceAccount/rel-metering",
        "StatefulSet/rel-metering", "StatefulSet/rel-metering-archive"]
    assert kinds["full-values.yaml"] == sorted([
        *kinds["defaults"], "Job/rel-metering-simulator",
        "KafkaTopic/rel-metering-accounts-changelog", "KafkaTopic/rel-metering-entities-changelog",
        "KafkaTopic/rel-metering-archive-leader", "KafkaTopic/rel-metering-leader",
        "KafkaTopic/rel-metering-events", "KafkaTopic/rel-metering-grid",
        "KafkaTopic/rel-metering-input", "KafkaTopic/rel-metering-rejects",
        "KafkaTopic/rel-metering-usage", "KafkaUser/rel-metering-archive",
        "KafkaUser/rel-metering-simulator", "KafkaUser/rel-metering-worker",
        "PrometheusRule/rel-metering",
        "ServiceMonitor/rel-metering"])


# -- the properties that matter ---------------------------------------------------------------


def _statefulsets(objs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for sts in (o for o in objs if o["kind"] == "StatefulSet"):
        yield sts["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"], sts


@needs_helm
@pytest.mark.parametrize("values", VALUES_FILES, ids=_id)
def test_worker_statefulset_keeps_identity_and_state(values: Path | None) -> None:
    from agents.faustapp import SHUTDOWN_GRACE

    objs = render(values)
    sts = _one(objs, "StatefulSet", "-metering")
    spec, pod = sts["spec"], sts["spec"]["template"]["spec"]
    container = _container(sts)
    env = _env(container)
    # the group instance id is the pod name (downward API)
    assert env["METERING_GROUP_INSTANCE_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    # the RocksDB directory is the volume claim of each pod
    (claim,) = spec["volumeClaimTemplates"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts[env["METERING_DATA_DIR"]] == claim["metadata"]["name"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    # stable network identity, parallel start, a budget for drains
    headless = _one(objs, "Service", spec["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert spec["podManagementPolicy"] == "Parallel"
    pdb = _one(objs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"]
    assert pdb["spec"]["maxUnavailable"] >= 1
    # a clean Faust stop fits in the grace period
    assert pod["terminationGracePeriodSeconds"] > SHUTDOWN_GRACE + 5
    assert container["resources"]["requests"]["cpu"]
    assert container["resources"]["requests"]["memory"]


@needs_helm
@pytest.mark.parametrize("values", VALUES_FILES, ids=_id)
def test_probes_are_on_the_web_port_of_each_process(values: Path | None) -> None:
    for component, sts in _statefulsets(render(values)):
        container = _container(sts)
        env = _env(container)
        port_var = {"worker": "METERING_WEB_PORT", "archive": "METERING_ARCHIVE_WEB_PORT"}
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert int(env[port_var[component]]) == ports["web"], component
        assert env["METERING_WEB_BIND"] == "0.0.0.0"  # the kubelet probes the pod IP
        paths = {probe: (container[probe]["httpGet"]["path"], container[probe]["httpGet"]["port"])
                 for probe in ("startupProbe", "livenessProbe", "readinessProbe")}
        assert paths == {"startupProbe": ("/healthz", "web"), "livenessProbe": ("/healthz", "web"),
                         "readinessProbe": ("/readyz", "web")}, component


@needs_helm
@pytest.mark.parametrize("values", VALUES_FILES, ids=_id)
def test_non_root_read_only_root_and_only_volumes_writable(values: Path | None) -> None:
    objs = render(values)
    for obj in objs:
        if obj["kind"] not in ("StatefulSet", "Job"):
            continue
        pod = obj["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["automountServiceAccountToken"] is False
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        claims = {c["metadata"]["name"] for c in obj["spec"].get("volumeClaimTemplates", [])}
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            for mount in container.get("volumeMounts", []):
                name = mount["name"]
                assert name in claims or name in volumes, name
                if name in volumes and "secret" in volumes[name]:
                    assert mount.get("readOnly") is True, name


SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN", "PRIVATE", "KEY")


@needs_helm
@pytest.mark.parametrize("values", VALUES_FILES, ids=_id)
def test_no_secret_in_plain_values(values: Path | None) -> None:
    """No rendered env var carries a secret: the SASL password is a file from a Secret."""
    objs = render(values)
    assert not [o for o in objs if o["kind"] in ("Secret", "ConfigMap")]
    for obj in objs:
        if obj["kind"] not in ("StatefulSet", "Job"):
            continue
        pod = obj["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            secret_dirs = {m["mountPath"] for m in container.get("volumeMounts", [])
                           if "secret" in volumes.get(m["name"], {})}
            for name, value in _env(container).items():
                if name.endswith("FILE"):  # _PASSWORD_FILE, _CAFILE, _KEYFILE, ...
                    assert isinstance(value, str)
                    assert any(value.startswith(d + "/") for d in secret_dirs), (name, value)
                elif any(w in name for w in SECRET_WORDS):
                    pytest.fail(f"{obj['metadata']['name']}: {name} set in plain text")
            assert not any("password" in str(a).lower() for a in container.get("args", []))


@needs_helm
def test_the_sasl_password_comes_from_the_strimzi_or_an_existing_secret() -> None:
    full = _one(render(CHART / "ci" / "full-values.yaml"), "StatefulSet", "-metering")
    volumes = {v["name"]: v for v in full["spec"]["template"]["spec"]["volumes"]}
    assert volumes["sasl"]["secret"]["secretName"] == "rel-metering-worker"  # the KafkaUser's
    assert volumes["tls"]["secret"]["secretName"] == "prod-cluster-ca-cert"
    env = _env(_container(full))
    assert env["METERING_SASL_USERNAME"] == "rel-metering-worker"  # the KafkaUser's name
    assert env["METERING_SSL_CAFILE"] == "/etc/metering/tls/ca.crt"
    assert "METERING_SSL_CERTFILE" not in env  # no client certificate asked for
    own = _one(render(CHART / "ci" / "existing-secret-values.yaml"), "StatefulSet", "-metering")
    volumes = {v["name"]: v for v in own["spec"]["template"]["spec"]["volumes"]}
    assert volumes["sasl"]["secret"]["secretName"] == "metering-sasl"
    env = _env(_container(own))
    assert env["METERING_SASL_PASSWORD_FILE"] == "/etc/metering/sasl/sasl-password"
    assert env["METERING_SASL_USERNAME"] == "metering-tenant-a"  # from settings
    assert (env["METERING_SSL_CERTFILE"], env["METERING_SSL_KEYFILE"]) == (
        "/etc/metering/tls/tls.crt", "/etc/metering/tls/tls.key")


@needs_helm
def test_tls_files_only_where_the_protocol_uses_them() -> None:
    """The worker refuses a TLS file with a protocol without TLS (and a SASL user name
    without SASL), so the chart sets them only where the protocol uses them."""
    objs = render(None, ("kafka.tls.existingSecret=ca", "kafka.tls.clientCertificate=true",
                         "strimzi.enabled=true"))
    env = _env(_container(_one(objs, "StatefulSet", "-metering")))
    assert not {"METERING_SSL_CAFILE", "METERING_SSL_CERTFILE", "METERING_SASL_USERNAME"} & set(env)
    assert env["METERING_SASL_PASSWORD_FILE"]  # mounted; unused without SASL (allowed)


@needs_helm
@pytest.mark.parametrize(("sets", "message"), [
    (("settings.sasl_password=hunter2",), "never put a secret in values"),
    (("settings.group_instance_id=x",), "settings.group_instance_id is set by the chart"),
    (("settings.data_dir=/x",), "settings.data_dir is set by the chart"),
    (("worker.replicas=5",), "worker.replicas=5 exceeds settings.partitions=4"),
])
def test_the_chart_refuses_what_must_not_be_in_values(sets: tuple[str, ...],
                                                      message: str) -> None:
    out = _run_helm("template", "rel", str(CHART), "--kube-version", KUBE_VERSIONS[-1],
                    *_values_args(None, sets))
    assert out.returncode != 0
    assert message in out.stderr, out.stderr
    assert "hunter2" not in out.stdout + out.stderr


@needs_helm
def test_idle_replicas_only_when_asked() -> None:
    objs = render(None, ("worker.replicas=6", "worker.allowIdleReplicas=true"))
    assert _one(objs, "StatefulSet", "-metering")["spec"]["replicas"] == 6


def test_every_setting_in_the_values_files_is_a_real_setting() -> None:
    from metering.settings import Settings

    names = {f.name for f in fields(Settings)} | set(PENDING_SETTINGS)
    for path in [CHART / "values.yaml", *sorted((CHART / "ci").glob("*.yaml"))]:
        settings = (yaml.safe_load(path.read_text()) or {}).get("settings", {})
        unknown = set(settings) - names
        assert not unknown, f"{path.name}: settings {sorted(unknown)} do not exist"


def test_the_values_schema_knows_every_setting_with_its_type() -> None:
    """values.schema.json (checked by helm on every install) lists each setting of
    metering/settings.py, so a misspelt setting fails the install instead of being ignored."""
    from metering.settings import Settings

    schema = json.loads((CHART / "values.schema.json").read_text())
    settings = schema["properties"]["settings"]
    assert settings["additionalProperties"] is False
    json_type = {"str": "string", "int": "integer", "float": "number", "bool": "boolean",
                 "Path": "string"}
    want = {**PENDING_SETTINGS, **{
        f.name: json_type[f.type if isinstance(f.type, str) else f.type.__name__]
        for f in fields(Settings)}}
    assert {k: v["type"] for k, v in settings["properties"].items()} == want
    for path in [CHART / "values.yaml", *sorted((CHART / "ci").glob("*.yaml"))]:
        jsonschema.Draft7Validator(schema).validate(yaml.safe_load(path.read_text()))


@needs_helm
def test_a_misspelt_setting_fails_the_install() -> None:
    out = _run_helm("template", "rel", str(CHART), "--kube-version", KUBE_VERSIONS[-1],
                    "--set", "settings.partitons=8")
    assert out.returncode != 0
    assert "Additional property partitons is not allowed" in out.stderr, out.stderr


# -- one source of alerts -----------------------------------------------------------------------


def test_chart_rules_are_the_compose_rules() -> None:
    chart_rules = CHART / "files" / "rules.yml"
    assert chart_rules.read_bytes() == RULES.read_bytes(), (
        "deploy/helm/metering/files/rules.yml differs from compose/prometheus/rules.yml: "
        "edit the compose file, then `make chart-rules`")


@needs_helm
def test_prometheus_rule_and_service_monitor_match_compose() -> None:
    objs = render(CHART / "ci" / "full-values.yaml")
    rule = _one(objs, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(RULES.read_text())
    monitor = _one(objs, "ServiceMonitor")
    job_label = monitor["spec"]["jobLabel"]
    jobs = {o["metadata"]["labels"].get(job_label) for o in objs if o["kind"] == "Service"}
    # the rules' job selectors (as in compose/prometheus/prometheus.yml) name these jobs
    assert jobs == {"metering-worker", "metering-archive"}
    text = RULES.read_text()
    assert all(f'job="{job}"' in text for job in jobs)
    assert {e["port"] for e in monitor["spec"]["endpoints"]} == {"web"}


# -- Strimzi topics and users ------------------------------------------------------------------


@needs_helm
def test_strimzi_topics_have_the_partitions_and_policies_faust_expects() -> None:
    """State topics: settings.partitions partitions, changelogs compacted; their names and
    configs are the ones the worker itself declares (agents.app.state_topics)."""
    from agents.app import settings as app_settings
    from agents.app import state_topics

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["settings"]["app_id"] == app_settings.app_id  # both the defaults
    assert values["settings"]["events_topic"] == app_settings.events_topic
    partitions = yaml.safe_load((CHART / "ci" / "full-values.yaml").read_text())[
        "settings"]["partitions"]
    objs = render(CHART / "ci" / "full-values.yaml")
    topics = {o["spec"]["topicName"]: o["spec"] for o in objs if o["kind"] == "KafkaTopic"}
    for name, config in state_topics().items():
        assert name in topics, f"no KafkaTopic for {name}"
        assert topics[name]["partitions"] == partitions, name
        policy = config.get("cleanup.policy")
        assert topics[name].get("config", {}).get("cleanup.policy") == policy, name
    assert topics["metering-grid"] == {"topicName": "metering-grid", "partitions": 1,
                                       "replicas": 3, "config": {"cleanup.policy": "compact"}}
    for name in ("cs", "usage", "metering.rejected"):
        assert topics[name]["partitions"] == partitions
    # Faust's leader topics (LeaderAssignor: one partition, named after the app id), so
    # that no topic is left to Faust's replication factor 1
    for app_id in ("metering", "metering-archive"):
        assert topics[f"{app_id}-__assignor-__leader"]["partitions"] == 1
    assert {t["replicas"] for t in topics.values()} == {3}


def _acls(user: dict[str, Any]) -> set[tuple[str, str, str, str]]:
    return {(a["resource"]["type"], a["resource"]["name"], a["resource"]["patternType"], op)
            for a in user["spec"]["authorization"]["acls"] for op in a["operations"]}


@needs_helm
def test_strimzi_users_have_least_privilege_acls() -> None:
    objs = render(CHART / "ci" / "full-values.yaml")
    worker = _acls(_one(objs, "KafkaUser", "-worker"))
    assert _one(objs, "KafkaUser", "-worker")["spec"]["authentication"] == {
        "type": "scram-sha-512"}
    assert worker == {
        ("topic", "cs", "literal", "Read"),  # never writes its input
        ("topic", "usage", "literal", "Write"), ("topic", "metering.rejected", "literal", "Write"),
        *(("topic", "metering.events", "literal", op) for op in ("Read", "Write", "Create")),
        # changelogs, grid, Faust's leader topic
        *(("topic", "metering-", "prefix", op) for op in ("Read", "Write", "Create")),
        ("group", "metering", "literal", "Read")}
    assert _acls(_one(objs, "KafkaUser", "-archive")) == {
        ("topic", "usage", "literal", "Read"),
        *(("topic", "metering-archive-", "prefix", op) for op in ("Read", "Write", "Create")),
        ("group", "metering-archive", "literal", "Read")}
    assert _acls(_one(objs, "KafkaUser", "-simulator")) == {
        ("topic", "cs", "literal", "Write"), ("topic", "cs", "literal", "Create")}


@needs_helm
def test_a_tenant_prefix_goes_before_every_topic_group_and_acl() -> None:
    objs = render(CHART / "ci" / "existing-secret-values.yaml", ("strimzi.enabled=true",))
    topics = sorted(o["spec"]["topicName"] for o in objs if o["kind"] == "KafkaTopic")
    assert topics == sorted(["tenant-a.cs", "tenant-a.usage", "tenant-a.metering.rejected",
                             "tenant-a.metering.events.p8", "tenant-a.metering-p8-grid",
                             "tenant-a.metering-p8-entities-changelog",
                             "tenant-a.metering-p8-accounts-changelog",
                             "tenant-a.metering-p8-__assignor-__leader",
                             "tenant-a.metering-p8-archive-__assignor-__leader"])
    for user in (o for o in objs if o["kind"] == "KafkaUser"):
        assert all(name.startswith("tenant-a.") for _, name, _, _ in _acls(user)), user


@needs_helm
def test_the_acls_are_the_ones_the_readme_documents() -> None:
    """The KafkaUsers' ACLs equal ``agents.acls.required`` (the README's Security table)
    for the worker, the archive and the simulator, with the default names."""
    acls = pytest.importorskip("agents.acls", reason="agents/acls.py (the security work, "
                               "branch h-sec) is not merged here yet")
    from metering.settings import Settings

    objs = render(CHART / "ci" / "full-values.yaml")
    for component, role in (("worker", "worker"), ("archive", "archive"),
                            ("simulator", "simulate")):
        want = {(a.resource, a.name, a.pattern.lower().replace("prefixed", "prefix"),
                 a.operation) for a in acls.required(Settings(), role)}
        assert _acls(_one(objs, "KafkaUser", f"-{component}")) == want, component
