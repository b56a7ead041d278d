"""docker/: the compose file of a distributed search is valid and its images can be built.

Without a Docker engine or the compose plugin, the compose file is checked against the Compose
Specification's JSON schema (tests/fixtures/compose-spec.json, see tests/fixtures/README.md),
every file a build or a mount needs is looked up in the repository, and the database password
is shown to come only from the environment: no URL, command or config holds it.
"""

from __future__ import annotations

import json
import re
import shlex
import urllib.parse
from pathlib import Path

import pytest
import yaml
from support import ROOT, compose

DOCKER = ROOT / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
SCHEMA = ROOT / "tests" / "fixtures" / "compose-spec.json"
STORAGE = "postgresql+psycopg://tinyexp@db:5432/optuna"
# A URL with a password in it: scheme://user:password@host
CREDENTIALS = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]*@", re.IGNORECASE)
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])[^}]*)?\}")


def _compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _services() -> dict:
    return _compose()["services"]


def _builds() -> list[tuple[str, Path, Path]]:
    """(service, build context, Dockerfile) of every service that builds its image."""
    out = []
    for name, service in _services().items():
        build = service.get("build")
        if build is None:
            continue
        build = {"context": build} if isinstance(build, str) else build
        context = (DOCKER / build.get("context", ".")).resolve()
        out.append((name, context, context / build.get("dockerfile", "Dockerfile")))
    return out


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1])
            for line in lines if line and not line.startswith("#")]


def _copy_sources() -> list[tuple[str, Path, str]]:
    """(Dockerfile name, build context, source) of every COPY/ADD from the build context."""
    out = []
    for _, context, dockerfile in _builds():
        for op, args in _instructions(dockerfile):
            words = shlex.split(args)
            if op in ("COPY", "ADD") and not any(w.startswith("--from") for w in words):
                sources = [w for w in words if not w.startswith("--")][:-1]
                out += [(dockerfile.name, context, s) for s in sources]
    return sorted(set(out))


def _env(service: str) -> dict[str, str]:
    env = _services()[service].get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _from_environment_only(value: str, variable: str = "POSTGRES_PASSWORD") -> bool:
    """``value`` is nothing but an interpolation of ``variable``: ``${VAR}`` / ``${VAR:?...}``."""
    match = INTERPOLATION.fullmatch(value)
    return bool(match) and match.group(1) == variable and match.group(2) in (None, ":?", "?")


# ----------------------------------------------------------------------------- the compose file


def test_the_compose_file_is_valid_against_the_compose_specification():
    jsonschema = pytest.importorskip("jsonschema", reason="pip install -e '.[dev]'")
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in validator.iter_errors(_compose())]
    assert not errors, errors
    # The schema has teeth: a misspelt key and a wrong depends_on condition are refused.
    broken = _compose()
    broken["services"]["worker"]["enviroment"] = {}
    broken["services"]["mlflow"]["depends_on"]["db"]["condition"] = "service_ready"
    assert len(list(validator.iter_errors(broken))) == 2


def test_the_services_of_a_distributed_search_are_there():
    services = _services()
    assert {"db", "mlflow", "worker"} <= set(services)
    assert services["db"]["image"].startswith("postgres:15")
    assert "pg_isready" in services["db"]["healthcheck"]["test"]
    for name in ("mlflow", "worker"):
        assert services[name]["depends_on"]["db"]["condition"] == "service_healthy", name
    assert services["worker"]["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert "container_name" not in services["worker"]  # --scale worker=N needs free names
    assert not services["worker"].get("ports")
    named = set(_compose()["volumes"])
    volumes = {v.split(":")[0] for s in services.values() for v in s.get("volumes", [])}
    assert {"pgdata", "mlartifacts"} <= volumes & named


def test_every_file_a_build_or_a_mount_needs_is_in_the_repository():
    assert _builds(), "no service builds an image"
    for name, context, dockerfile in _builds():
        assert context.is_dir(), f"{name}: build context {context}"
        assert dockerfile.is_file(), f"{name}: {dockerfile}"
    for name, service in _services().items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):  # a bind mount, not a named volume
                assert (DOCKER / source).exists(), f"{name}: {volume}"


