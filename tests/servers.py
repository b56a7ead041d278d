"""Throwaway servers for the distributed tier: a PostgreSQL 15 cluster and an MLflow tracking
server backed by it, each on a free loopback port, stopped and deleted afterwards.

PostgreSQL's ``initdb`` refuses to run as root; as root the cluster belongs to the ``postgres``
user (``runuser``), in a folder of its own under the system temp dir (pytest's tmp folders are
private to root). Passwords never appear in a URL or a command line: clients get them through
``PGPASSWORD``, which libpq and psycopg read.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

USER = "tinyexp"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _postgres_bin(name: str) -> str | None:
    """``initdb``/``pg_ctl`` on PATH, or in Debian's versioned folder."""
    found = shutil.which(name)
    if found:
        return found
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (folder / name).exists():
            return str(folder / name)
    return None


def postgres_missing() -> str | None:
    """Why the PostgreSQL tier cannot run here, or None."""
    for name in ("initdb", "pg_ctl"):
        if _postgres_bin(name) is None:
            return f"{name} not found (install Debian's postgresql package)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[distributed]')"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser (initdb refuses root)"
    return None


@dataclass
class Postgres:
    host: str
    port: int
    user: str
    password: str
    data_dir: Path

    def url(self, database: str, driver: str = "postgresql+psycopg") -> str:
        """An SQLAlchemy URL without the password (it comes from PGPASSWORD)."""
        return f"{driver}://{self.user}@{self.host}:{self.port}/{database}"

    def env(self) -> dict[str, str]:
        return {**os.environ, "PGPASSWORD": self.password}

    def ctl(self, action: str, *extra: str) -> None:
        """``pg_ctl`` on this cluster (``stop``, ``start``, ``restart``)."""
        options = f"-c listen_addresses={self.host} -p {self.port} -k {self.data_dir.parent}"
        command = [_postgres_bin("pg_ctl"), "-D", str(self.data_dir), "-l",
                   str(self.data_dir.parent / "server.log"), "-o", options, "-w", action, *extra]
        subprocess.run(_as_owner(command), check=True, capture_output=True, timeout=120)


def _as_owner(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextmanager
def postgres(databases: tuple[str, ...] = ("optuna", "mlflow")) -> Iterator[Postgres]:
    """A PostgreSQL cluster on a free loopback port with ``databases``, password auth only."""
    import psycopg

    root = Path(tempfile.mkdtemp(prefix="tinyexp-pg-"))
    password = os.urandom(12).hex()
    server = Postgres("127.0.0.1", free_port(), USER, password, root / "data")
    try:
        (root / "pw").write_text(password + "\n")
        if os.geteuid() == 0:
            shutil.chown(root, "postgres")
            shutil.chown(root / "pw", "postgres")
        subprocess.run(_as_owner([_postgres_bin("initdb"), "-D", str(server.data_dir), "-U", USER,
                                  "--pwfile", str(root / "pw"), "--auth", "scram-sha-256",
                                  "-E", "UTF8", "--no-sync"]),
                       check=True, capture_output=True, timeout=120)
        (root / "pw").unlink()
        server.ctl("start")
        with psycopg.connect(host=server.host, port=server.port, user=USER, password=password,
                             dbname="postgres", autocommit=True) as conn:
            for name in databases:
                conn.execute(f'CREATE DATABASE "{name}"')
        yield server
    finally:
        if (server.data_dir / "postmaster.pid").exists():
            try:
                server.ctl("stop", "-m", "immediate")
            except subprocess.CalledProcessError:
                pass
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class MlflowServer:
    url: str
    artifacts: Path
    log: Path


@contextmanager
def mlflow_server(db: Postgres, workdir: Path) -> Iterator[MlflowServer]:
    """``mlflow server`` with its runs in ``db``'s ``mlflow`` database and its artifacts in
    ``workdir/artifacts``, served through the server (``--serve-artifacts``)."""
    port = free_port()
    artifacts = workdir / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    log = workdir / "mlflow-server.log"
    command = [sys.executable, "-m", "mlflow", "server",
               "--backend-store-uri", db.url("mlflow"),
               "--artifacts-destination", artifacts.as_uri(), "--serve-artifacts",
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, env=db.env(), stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    server = MlflowServer(f"http://127.0.0.1:{port}", artifacts, log)
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {process.returncode}:\n"
                                   f"{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{server.url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server not up after 180 s:\n"
                                   f"{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield server
    finally:
        try:
            os.killpg(process.pid, 15)
            process.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(process.pid, 9)
