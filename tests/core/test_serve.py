"""`lcore serve`: the real command under Hypercorn, as an operator runs it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

LCORE = Path(sys.executable).parent / "lcore"
START_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(self, config: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**{k: v for k, v in os.environ.items()
                  if k not in ("LCORE_CONFIG", "LCORE_EVENT_LOOP")}, **(env or {})}
        # Standard error goes to a file, so a test can read it while the server runs.
        # Open for the server's lifetime (removed when the object goes).
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115
            "w+", prefix="lcore-serve-", suffix=".log")
        self.process = subprocess.Popen(
            [str(LCORE), "serve", "-c", str(config), "--host", "127.0.0.1",
             "--port", str(self.port), *extra],
            stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)

    def err(self) -> str:
        return Path(self.log.name).read_text()

    def wait_logged(self, event: str, count: int = 1) -> None:
        """Until `count` JSON log lines of `event` were written (every worker's start-up)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if sum(r.get("event") == event for r in json_lines(self.err())) >= count:
                return
            time.sleep(0.2)
        pytest.fail(f"{count} {event!r} log lines not written in {START_TIMEOUT_S}s:\n"
                    f"{self.err()}")

    def wait_healthy(self) -> httpx.Response:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process.communicate()
                pytest.fail(f"lcore serve exited with {self.process.returncode}:\n{self.err()}")
            try:
                response = httpx.get(f"{self.url}/health", timeout=2,
                                     headers={"X-Request-ID": "serve-test-1"})
                if response.status_code == 200:
                    return response
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        pytest.fail(f"lcore serve did not answer /health within {START_TIMEOUT_S}s")

    def stop(self, timeout: float = 10) -> tuple[int, str]:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()
            pytest.fail(f"lcore serve did not exit within {timeout}s of SIGTERM:\n{self.err()}")
        return self.process.returncode, self.err()


@pytest.fixture
def server_factory() -> Iterator[Any]:
    started: list[Server] = []

    def start(config: Path, *extra: str, env: dict[str, str] | None = None) -> Server:
        server = Server(config, *extra, env=env)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.process.poll() is None:
            server.process.kill()
            server.process.communicate()


def json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def test_serve_health_request_id_log_and_clean_sigterm(write_config: Any,
                                                       server_factory: Any) -> None:
    server = server_factory(write_config())
    response = server.wait_healthy()
    assert response.json() == {"alive": True}
    assert response.headers["X-Request-ID"] == "serve-test-1"
    generated = httpx.get(f"{server.url}/health", timeout=5).headers["X-Request-ID"]
    assert generated and generated != "serve-test-1"
    started = time.monotonic()
    code, err = server.stop()
    assert code == 0, err
    assert time.monotonic() - started < 10
    records = [r for r in json_lines(err) if r.get("event") == "request"]
    mine = [r for r in records if r.get("request_id") == "serve-test-1"]
    assert mine, err
    assert mine[0]["path"] == "/health" and mine[0]["status"] == 200
    assert mine[0]["method"] == "GET" and "duration_ms" in mine[0]
    # Started: what the process keeps for good is out of the collector's way.
    assert len(frozen(err)) == 1 and frozen(err)[0] > 10_000, err


def test_serve_with_two_workers(write_config: Any, server_factory: Any) -> None:
    server = server_factory(write_config(), "--workers", "2")
    assert server.wait_healthy().json() == {"alive": True}
    # The second worker may still be starting when the first answers.
    server.wait_logged("started", count=2)
    for _ in range(4):
        assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
    code, err = server.stop(timeout=15)
    assert code == 0, err
    # Each worker runs on uvloop, as a single process does.
    loops = [r.get("event_loop") for r in json_lines(err) if r.get("event") == "started"]
    assert loops == ["uvloop", "uvloop"], err
    assert len(frozen(err)) == 2 and min(frozen(err)) > 10_000, err


def frozen(err: str) -> list[int]:
    """How many objects each serving process moved out of the garbage collector's reach."""
    return [r["objects"] for r in json_lines(err)
            if r.get("event") == "startup objects frozen out of the garbage collector"]


@pytest.mark.parametrize(("setting", "expected"), [(None, "uvloop"), ("asyncio", "asyncio")])
def test_serve_runs_on_uvloop_unless_told_otherwise(write_config: Any, server_factory: Any,
                                                    setting: str | None, expected: str) -> None:
    server = server_factory(write_config(),
                            env={"LCORE_EVENT_LOOP": setting} if setting else None)
    server.wait_healthy()
    code, err = server.stop()
    assert code == 0, err
    loops = [r.get("event_loop") for r in json_lines(err) if r.get("event") == "started"]
    assert loops == [expected], err


def test_invalid_config_exits_2_with_file_and_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("name: bad\nllama_stack:\n  url: http://127.0.0.1:9\n"
                      "service:\n  port: not-a-port\n")
    env = {k: v for k, v in os.environ.items() if k != "LCORE_CONFIG"}
    result = subprocess.run([str(LCORE), "serve", "-c", str(config), "--port",
                             str(free_port())], capture_output=True, text=True, timeout=60,
                            env=env)
    assert result.returncode == 2
    assert f"{config}:5: service.port:" in result.stderr
    assert "Traceback" not in result.stderr


PREFIX = "/api/lightspeed"


def test_root_path_prefix_and_plain_paths_are_served(write_config: Any,
                                                     server_factory: Any) -> None:
    server = server_factory(write_config({"service": {"root_path": PREFIX}}))
    server.wait_healthy()  # unprefixed /health
    info = httpx.get(f"{server.url}{PREFIX}/v1/info", timeout=10)
    assert info.status_code == 200, info.text
    assert info.json()["name"] == "LCore test"
    assert httpx.get(f"{server.url}/v1/info", timeout=10).status_code == 200
    document = httpx.get(f"{server.url}{PREFIX}/openapi.json", timeout=10).json()
    assert document["servers"] == [{"url": PREFIX}]
    code, err = server.stop()
    assert code == 0, err


def _closed_port_config(write_config: Any, **llama: Any) -> Path:
    # A real port nobody listens on: every connection is refused.
    return write_config({"llama_stack": {"url": f"http://127.0.0.1:{free_port()}",
                                         "max_retries": 2, "retry_delay": 1, **llama}})


def test_unreachable_llama_stack_fails_start_up_after_the_retries(write_config: Any) -> None:
    config = _closed_port_config(write_config)
    env = {k: v for k, v in os.environ.items() if k != "LCORE_CONFIG"}
    result = subprocess.run([str(LCORE), "serve", "-c", str(config), "--port",
                             str(free_port())], capture_output=True, text=True, timeout=120,
                            env=env)
    assert result.returncode == 3, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("lcore: start-up failed: "), last
    assert "Unable to connect to OGX: no answer at http://127.0.0.1:" in last
    assert "after 2 attempt(s) 1 s apart" in last
    assert "llama_stack.allow_degraded_mode: true" in last
    retries = [r for r in json_lines(result.stderr)
               if r.get("event") == "llama stack not reachable yet"]
    # max_retries: 2 attempts, so one retry announced, retry_delay apart.
    assert [(r["attempt"], r["attempts"], r["retry_in_s"]) for r in retries] == [(1, 2, 1)]


def test_degraded_mode_serves_without_llama_stack(write_config: Any,
                                                  server_factory: Any) -> None:
    server = server_factory(_closed_port_config(write_config, allow_degraded_mode=True))
    assert server.wait_healthy().json() == {"alive": True}
    ready = httpx.get(f"{server.url}/readiness", timeout=10)
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["ready"] is True
    assert body["overall_status"] == "degraded"
    assert body["reason"] == "Service running in degraded mode"
    assert "LLM inference unavailable" in body["impacts"]
    query = httpx.post(f"{server.url}/v1/query", json={"query": "anyone there?"}, timeout=30)
    assert query.status_code == 503, query.text
    assert query.json()["detail"]["response"] == "Unable to connect to OGX"
    info = httpx.get(f"{server.url}/v1/info", timeout=10)
    assert info.status_code == 503, info.text
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert "ls_started_in_degraded_mode 1.0" in metrics
    code, err = server.stop()
    assert code == 0, err
    assert "starting in degraded mode" in err
