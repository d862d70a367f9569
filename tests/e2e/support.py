"""Helpers for the end-to-end tests: config writing, SSE parsing, a started-app handle."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

MODES = ["server", "library"]


@dataclass
class Lcore:
    """A started LCore app and its test client."""

    app: Any
    client: Any
    mode: str
    workdir: Path

    @property
    def runtime(self) -> Any:
        return self.app.runtime

    async def query(self, query: str, **fields: Any) -> Any:
        return await self.client.post("/v2/query", json={"query": query, **fields})

    async def stream(self, query: str, **fields: Any) -> tuple[int, list[dict[str, Any]]]:
        response = await self.client.post("/v2/streaming_query",
                                          json={"query": query, **fields})
        body = await response.get_data(as_text=True)
        return response.status_code, parse_sse(body)


def parse_sse(body: str) -> list[dict[str, Any]]:
    events = []
    for block in body.split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: "):]))
    return events


def lcore_config(workdir: Path, mode: str, llama: Any, **overrides: Any) -> Path:
    """Write a lightspeed-stack.yaml for `mode`; `llama` is the server URL or run.yaml path."""
    workdir.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "name": f"lcore-e2e-{mode}",
        "service": {"host": "127.0.0.1", "port": 8080},
        "llama_stack": ({"url": llama} if mode == "server" else
                        {"use_as_library_client": True, "library_client_config_path": str(llama)}),
        "user_data_collection": {"feedback_enabled": True,
                                 "feedback_storage": str(workdir / "feedback")},
        "database": {"sqlite": {"db_path": str(workdir / "user.db")}},
        "authentication": {"module": "noop"},
        "conversation_cache": {"type": "memory", "memory": {"max_entries": 100}},
    }
    config.update(overrides)
    path = workdir / "lightspeed-stack.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# Library mode can take longer than Quart's default 6 s start-up allowance on a busy machine.
STARTUP_TIMEOUT_S = 120


def started(app: Any) -> Any:
    """`app.test_app()` with a start-up allowance that fits library mode."""
    return app.test_app_class(app, startup_timeout=STARTUP_TIMEOUT_S)
