"""The layout of ``agents/`` (issue 18, item 5): one module per agent or concern, apps built
by ``create_app(settings)``, no import-time side effects, no import cycles, and every
private Faust/mode/aiokafka internal in :mod:`agents.faustapi`.

* Each module of ``agents`` imports on its own in a fresh interpreter, with an invalid
  ``METERING_*`` environment, and then has built no Faust app, patched no Faust class,
  started no thread, written nothing to the console and created no file: what a module
  does at import is defining things (``create_app`` does the rest).
* The import graph of ``agents`` (imports inside functions included) has no cycle.
* No module but :mod:`agents.faustapi` imports a faust/mode submodule other than
  ``faust.types`` or reads a private attribute of a library object.

Each check also runs on planted examples, to show it can fail.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import faust
import pytest

ROOT = Path(__file__).resolve().parents[2]
AGENTS = ROOT / "agents"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(_module_name(p) for p in AGENTS.rglob("*.py") if p.name != "__main__.py")
"""Every module of ``agents`` (``__main__`` runs the command line: it is a script)."""

SIDE_EFFECTS = r"""
import gc, io, os, sys, threading
out, err = io.StringIO(), io.StringIO()
real_out, real_err = sys.stdout, sys.stderr
sys.stdout, sys.stderr = out, err
threads = threading.active_count()
import importlib
try:
    importlib.import_module(sys.argv[1])
finally:
    sys.stdout, sys.stderr = real_out, real_err
found = []
if out.getvalue() or err.getvalue():
    found.append(f"console output {out.getvalue() + err.getvalue()!r}")
if threading.active_count() != threads:
    found.append(f"{threading.active_count() - threads} thread(s) started")
if "faust.app.base" in sys.modules:
    from faust.app.base import App
    apps = [o for o in gc.get_objects() if isinstance(o, App)]
    if apps:
        found.append(f"Faust app(s) built: {[a.conf.id for a in apps]}")
if "faust.tables.recovery" in sys.modules:
    from faust.tables.recovery import Recovery
    from faust.transport.producer import ProducerBuffer
    if not Recovery.on_recovery_completed.__module__.startswith("faust"):
        found.append("Recovery.on_recovery_completed patched")
    if ProducerBuffer.max_messages != 100:
        found.append("ProducerBuffer.max_messages changed")
if os.listdir("."):
    found.append(f"files created: {os.listdir('.')}")