@pytest.mark.parametrize("dockerfile,context,source", _copy_sources(),
                         ids=[f"{d}:{s}" for d, _, s in _copy_sources()])
def test_every_copy_source_is_in_the_build_context(dockerfile, context, source):
    # plugins/ (the sweeper distribution) comes from its own branch: until it is merged this
    # case fails, as the image build would.
    assert (context / source).exists(), f"{dockerfile}: COPY {source}: no {context / source}"
    ignored = [p for p in _paths_under(context / source, context) if _ignored(p)]
    assert not ignored, f"{dockerfile}: COPY {source}: .dockerignore drops {ignored[:5]}"


def test_every_folder_pip_installs_is_copied_in_first():
    """``pip install ./plugins/...`` needs the folder in the context (after the merge of the
    sweeper's branch) and a COPY that brings it in before that RUN."""
    for _, context, dockerfile in _builds():
        copied: list[str] = []
        for op, args in _instructions(dockerfile):
            words = shlex.split(args)
            if op == "COPY":
                copied += [w.rstrip("/") for w in words[:-1] if not w.startswith("--")]
            elif op == "RUN" and "pip install" in args:
                for path in (w for w in words if w.startswith("./")):
                    path = path.removeprefix("./").rstrip("/")
                    assert any(path == c or path.startswith(c + "/") for c in copied), path
                    assert any((context / path / f).is_file()
                               for f in ("pyproject.toml", "setup.py")), f"{path}: no package"


def test_the_dockerfile_installs_cpu_torch_then_the_sweeper_then_tinyexp():
    runs = [args for op, args in _instructions(DOCKER / "Dockerfile") if op == "RUN"]

    def first(text: str) -> int:
        return next(i for i, args in enumerate(runs) if text in args)

    assert "download.pytorch.org/whl/cpu" in runs[first("torch==")]
    assert first("torch==") < first("./plugins/hydra_optuna5_sweeper") < first(".[deploy,")
    assert '".[deploy,distributed]"' in runs[first(".[deploy,")]
    mlflow_image = (DOCKER / "mlflow.Dockerfile").read_text()
    assert '"mlflow>=3,<4"' in mlflow_image and '"psycopg[binary]"' in mlflow_image


# ----------------------------------------------------------------------------- the password


def test_no_password_literal_in_the_compose_file():
    text = COMPOSE_FILE.read_text()
    assert not CREDENTIALS.search(text), CREDENTIALS.search(text).group(0)
    secret = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN", re.IGNORECASE)
    for name in _services():
        for key, value in _env(name).items():
            if secret.search(key):
                assert _from_environment_only(value), f"{name}: {key}={value}"


def test_the_workers_storage_url_has_no_password():
    worker = _services()["worker"]
    command = worker["command"]
    assert command[:2] == ["-m", "search=memory_budget"]
    storage = next(a.split("=", 1)[1] for a in command if a.startswith("hydra.sweeper.storage="))
    assert storage == STORAGE
    url = urllib.parse.urlsplit(storage)
    assert (url.username, url.password) == ("tinyexp", None)
    env = _env("worker")
    assert _from_environment_only(env["PGPASSWORD"])  # libpq reads it; no URL holds it
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_the_mlflow_backend_uri_reads_the_password_only_from_the_environment():
    command = _services()["mlflow"]["command"]
    command = shlex.split(command) if isinstance(command, str) else command
    assert command[:2] == ["mlflow", "server"]
    uri = urllib.parse.urlsplit(command[command.index("--backend-store-uri") + 1])
    assert uri.scheme == "postgresql+psycopg" and uri.hostname == "db"
    assert (uri.username, uri.password) == ("tinyexp", None)
    assert _from_environment_only(_env("mlflow")["PGPASSWORD"])
    assert "--serve-artifacts" in command
    destination = command[command.index("--artifacts-destination") + 1]
    mounts = dict(v.split(":")[:2][::-1] for v in _services()["mlflow"]["volumes"])
    assert mounts.get(destination) in _compose()["volumes"], "artifacts on a named volume"
    assert any(str(p).endswith(":5000") for p in _services()["mlflow"]["ports"])


