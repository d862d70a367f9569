"""structlog set-up: one JSON object per line (or a console renderer on a terminal)."""

from __future__ import annotations

import logging
import sys

import structlog

_configured: str | None = None
_level = logging.INFO


def configure_logging(fmt: str = "json", level: int = logging.INFO) -> None:
    """Idempotent: structlog's configuration is process-wide."""
    global _configured, _level
    if _configured == fmt:
        return
    _configured, _level = fmt, level
    renderer: structlog.typing.Processor
    if fmt == "console" or (fmt == "auto" and sys.stderr.isatty()):
        renderer = structlog.dev.ConsoleRenderer()
    else:
        renderer = structlog.processors.JSONRenderer()
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler()
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer],
    ))
    root = logging.getLogger()
    # Ours from an earlier call, and plain stderr handlers that a library's logging.basicConfig()
    # added (they would print every line a second time, unformatted).
    for old in [h for h in root.handlers
                if getattr(h, "_lcore", False) or type(h) is logging.StreamHandler]:
        root.removeHandler(old)
    handler._lcore = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("hypercorn.access", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def reclaim_logging() -> None:
    """Undo what Llama Stack's library mode does to logging when it initialises.

    Its `setup_logging()` replaces the root handlers with its own console handler and sets every
    existing logger (ours included) to its root level, which would silence LCore's INFO lines and
    print the rest twice. Put our handler, root level and logger levels back.
    """
    global _configured
    if _configured is None:
        return
    fmt, _configured = _configured, None
    root = logging.getLogger()
    for old in [h for h in root.handlers if type(h).__module__.startswith(("llama_stack", "rich"))]:
        root.removeHandler(old)
    for name, logger in logging.root.manager.loggerDict.items():
        if isinstance(logger, logging.Logger) and (name == "lcore"
                                                   or name.startswith(("lcore.", "lcore_"))):
            logger.setLevel(logging.NOTSET)
    configure_logging(fmt, _level)
