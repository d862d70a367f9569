"""Error types. Each maps to one HTTP status in one place (`LCoreError.status`)."""

from __future__ import annotations

from typing import Any

PRIVATE_CAUSE = "the details are in the service log"


class LCoreError(Exception):
    """An error that reaches the client as `{"detail": {"response": ..., "cause": ...}}`.

    A `private` error's cause (a database driver's message: hosts, ports, paths) stays in the
    service log; the client reads that it is there."""

    status = 500
    private = False

    def __init__(
        self,
        response: str,
        cause: str = "",
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
        private: bool | None = None,
    ) -> None:
        super().__init__(f"{response}: {cause}" if cause else response)
        self.response = response
        self.cause = cause
        self.headers = headers or {}
        self.extra = extra or {}
        if private is not None:
            self.private = private

    def body(self) -> dict[str, Any]:
        cause = PRIVATE_CAUSE if self.private and self.cause else self.cause
        detail: dict[str, Any] = {"response": self.response, "cause": cause}
        detail.update(self.extra)
        return {"detail": detail}


class BadRequest(LCoreError):
    status = 400


class Unauthorized(LCoreError):
    status = 401

    def __init__(self, response: str = "Missing or invalid credentials provided by client",
                 cause: str = "", *, challenge: str | None = "Bearer", **kwargs: Any) -> None:
        super().__init__(response, cause, **kwargs)
        # `challenge=None`: no WWW-Authenticate of LCore's own (one relayed from elsewhere, or
        # none at all, as upstream answers when an MCP server's OAuth probe fails).
        if challenge is not None:
            self.headers.setdefault("WWW-Authenticate", challenge)


class Forbidden(LCoreError):
    status = 403


class NotFound(LCoreError):
    status = 404

    @classmethod
    def of(cls, resource: str, resource_id: str) -> NotFound:
        """Upstream's 404 for an unknown id (`Conversation`, `Model`, `Rag`, `Vector Store`...)."""
        return cls(f"{resource} not found", f"{resource} with ID {resource_id} does not exist")


class Conflict(LCoreError):
    status = 409


class PayloadTooLarge(LCoreError):
    status = 413


class UnprocessableEntity(LCoreError):
    status = 422


class QuotaExceeded(LCoreError):
    """Raised by a quota check before the LLM call; becomes 429."""

    status = 429


class StorageError(LCoreError):
    """A database or cache failed; nothing half-written is kept. The driver's message is
    logged, not sent."""

    status = 500
    private = True


class BackendUnavailable(LCoreError):
    """Llama Stack (or another required backend) cannot be reached."""

    status = 503


class ConfigError(Exception):
    """Invalid configuration: names the file, line, key path and what is wrong."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 key: str | None = None) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.key = key
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file or "<config>"
        if self.line is not None:
            where += f":{self.line}"
        key = f" {self.key}:" if self.key else ""
        return f"{where}:{key} {self.message}"


class PluginLoadError(Exception):
    """A plugin distribution failed to import or register."""

    def __init__(self, plugin: str, distribution: str, error: BaseException) -> None:
        self.plugin = plugin
        self.distribution = distribution
        self.error = error
        super().__init__(
            f"plugin {plugin!r} from distribution {distribution!r} failed to load: "
            f"{type(error).__name__}: {error}"
        )