def test_every_variable_the_compose_file_needs_is_in_the_example_env_file():
    example = (DOCKER / ".env.example").read_text()
    defined = set(re.findall(r"^#?\s*([A-Z_][A-Z0-9_]*)=", example, re.MULTILINE))
    for variable, mode in INTERPOLATION.findall(COMPOSE_FILE.read_text()):
        if mode not in (":-", "-"):  # no default: the user must set it
            assert variable in defined, f"${{{variable}}} is not in docker/.env.example"


# ----------------------------------------------------------------------------- the worker


def test_the_worker_command_composes_with_the_real_config():
    """The worker's overrides are keys the config has (a typo would fail every worker)."""
    overrides = [a for a in _services()["worker"]["command"] if a != "-m"]
    cfg = compose(overrides, hydra=True)
    assert cfg.hydra.sweeper.storage == STORAGE
    lock = cfg.measure.latency_lock
    # Every worker container mounts the lock's folder from one volume: they time in turn.
    mounts = dict(v.split(":")[:2][::-1] for v in _services()["worker"]["volumes"])
    assert mounts.get(str(Path(lock).parent)) in _compose()["volumes"], lock


def test_dockerignore_keeps_out_environments_results_caches_and_secrets():
    for path in (".venv/bin/python", ".venv-cpu/bin/python", ".git/HEAD", "multirun/a/0/x.onnx",
                 "outputs/2026-01-01/x", "mlruns/0/meta.yaml", "mlflow.db",
                 ".tinyexp_cache/k.pt", "tinyexp/__pycache__/a.cpython-311.pyc", "tinyexp/a.pyc",
                 "mutants/tinyexp/cost.py", "docker/.env", ".env", "tests/tmp/x"):
        assert _ignored(path), path
    assert not _ignored("docker/.env.example")


# ----------------------------------------------------------------------------- .dockerignore


def _patterns() -> list[tuple[bool, re.Pattern]]:
    """(negated, regex) of each .dockerignore line, in order (the last match decides)."""
    out = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated, line = line.startswith("!"), line.lstrip("!").strip("/")
        regex = re.escape(line).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        out.append((negated, re.compile(regex)))
    return out


def _ignored(path: str) -> bool:
    """Whether Docker leaves ``path`` (relative to the context) out: a pattern matching the
    path or one of its parent folders excludes it, a later ``!pattern`` brings it back."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for negated, regex in _patterns():
        if any(regex.fullmatch(p) for p in prefixes):
            ignored = not negated
    return ignored


def _paths_under(source: Path, context: Path) -> list[str]:
    if source.is_file():
        return [source.relative_to(context).as_posix()]
    return [p.relative_to(context).as_posix() for p in source.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts]


# ----------------------------------------------------------------------------- the README


def _readme_scale_out() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Scale out")
    return text[start:text.index("\n## ", start + 1)]


def test_the_readme_scale_out_section_matches_the_compose_file():
    section = _readme_scale_out()
    # the command it shows is the one the compose file's header gives
    (up,) = [line.split("#")[0].strip() for line in section.splitlines()
             if line.startswith("docker compose ")]
    assert "--scale worker=4" in up
    assert up.replace("--scale worker=4", "--scale worker=") in \
        COMPOSE_FILE.read_text().replace("--scale worker=4", "--scale worker=")
    # every service, volume and mount folder it names is in the file, every service is named
    services = _services()
    named = set(re.findall(r"`([a-z-]+)` \(", section)) | (
        {"worker"} if "`worker`" in section else set())
    assert named == set(services), named
    assert {v for v in ("mlartifacts", "pgdata", "runs", "locks") if f"`{v}`" in section} <= \
        set(_compose()["volumes"])
    mounts = {m.split(":")[1] for m in services["worker"]["volumes"]}
    assert {"/runs", "/locks"} <= mounts and "`/runs`" in section and "`/locks`" in section
    assert "PGPASSWORD" in section and "POSTGRES_PASSWORD" in section


def test_the_readme_validation_command_runs_and_says_valid():
    import subprocess
    import sys

    (line,) = [line for line in _readme_scale_out().splitlines()
               if line.startswith(".venv/bin/python -c")]
    code = shlex.split(line)[2]
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "docker/compose.yaml: valid"
