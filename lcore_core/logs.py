"""structlog set-up: one JSON object per line (or a console renderer on a terminal).

Lines are rendered and written by a thread of their own: a log call on the event loop only
queues its record, so a slow or stalled reader of standard error (a full pipe) never stalls
the loop, and the loop does not spend its time formatting. The queue keeps the order; it is
emptied at exit and when the app shuts down (`flush_logging`).
"""

from __future__ import annotations

import atexit
import logging
import queue
import sys
from logging.handlers import QueueHandler, QueueListener

import structlog

_configured: str | None = None
_level = logging.INFO
_listener: QueueListener | None = None


class _Enqueue(QueueHandler):
    """Queues the record as it is: the writer thread renders it (a record is not changed once
    emitted, and structlog's event dict travels in it)."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


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
    writer = logging.StreamHandler()
    writer.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer],
    ))
    flush_logging()
    root = logging.getLogger()
    # Ours from an earlier call, and plain stderr handlers that a library's logging.basicConfig()
    # added (they would print every line a second time, unformatted).
    for old in [h for h in root.handlers
                if getattr(h, "_lcore", False) or type(h) is logging.StreamHandler]:
        root.removeHandler(old)
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    handler = _Enqueue(records)
    handler._lcore = True  # type: ignore[attr-defined]
    writer._lcore = True  # type: ignore[attr-defined]
    global _listener
    _listener = QueueListener(records, writer)
    _listener.start()
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("hypercorn.access", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def flush_logging() -> None:
    """Write out every queued line, then write directly from the calling thread (for what is
    logged after shutdown, when no writer thread may be left to do it)."""
    global _listener, _configured
    listener, _listener = _listener, None
    if listener is None:
        return
    _configured = None  # a later configure_logging queues again
    listener.stop()  # the thread writes what is queued, then ends
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _Enqueue)]:
        root.removeHandler(handler)
    for writer in listener.handlers:
        root.addHandler(writer)


atexit.register(flush_logging)


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
