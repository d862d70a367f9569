"""Helpers for the end-to-end tests: config writing, SSE parsing, a started-app handle."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from lcore_core.testing.ogx import ogx_available

# `ogx`: server mode against a real OGX 1.x (Llama Stack's successor), when `make install-ogx`
# built its venv; select or deselect it with the `ogx` marker.
MODES: list[Any] = ["server", "library"] + (
    [pytest.param("ogx", marks=pytest.mark.ogx)] if ogx_available() else [])


def backend_for(request: pytest.FixtureRequest, mode: str, server: Any, library: Any) -> Any:
    """What `lcore_config` wants for `mode`: the Llama Stack server URL, the library run.yaml,
    or the OGX server (started on first use: one per session)."""
    if mode == "ogx":
        return request.getfixturevalue("ogx_server")
    return server.url if mode == "server" else library


async def backend_serves(runtime: Any, path: str) -> bool:
    """Probe the running backend: does it answer GET `path` (not 404/405)? OGX, for one, has no
    /v1/shields or /v1/tools."""
    from llama_stack_client import APIStatusError

    try:
        await runtime.llama.client.get(path, cast_to=object)
    except APIStatusError as exc:
        if exc.status_code in (404, 405):
            return False
        raise
    return True


async def require_safety_api(runtime: Any) -> None:
    """Skip a test of Llama Stack's shields when the running backend has no safety API."""
    if not await backend_serves(runtime, "/v1/shields"):
        pytest.skip("the backend has no safety API (OGX): Llama Guard shields cannot run")


def llama_section(mode: str, llama: Any) -> dict[str, Any]:
    """The `llama_stack` section for `mode` (see `backend_for` for `llama`)."""
    if mode == "ogx":
        return {"url": llama.url, "ca_cert_path": str(llama.ca_cert)}
    if mode == "server":
        return {"url": llama}
    return {"use_as_library_client": True, "library_client_config_path": str(llama)}


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
    """Write a lightspeed-stack.yaml for `mode`; `llama` as `backend_for` gives it."""
    workdir.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "name": f"lcore-e2e-{mode}",
        "service": {"host": "127.0.0.1", "port": 8080},
        "llama_stack": llama_section(mode, llama),
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


def links(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`referenced_documents` as title and link only (each also names its source and id)."""
    return [{"doc_title": d.get("doc_title"), "doc_url": d.get("doc_url")} for d in documents]
