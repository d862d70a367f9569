"""One small interface over Llama Stack's server mode and library mode.

Both clients expose the same resources (`responses`, `conversations`, `models`, ...), so the rest
of LCore is mode-agnostic: it calls `llama.client` and wraps calls in `llama_errors()`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import structlog
from llama_stack_client import (
    APIConnectionError,
    APIStatusError,
    AsyncLlamaStackClient,
)

from lcore_core.errors import (
    BackendUnavailable,
    BadRequest,
    LCoreError,
    NotFound,
    PayloadTooLarge,
    QuotaExceeded,
    UnprocessableEntity,
)

log = structlog.get_logger("lcore.llama")

# Library mode raises Llama Stack's own exceptions where server mode answers with a status.
try:
    from llama_stack_api.common.errors import LlamaStackError as _LibraryError
except ImportError:  # server mode only: llama-stack is not installed
    _LibraryError = None

_STATUS_ERRORS: dict[int, type[LCoreError]] = {
    400: BadRequest, 404: NotFound, 413: PayloadTooLarge, 422: UnprocessableEntity,
    429: QuotaExceeded,
}


class LlamaStack:
    """Holds the client for the configured mode; `open()` before use, `close()` after."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.library = bool(settings.use_as_library_client)
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            raise BackendUnavailable("Llama Stack is not initialised",
                                     "the service is still starting or failed to start")
        return self._client

    async def open(self) -> None:
        started = time.perf_counter()
        if self.library:
            try:
                from llama_stack.core.library_client import AsyncLlamaStackAsLibraryClient
            except ImportError as exc:
                raise BackendUnavailable(
                    "Llama Stack library mode is not installed",
                    f"{exc}; install it with: pip install 'lcore-core[library]'") from exc
            client = AsyncLlamaStackAsLibraryClient(self.settings.library_client_config_path)
            await client.initialize()
            self._client = client
        else:
            self._client = AsyncLlamaStackClient(
                base_url=self.settings.url, api_key=self.settings.api_key,
                timeout=self.settings.timeout, max_retries=0)
        log.info("llama stack client ready", mode="library" if self.library else "server",
                 seconds=round(time.perf_counter() - started, 3))

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        closer = getattr(client, "close", None) or getattr(client, "aclose", None)
        if closer is not None:
            with contextlib.suppress(Exception):
                await closer()

    async def health(self) -> str | None:
        """None when Llama Stack answers; the reason otherwise (for /readiness)."""
        with llama_errors():
            await self.client.models.list()
        return None


@contextlib.contextmanager
def llama_errors() -> Iterator[None]:
    """Turn client exceptions into LCore errors with the right status."""
    try:
        yield
    except LCoreError:
        raise
    except APIConnectionError as exc:
        raise BackendUnavailable("Unable to connect to Llama Stack", str(exc)) from exc
    except APIStatusError as exc:
        raise from_status(exc.status_code, _message(exc)) from exc
    except (ConnectionError, OSError) as exc:
        raise BackendUnavailable("Unable to connect to Llama Stack", str(exc)) from exc
    except Exception as exc:
        if _LibraryError is not None and isinstance(exc, _LibraryError):
            raise from_status(int(getattr(exc, "status_code", 500)), str(exc)) from exc
        if isinstance(exc, ValueError):  # library mode's validation errors
            raise BadRequest("Llama Stack rejected the request", str(exc)) from exc
        raise


def from_status(status: int, message: str) -> LCoreError:
    kind = _STATUS_ERRORS.get(status)
    if kind is not None:
        return kind("Llama Stack rejected the request", message)
    if 400 <= status < 500:
        return BadRequest("Llama Stack rejected the request", message)
    return BackendUnavailable("Llama Stack failed", f"status {status}: {message}")


def _message(exc: APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        detail = body.get("detail") or body.get("error") or body
        if isinstance(detail, dict):
            detail = detail.get("message") or detail.get("detail") or detail
        return str(detail)
    return str(exc.message)