print("; ".join(found))
"""


def _import_alone(module: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Import ``module`` in a fresh interpreter run in ``cwd``, with settings that would not
    load (any module reading them at import fails); stdout: the side effects found."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "METERING_PARTITIONS": "not-a-number",
           "METERING_BROKER": ""}
    return subprocess.run([sys.executable, "-c", SIDE_EFFECTS, module], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_alone_without_side_effects(module: str, tmp_path: Path) -> None:
    run = _import_alone(module, tmp_path)
    assert run.returncode == 0, f"import {module} failed alone:\n{run.stderr[-2000:]}"
    assert run.stdout.strip() == "", f"import {module}: {run.stdout.strip()}"


def test_the_side_effect_check_catches_planted_effects(tmp_path: Path) -> None:
    pkg = tmp_path / "planted"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "loud.py").write_text("print('hello')\n")
    (pkg / "builds.py").write_text(
        "from agents.faustapp import make_app\nfrom metering.settings import Settings\n"
        "app = make_app(Settings())\n")
    (pkg / "reads_env.py").write_text(
        "from metering.settings import load_settings\nsettings = load_settings()\n")
    work = tmp_path / "work"
    work.mkdir()

    def effects(module: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}",
               "METERING_PARTITIONS": "not-a-number"}
        return subprocess.run([sys.executable, "-c", SIDE_EFFECTS, module], cwd=work,
                              env=env, capture_output=True, text=True, timeout=120)

    assert "console output" in effects("planted.loud").stdout
    built = effects("planted.builds").stdout
    assert "Faust app(s) built" in built
    assert "patched" in built
    assert effects("planted.reads_env").returncode != 0


def test_create_app_builds_what_import_did_not(tmp_path: Path) -> None:
    """The worker's app: ``create_app`` installs the patches, builds the app, registers a
    pipeline of its own on it; each call builds a new app (no pipeline state is shared:
    two apps of other settings live side by side); ``agents.app.app`` is the app of the
    environment, built on first use."""
    code = (
        "import agents.app as a, agents.faustapi as f, agents.pipeline as p\n"
        "from metering.settings import Settings\n"
        "assert not f.patches_installed() and '_default' in vars(a) and a._default is None\n"
        "assert not [n for n, v in vars(p).items() if type(v).__module__.startswith("
        "('faust', 'mode', 'agents.observe', 'agents.state', 'agents.liveness'))]\n"
        "s = Settings(app_id='layout-test')\n"
        "app = a.create_app(s)\n"
        "assert f.patches_installed() and a._default is None\n"
        "assert app.conf.id == 'layout-test' and sorted(app.tables) == ['accounts', 'entities']\n"
        "assert sorted(a.state_topics(app)) == ['layout-test-accounts-changelog', "
        "'layout-test-entities-changelog', 'metering.events'], sorted(a.state_topics(app))\n"
        "other = a.create_app(Settings(app_id='other', events_topic='other.events'))\n"
        "assert other is not app and a.create_app(s) is not app\n"
        "assert sorted(a.state_topics(other)) == ['other-accounts-changelog', "
        "'other-entities-changelog', 'other.events'], sorted(a.state_topics(other))\n"
        "assert app.tables['entities'] is not other.tables['entities']\n"
        "assert a.app is a.app and a.app.conf.id == 'from-env' and a.settings.app_id == "
        "'from-env'\n"
        "assert a.app is not app and sorted(a.state_topics()) == ['from-env-accounts-changelog', "
        "'from-env-entities-changelog', 'metering.events']\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, timeout=120,
                   env={**os.environ, "PYTHONPATH": str(ROOT), "METERING_APP_ID": "from-env"})


def test_register_builds_one_pipeline_per_app() -> None:
    """``agents.pipeline.register``: the topics, tables, meters, lane clocks, counters,
    liveness and observability belong to the returned pipeline, one per app (the tasks,
    timers and rebalance handlers it registers run in the worker integration tests)."""
    from agents.faustapi import use_batch_fetches
    from agents.faustapp import make_app
    from agents.pipeline import Pipeline, register
    from metering.settings import Settings

    settings = Settings(app_id="register-test")
    pipelines: list[Pipeline] = []
    for _ in range(2):
        app = make_app(settings)
        use_batch_fetches(app, [(settings.input_topic,), settings.events_topic])
        pipeline = register(app, settings)
        assert pipeline.app is app
        assert pipeline.settings is settings
        assert pipeline.entities_table is app.tables["entities"]
        assert pipeline.accounts_table is app.tables["accounts"]
        assert pipeline.events_topic in app.topics
        assert pipeline.input_topic in app.topics
        assert pipeline.observability.monitor is not None
        pipelines.append(pipeline)
    first, second = pipelines
    for name in ("meters", "lane_progress", "owned_lanes", "read_to", "stats", "liveness",
                 "observability", "input_partitions_read", "pending"):
        assert getattr(first, name) is not getattr(second, name), name


def test_faust_cli_finds_both_apps_by_module(tmp_path: Path) -> None:
    """``faust -A agents.app worker`` and ``faust -A agents.archive worker``: Faust's own
    lookup (``find_app``) gets each module's ``app``, built from the environment (and runs
    the worker-init handlers: the archive takes its directory's lock)."""
    code = (
        "import importlib\n"
        "from faust.cli.base import find_app\n"
        "worker = find_app('agents.app', imp=importlib.import_module)\n"
        "archive = find_app('agents.archive', imp=importlib.import_module)\n"
        "assert worker.conf.id == 'from-env', worker.conf.id\n"
        "assert archive.conf.id == 'from-env-archive', archive.conf.id\n"
        "assert not archive.agents, list(archive.agents)  # a task reads whole fetches\n"
        "assert 'usage' in {t.get_topic_name() for t in archive.topics}\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, timeout=120,
                   env={**os.environ, "PYTHONPATH": str(ROOT), "METERING_APP_ID": "from-env",
                        "METERING_ARCHIVE_DIR": str(tmp_path / "archive")})
    assert (tmp_path / "archive" / ".metering-archive.lock").exists()


def test_archive_create_app_builds_a_new_app_each_call(tmp_path: Path) -> None:
    from agents.archive import create_app
    from metering.settings import Settings

    settings = Settings(archive_dir=tmp_path)
    first, second = create_app(settings), create_app(settings)
    assert first is not second
    assert isinstance(first, faust.App)
    assert first.conf.id == f"{settings.app_id}-archive"
    assert first.conf.web_port == settings.archive_web_port
    assert not first.agents  # a task reads whole fetches of the usage topic
    for app in (first, second):
        assert settings.usage_topic in {t.get_topic_name() for t in app.topics}
    assert first.topics is not second.topics


# --- import cycles -------------------------------------------------------------------------

