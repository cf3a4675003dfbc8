"""Security settings (issue 19): validation, the client configuration of every client,
secrets kept out of every output, the ACL table, the secure broker's properties."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from agents import acls, kafkacheck
from agents.kafkaclient import aiokafka_options, client_options, describe, faust_options
from agents.localkafka import render_server_properties, scram_arguments, secure_server_properties
from agents.tlscerts import make_certs
from metering.settings import Settings, SettingsError, load_settings, redact

SECRET = "Sup3r-s3cret-" + "x" * 8


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    made = make_certs(tmp_path_factory.mktemp("tls"), clients=["metering"])
    cert, key = made.clients["metering"]
    return {"ca": str(made.ca), "cert": str(cert), "key": str(key)}


def sasl_env(ca: str, **extra: str) -> dict[str, str]:
    return {"METERING_SECURITY_PROTOCOL": "SASL_SSL", "METERING_SASL_MECHANISM": "SCRAM-SHA-512",
            "METERING_SASL_USERNAME": "metering", "METERING_SASL_PASSWORD": SECRET,
            "METERING_SSL_CAFILE": ca, **extra}


def problems(env: dict[str, str]) -> str:
    with pytest.raises(SettingsError) as err:
        load_settings(env=env)
    return str(err.value)


def test_defaults_are_plaintext_and_every_client_gets_no_security() -> None:
    s = load_settings(env={})
    assert s.security_protocol == "PLAINTEXT"
    assert aiokafka_options(s) == {"bootstrap_servers": "127.0.0.1:9092",
                                   "security_protocol": "PLAINTEXT"}
    assert faust_options(s) == {}


@pytest.mark.parametrize(("env", "needle"), [
    ({"METERING_SECURITY_PROTOCOL": "TLS"}, "security_protocol: 'TLS' is not one of"),
    ({"METERING_SECURITY_PROTOCOL": "SASL_SSL"}, "sasl_username: required"),
    ({"METERING_SECURITY_PROTOCOL": "SASL_SSL"}, "sasl_password: required"),
    ({"METERING_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "METERING_SASL_MECHANISM": "GSSAPI",
      "METERING_SASL_USERNAME": "u", "METERING_SASL_PASSWORD": "p"},
     "sasl_mechanism: 'GSSAPI' is not one of"),
    ({"METERING_SASL_USERNAME": "u"}, "sasl_username: set, but security_protocol=PLAINTEXT"),
    ({"METERING_SSL_CAFILE": "/etc/hostname"}, "ssl_cafile: set, but security_protocol="),
    ({"METERING_SECURITY_PROTOCOL": "SSL", "METERING_SSL_CAFILE": "/nonexistent/ca.pem"},
     "ssl_cafile: /nonexistent/ca.pem is not a readable file"),
    ({"METERING_SECURITY_PROTOCOL": "SSL", "METERING_SSL_KEYFILE": "/etc/hostname"},
     "ssl_keyfile: set without ssl_certfile"),
])
def test_inconsistent_combinations_are_named(env: dict[str, str], needle: str) -> None:
    assert needle in problems(env)


def test_sasl_ssl_options_for_aiokafka_and_faust(certs: dict[str, str]) -> None:
    import faust

    s = load_settings(env=sasl_env(certs["ca"]))
    options = aiokafka_options(s)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "metering"
    assert options["sasl_plain_password"] == SECRET
    ctx = options["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.check_hostname
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    credentials = faust_options(s)["broker_credentials"]
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol.value == "SASL_SSL"
    assert credentials.mechanism.value == "SCRAM-SHA-512"
    assert SECRET not in repr(credentials)


def test_mutual_tls_options(certs: dict[str, str]) -> None:
    import faust

    s = load_settings(env={"METERING_SECURITY_PROTOCOL": "SSL",
                           "METERING_SSL_CAFILE": certs["ca"],
                           "METERING_SSL_CERTFILE": certs["cert"],
                           "METERING_SSL_KEYFILE": certs["key"],
                           "METERING_SSL_CHECK_HOSTNAME": "false"})
    options = aiokafka_options(s)
    assert options["security_protocol"] == "SSL"
    assert "sasl_mechanism" not in options
    assert not options["ssl_context"].check_hostname
    assert isinstance(faust_options(s)["broker_credentials"], faust.SSLCredentials)
    assert kafkacheck.principal(s) == "metering"  # the certificate's CN


def test_tools_take_the_security_of_the_environment(certs: dict[str, str]) -> None:
    env = {**sasl_env(certs["ca"]), "METERING_PARTITIONS": "not-a-number"}
    options = client_options("127.0.0.1:1234", env)  # other settings are not read
    assert options["bootstrap_servers"] == "127.0.0.1:1234"
    assert options["sasl_plain_username"] == "metering"


def test_the_password_never_appears_in_any_output(certs: dict[str, str], tmp_path: Path) -> None:
    env = sasl_env(certs["ca"])
    s = load_settings(env=env)
    assert SECRET not in repr(s)
    assert SECRET not in json.dumps(s.masked())
    assert SECRET not in describe(s)
    assert SECRET not in s.fingerprint()
    assert redact(f"boom {SECRET} boom", s) == "boom ******** boom"
    out = subprocess.run([sys.executable, "-m", "agents", "check-config"],
                         env={**os.environ, **env}, capture_output=True, text=True, check=True)
    assert SECRET not in out.stdout + out.stderr
    assert '"sasl_username": "metering"' in out.stdout
    # an invalid combination: every problem named, still no password
    bad = subprocess.run([sys.executable, "-m", "agents", "check-config"],
                         env={**os.environ, **env, "METERING_SASL_MECHANISM": "MD5"},
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert "sasl_mechanism" in bad.stderr
    assert SECRET not in bad.stdout + bad.stderr


def test_password_file_with_sasl(certs: dict[str, str], tmp_path: Path) -> None:
    secret_file = tmp_path / "pw"
    secret_file.write_text(SECRET + "\n")
    env = {k: v for k, v in sasl_env(certs["ca"]).items() if k != "METERING_SASL_PASSWORD"}
    s = load_settings(env={**env, "METERING_SASL_PASSWORD_FILE": str(secret_file)})
    assert aiokafka_options(s)["sasl_plain_password"] == SECRET


def test_readme_lists_exactly_the_acls_of_the_code() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert acls.markdown_table(Settings()) in readme


def test_acls_are_least_privilege() -> None:
    s = Settings()
    worker = acls.required(s, "worker")
    assert {a.operation for a in worker} <= {"Read", "Write", "Create"}
    assert not any(a.resource == "cluster" for r in acls.ROLES for a in acls.required(s, r))
    assert acls.Acl("topic", "LITERAL", "cs", "Read") in [
        acls.Acl(a.resource, a.pattern, a.name, a.operation) for a in worker]
    assert not any(a.name == "cs" and a.operation == "Write" for a in worker)
    prefixed = [a for a in worker if a.pattern == "PREFIXED"]
    assert {a.name for a in prefixed} == {"metering-"}
    assert {a.name for a in acls.required(s, "archive") if a.resource == "group"} == {
        "metering-archive"}
    assert acls.required(s, "simulate")[0].command("sim") == (
        "kafka-acls --bootstrap-server BROKER --command-config admin.properties --add "
        "--allow-principal User:sim --operation Write --topic cs")


def test_secure_broker_properties() -> None:
    extra = secure_server_properties(sasl_port=1, ssl_port=2, controller_port=3,
                                     keystore="/k.p12", store_password="sp", truststore="/ca",
                                     admin_password="ap")
    assert extra["listeners"] == ("SASL_SSL://127.0.0.1:1,SSL://127.0.0.1:2,"
                                  "CONTROLLER://127.0.0.1:3")
    assert extra["authorizer.class.name"].endswith("StandardAuthorizer")
    assert extra["allow.everyone.if.no.acl.found"] == "false"
    assert extra["listener.name.ssl.ssl.client.auth"] == "required"
    assert extra["sasl.enabled.mechanisms"] == "SCRAM-SHA-512,SCRAM-SHA-256"
    assert "PLAINTEXT://" not in extra["listeners"]
    plain = render_server_properties(client_port=1, controller_port=3, log_dir="/x")
    assert "authorizer" not in plain  # make demo stays PLAINTEXT
    assert scram_arguments({"u": "p"}) == ["--add-scram=SCRAM-SHA-512=[name=u,password=p]",
                                           "--add-scram=SCRAM-SHA-256=[name=u,password=p]"]


def test_topic_prefix_goes_before_every_topic_and_group_once() -> None:
    s = load_settings(env={"METERING_TOPIC_PREFIX": "tenant-a.", "METERING_INPUT_TOPIC": "cs"})
    assert (s.app_id, s.input_topic, s.usage_topic, s.rejects_topic, s.events_topic) == (
        "tenant-a.metering", "tenant-a.cs", "tenant-a.usage", "tenant-a.metering.rejected",
        "tenant-a.metering.events")
    # the groups, changelogs, leader and grid topics derive from app_id
    assert all(a.name.startswith("tenant-a.") for r in acls.ROLES for a in acls.required(s, r))
    assert {(a.resource, a.pattern, a.name) for a in acls.tenant_acls("tenant-a.")} == {
        ("topic", "PREFIXED", "tenant-a."), ("group", "PREFIXED", "tenant-a.")}
    assert "topic_prefix: 'a/b' is not valid" in problems({"METERING_TOPIC_PREFIX": "a/b"})
    out = subprocess.run([sys.executable, "-m", "agents", "check-config", "--topic-prefix",
                          "t."], capture_output=True, text=True, check=True)
    assert '"input_topic": "t.cs"' in out.stdout  # once, though the CLI loads twice


def test_topic_prefix_goes_before_each_regional_input_and_route_target() -> None:
    s = load_settings(env={"METERING_TOPIC_PREFIX": "ta.",
                           "METERING_INPUT_TOPICS": "cs.a=a, cs.b=b",
                           "METERING_ROUTES": "ActionEvent.*.Account.*=accounts,"
                                              "UsageEvent.VM-START.#=vm"})
    assert s.input_topics == "ta.cs.a=a,ta.cs.b=b"
    assert s.routes == "ActionEvent.*.Account.*=ta.accounts,UsageEvent.VM-START.#=ta.vm"
    assert "routes: target" in problems({"METERING_TOPIC_PREFIX": "ta.",
                                         "METERING_INPUT_TOPICS": "cs.a=a",
                                         "METERING_ROUTES": "UsageEvent.#=cs.a"})


def test_faust_derives_changelogs_and_group_from_the_prefixed_app_id() -> None:
    from agents.faustapp import make_app

    s = load_settings(env={"METERING_TOPIC_PREFIX": "tb."})
    app = make_app(s)
    table = app.Table("meters", default=None)
    assert app.conf.id == "tb.metering"  # the consumer group
    assert table.changelog_topic.get_topic_name() == "tb.metering-meters-changelog"
    assert app._leader_assignor._leader_topic_name == "tb.metering-__assignor-__leader"
