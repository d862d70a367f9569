"""Helpers of the reliability suite: PostgreSQL schemas, `lcore serve` subprocesses, configs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml

from lcore_core.testing.llama_stack import free_port

LCORE = Path(sys.executable).parent / "lcore"
PG: dict[str, Any] = {"host": "127.0.0.1", "port": 5432, "db": "test", "user": "postgres",
                      "ssl_mode": "disable", "gss_encmode": "disable"}


def pg_connect(port: int = PG["port"]) -> Any:
    """A connection to the machine's PostgreSQL (or the one on `port`); a missing server fails
    the test (never skips)."""
    try:
        conn = psycopg.connect(host=PG["host"], port=port, dbname=PG["db"],
                               user=PG["user"], connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL on {PG['host']}:{port} is required: {exc}")
    conn.autocommit = True
    return conn


def _postgres_bin(name: str) -> str:
    """A PostgreSQL server program: on PATH, else the newest under /usr/lib/postgresql."""
    import glob
    import shutil

    found = shutil.which(name) or (sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or
                                   [None])[-1]
    if found is None:
        pytest.fail(f"PostgreSQL's {name} is required (the postgresql server package)")
    return found


class OwnPostgres:
    """A PostgreSQL cluster of one test alone (initdb in a temporary directory, a free port,
    trust auth, database `test`), so the test may stop and restart the real server.

    As root, the server programs run as the `postgres` user (PostgreSQL refuses root).
    """

    def __init__(self) -> None:
        import tempfile

        self.dir = Path(tempfile.mkdtemp(prefix="lcore-own-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:
            import pwd
            import shutil

            user = pwd.getpwnam("postgres")
            shutil.chown(self.dir, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    def _run(self, *command: str, timeout: float = 60) -> None:
        done = subprocess.run([*self._as, *command], capture_output=True, text=True,
                              timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")

    def create(self) -> OwnPostgres:
        self._run(_postgres_bin("initdb"), "-D", str(self.data), "-U", PG["user"],
                  "--auth=trust", "--no-sync", "-E", "UTF8")
        self.start()
        conn = psycopg.connect(host=PG["host"], port=self.port, dbname="postgres",
                               user=PG["user"], connect_timeout=5)
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{PG["db"]}"')
        conn.close()
        return self

    def start(self) -> None:
        self._run(_postgres_bin("pg_ctl"), "start", "-w", "-t", "60", "-D", str(self.data),
                  "-l", str(self.dir / "server.log"),
                  "-o", f"-h {PG['host']} -p {self.port} -k {self.dir} -c fsync=off")

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server; `immediate` is a crash (no checkpoint, recovery on the next start)."""
        self._run(_postgres_bin("pg_ctl"), "stop", "-w", "-t", "60", "-D", str(self.data),
                  "-m", mode)

    def destroy(self) -> None:
        import shutil

        with contextlib.suppress(Exception):
            self.stop("fast")
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def pg_schema(prefix: str = "lcore_rel") -> Iterator[str]:
    """A fresh schema of its own, dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    conn = pg_connect()
    try:
        with conn.cursor() as cursor:
            cursor.execute(f'CREATE SCHEMA "{name}"')
        yield name
    finally:
        with conn.cursor() as cursor:
            cursor.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        conn.close()


def pg_rows(schema: str, sql: str, *args: Any, port: int = PG["port"]) -> list[tuple[Any, ...]]:
    """Rows of `sql` run with `search_path` set to `schema`."""
    conn = pg_connect(port)
    try:
        with conn.cursor() as cursor:
            cursor.execute(f'SET search_path TO "{schema}"')
            cursor.execute(sql, args)
            return list(cursor.fetchall())
    finally:
        conn.close()


def postgres(schema: str, port: int = PG["port"], **extra: Any) -> dict[str, Any]:
    """A `postgres` section for `schema`, on `port` (a proxy's, say)."""
    return {**PG, "port": port, "namespace": schema, **extra}


def write_config(path: Path, stack_url: str, **sections: Any) -> Path:
    """A lightspeed-stack.yaml on loopback for a Llama Stack server; `sections` override."""
    path.parent.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "name": "lcore-reliability",
        "service": {"host": "127.0.0.1", "port": 8080, "log_format": "json"},
        "llama_stack": {"url": stack_url, "timeout": 30},
        "authentication": {"module": "noop"},
        "database": {"sqlite": {"db_path": str(path.parent / "user.db")}},
        "conversation_cache": {"type": "memory", "memory": {"max_entries": 1000}},
    }
    config.update(sections)
    path.write_text(yaml.safe_dump(config))
    return path


def parse_sse(body: str) -> list[dict[str, Any]]:
    return [json.loads(line[len("data: "):]) for line in body.splitlines()
            if line.startswith("data: ")]


class LcoreProcess:
    """`lcore serve -c <config>` as a subprocess on a free loopback port."""

    def __init__(self, config: Path, *, name: str = "lcore", executable: Path = LCORE,
                 env: dict[str, str] | None = None) -> None:
        self.config = config
        self.name = name
        # Another venv's `lcore` (OGX's), and the environment to run it in.
        self.executable = executable
        self.env = env
        self.port = free_port()
        self.log_path = config.parent / f"{name}-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LcoreProcess:
        env = {**(os.environ if self.env is None else self.env), "PYTHONUNBUFFERED": "1"}
        env.pop("LCORE_CONFIG", None)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(self.executable), "serve", "-c", str(self.config), "--host", "127.0.0.1",
                 "--port", str(self.port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True)
        return self

    def wait_ready(self, timeout: float = 60.0) -> LcoreProcess:
        """Block until `/liveness` answers; raise with the log if the process dies or stalls."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n"
                                       + self.log_tail())
                with contextlib.suppress(httpx.HTTPError):
                    # 401: liveness needs credentials under some auth modules; it answers
                    if client.get(f"{self.url}/liveness").status_code in (200, 401):
                        return self
                time.sleep(0.1)
        raise TimeoutError(f"{self.name} not live after {timeout:.0f} s:\n" + self.log_tail())

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL to the process group if it lingers."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        self.process = None


def wait_for(condition: Any, timeout: float, interval: float = 0.05, what: str = "") -> Any:
    """Poll `condition()` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(interval)
