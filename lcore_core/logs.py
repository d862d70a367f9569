"""structlog set-up: one JSON object per line (or a console renderer on a terminal).

A line is rendered where it is logged (its context variables, exception and time are there) and
written by a thread of its own: a slow or stalled reader of standard error (a full pipe) never
stalls the event loop. The queue keeps the order; it is emptied at exit and when the app shuts
down (`flush_logging`), after which lines are written directly.
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
# While lines are queued: the queue, its handler on the root logger, and the writer thread.
_queued: tuple[queue.SimpleQueue[logging.LogRecord], QueueHandler, QueueListener] | None = None


def configure_logging(fmt: str = "json", level: int = logging.INFO) -> None:
    """Idempotent: structlog's configuration is process-wide."""
    global _configured, _level, _queued
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
    flush_logging()
    root = logging.getLogger()
    # Ours from an earlier call, and plain stderr handlers that a library's logging.basicConfig()
    # added (they would print every line a second time, unformatted).
    for old in [h for h in root.handlers
                if getattr(h, "_lcore", False) or type(h) is logging.StreamHandler]:
        root.removeHandler(old)
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    handler = QueueHandler(records)  # renders with its formatter, in the logging thread
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer],
    ))
    handler._lcore = True  # type: ignore[attr-defined]
    writer = logging.StreamHandler()
    writer.setFormatter(logging.Formatter("%(message)s"))  # the line as rendered
    listener = QueueListener(records, writer)
    listener.start()
    _queued = (records, handler, listener)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("hypercorn.access", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def flush_logging() -> None:
    """Write out every queued line; lines logged from now on are written directly, by the thread
    that logs them (for what is logged after shutdown, when no writer thread may be left)."""
    global _queued, _configured
    if _queued is None:
        return
    records, handler, listener = _queued
    _queued = None
    _configured = None  # a later configure_logging queues again
    direct = logging.StreamHandler()
    direct.setFormatter(handler.formatter)
    direct._lcore = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    # One assignment: no line logged meanwhile goes nowhere or out twice.
    root.handlers = [direct if h is handler else h for h in root.handlers]
    listener.stop()  # the thread writes what is queued, then ends
    writer = listener.handlers[0]
    while True:  # a line queued by another thread just as the writer stopped
        try:
            writer.handle(records.get_nowait())
        except queue.Empty:
            break


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