def import_graph(root: Path, package: str = "agents") -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports (at any depth: inside functions too;
    ``from pkg import name`` counts as importing ``pkg.name`` when that is a module)."""
    files = {_module_name_under(p, root): p for p in (root / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                subs = {f"{node.module}.{a.name}" for a in node.names}
                found = subs & files.keys()
                targets |= found or {node.module}
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def _module_name_under(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_agents_has_no_import_cycle() -> None:
    found = cycles(import_graph(ROOT))
    assert found == [], f"import cycles in agents/: {sorted(map(sorted, found))}"


def test_the_cycle_finder_catches_a_planted_cycle(tmp_path: Path) -> None:
    pkg = tmp_path / "agents"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from agents.sub import b\n")
    (pkg / "sub" / "b.py").write_text("import agents.c\n")
    (pkg / "c.py").write_text("from agents import a\n")
    (pkg / "d.py").write_text("from agents.a import f\n")
    assert cycles(import_graph(tmp_path)) == [{"agents.a", "agents.sub.b", "agents.c"}]


# --- private internals only in agents.faustapi --------------------------------------------

PUBLIC_FAUST_MODULES = {"faust", "faust.types"}
"""faust modules any agents module may import; every other faust/mode one is faustapi's."""

STDLIB_PRIVATE = {"os._exit", "argparse._SubParsersAction", "ssl._ssl",
                  "ssl._ssl._test_decode_cert"}
"""Private names of the standard library (not Faust/mode/aiokafka internals)."""


def _project_names(root: Path) -> set[str]:
    """Every name the project itself defines (functions, classes, attributes, variables,
    keywords), except in faustapi (whose overrides carry the libraries' private names)."""
    names: set[str] = set()
    for top in ("metering", "storage", "agents", "bench", "tools", "tests"):
        for path in (root / top).rglob("*.py"):
            if path.name == "faustapi.py" and path.parent.name == "agents":
                continue
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    names.add(node.name)
                elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                    names.add(node.id)
                elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                    names.add(node.attr)
                elif isinstance(node, ast.arg | ast.keyword) and node.arg:
                    names.add(node.arg)
    return names


def private_uses(root: Path) -> list[tuple[str, str]]:
    """(file, expression) of each read of a private attribute the project does not define,
    in every ``agents`` module but faustapi."""
    defined = _project_names(root)
    found = []
    for path in sorted((root / "agents").rglob("*.py")):
        if path.name == "faustapi.py" and path.parent.name == "agents":
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                    and not node.attr.startswith("__") and node.attr not in defined):
                found.append((path.relative_to(root).as_posix(), ast.unparse(node)))
    return found


def internal_imports(root: Path) -> list[tuple[str, str]]:
    """(file, module) of each faust/mode submodule imported outside faustapi, other than
    :data:`PUBLIC_FAUST_MODULES`."""
    found = []
    for path in sorted((root / "agents").rglob("*.py")):
        if path.name == "faustapi.py" and path.parent.name == "agents":
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module
                     else [])
            found += [(path.relative_to(root).as_posix(), n) for n in names
                      if n.split(".")[0] in ("faust", "mode") and n not in PUBLIC_FAUST_MODULES]
    return found


def test_private_library_attributes_are_read_only_in_faustapi() -> None:
    found = [(f, e) for f, e in private_uses(ROOT) if e not in STDLIB_PRIVATE]
    assert found == [], ("private Faust/mode/aiokafka attributes outside agents/faustapi.py "
                         f"(move them there, pinned in test_faust_internals.py): {found}")


def test_faust_internals_are_imported_only_by_faustapi() -> None:
    assert internal_imports(ROOT) == []


def test_the_internals_checks_catch_planted_uses(tmp_path: Path) -> None:
    pkg = tmp_path / "agents"
    pkg.mkdir()
    for top in ("metering", "storage", "bench", "tools", "tests"):
        (tmp_path / top).mkdir()
    (pkg / "faustapi.py").write_text("def _drain_messages(self): ...\n")
    (pkg / "mine.py").write_text(
        "from faust.tables.recovery import Recovery\nimport faust.types\n"
        "class X:\n    def _own(self): ...\n"
        "def f(app, x):\n    app._fetcher.start(); x._own(); app.consumer._drain_messages()\n")
    assert internal_imports(tmp_path) == [("agents/mine.py", "faust.tables.recovery")]
    assert sorted(private_uses(tmp_path)) == [("agents/mine.py", "app._fetcher"),
                                              ("agents/mine.py", "app.consumer._drain_messages")]


def test_simulate_default_start_is_the_cores() -> None:
    """The simulate parser's help names the core's default start (the run reads the core's
    value: no import from the parser back to the run)."""
    from agents.cli.simulate import DEFAULT_START
    from metering.eventtime import iso
    from metering.simulate.cloud import SimConfig

    assert iso(SimConfig.start_ms) == DEFAULT_START
