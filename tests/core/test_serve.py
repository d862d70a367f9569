"""`lcore serve`: the real command under Hypercorn, as an operator runs it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
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
        self.process = subprocess.Popen(
            [str(LCORE), "serve", "-c", str(config), "--host", "127.0.0.1",
             "--port", str(self.port), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def wait_healthy(self) -> httpx.Response:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                _, err = self.process.communicate()
                pytest.fail(f"lcore serve exited with {self.process.returncode}:\n{err}")
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
            _, err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, err = self.process.communicate()
            pytest.fail(f"lcore serve did not exit within {timeout}s of SIGTERM:\n{err}")
        return self.process.returncode, err


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
