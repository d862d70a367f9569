"""The conversation cache contract and the built-in memory and noop backends."""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass
class ReferencedDocument:
    doc_title: str | None = None
    doc_url: str | None = None


@dataclass
class CacheEntry:
    """One turn of a conversation as the cache stores it.

    `attachments` describe what the client attached (`attachment_type`, `content_type` and
    `size`, the body's length in UTF-8 bytes), never the body itself: the model had it in its
    turn, and a cache holding bodies grows with whatever clients send (upstream's cache entry
    keeps no attachments at all). An attachment given with its `content` is described here.
    """

    query: str
    response: str
    provider: str = ""
    model: str = ""
    started_at: str = ""
    completed_at: str = ""
    referenced_documents: list[dict[str, Any]] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    tool_results: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.attachments = [describe_attachment(a) for a in self.attachments]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CacheEntry:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def describe_attachment(attachment: dict[str, Any]) -> dict[str, Any]:
    """An attachment as a cache entry keeps it: everything but the body, plus its size."""
    if "content" not in attachment:
        return attachment
    described = {k: v for k, v in attachment.items() if k != "content"}
    content = attachment["content"]
    described["size"] = len(content.encode("utf-8", "surrogatepass")) \
        if isinstance(content, str) else len(json.dumps(content))
    return described


def entry_size(entry: CacheEntry) -> int:
    """About how many bytes an entry holds: its text in UTF-8 plus its lists as JSON."""
    text = len(entry.query.encode("utf-8", "surrogatepass")) + \
        len(entry.response.encode("utf-8", "surrogatepass"))
    lists = (entry.referenced_documents, entry.tool_calls, entry.tool_results, entry.attachments)
    return ENTRY_OVERHEAD + text + sum(len(json.dumps(x, default=str)) for x in lists if x)


# What an entry costs beyond its text: the objects holding it, its short strings.
ENTRY_OVERHEAD = 512
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


@dataclass
class ConversationInfo:
    conversation_id: str
    topic_summary: str | None = None
    last_message_timestamp: str = ""
    message_count: int = 0


@runtime_checkable
class ConversationCache(Protocol):
    """What a cache backend provides. All methods are async; `user_id` scopes every call."""

    async def insert(self, user_id: str, conversation_id: str, entry: CacheEntry) -> None:
        """Append one turn to a conversation (creating it)."""
        ...

    async def get(self, user_id: str, conversation_id: str) -> list[CacheEntry]:
        """The conversation's turns in order; [] when unknown."""
        ...

    async def delete(self, user_id: str, conversation_id: str) -> bool:
        """Remove a conversation; False when it did not exist."""
        ...

    async def list(self, user_id: str) -> list[ConversationInfo]:
        """The user's conversations, most recent first."""
        ...

    async def set_topic_summary(self, user_id: str, conversation_id: str, summary: str) -> None:
        ...

    async def setup(self) -> None:
        """Create what the backend needs (tables); the core awaits it once at start-up, and a
        backend may also do it on first use. Idempotent."""
        ...

    async def ready(self) -> None:
        """Raise if the backend cannot serve (the core's `/readiness` calls it)."""
        ...

    async def close(self) -> None:
        """Release connections; the core awaits it once at shutdown."""
        ...


class NoopCache:
    """Keeps nothing."""

    async def insert(self, user_id: str, conversation_id: str, entry: CacheEntry) -> None:
        return None

    async def get(self, user_id: str, conversation_id: str) -> list[CacheEntry]:
        return []

    async def delete(self, user_id: str, conversation_id: str) -> bool:
        return False

    async def list(self, user_id: str) -> list[ConversationInfo]:
        return []

    async def set_topic_summary(self, user_id: str, conversation_id: str, summary: str) -> None:
        return None

    async def setup(self) -> None:
        return None

    async def ready(self) -> None:
        return None

    async def close(self) -> None:
        return None


class MemoryCache:
    """In-process, bounded twice over all conversations: by `max_entries` turns and by
    `max_bytes` (each turn's size as `entry_size` counts it, topic summaries included). The
    least recently used conversations (written or read) go first; a lone conversation over a
    bound loses its oldest turns, and a turn larger than `max_bytes` on its own is not kept."""

    def __init__(self, max_entries: int = 1000, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_entries = max(max_entries, 1)
        self.max_bytes = max(max_bytes, 1)
        self._data: OrderedDict[tuple[str, str], list[tuple[CacheEntry, int]]] = OrderedDict()
        self._topics: dict[tuple[str, str], str] = {}
        self._count = 0  # entries held, over every conversation
        self._bytes = 0  # their sizes and the topics', over every conversation
        self._lock = asyncio.Lock()

    @property
    def bytes_held(self) -> int:
        return self._bytes

    async def insert(self, user_id: str, conversation_id: str, entry: CacheEntry) -> None:
        key = (user_id, conversation_id)
        size = entry_size(entry)
        async with self._lock:
            self._data.setdefault(key, []).append((entry, size))
            self._data.move_to_end(key)
            self._count += 1
            self._bytes += size
            while self._over() and len(self._data) > 1:
                self._drop(next(iter(self._data)))
            turns = self._data[key]
            while self._over() and turns:
                _, dropped = turns.pop(0)
                self._count -= 1
                self._bytes -= dropped
            if not turns:
                self._drop(key)

    def _over(self) -> bool:
        return self._count > self.max_entries or self._bytes > self.max_bytes

    def _drop(self, key: tuple[str, str]) -> None:
        turns = self._data.pop(key, None) or []
        self._count -= len(turns)
        self._bytes -= sum(size for _, size in turns)
        topic = self._topics.pop(key, None)
        if topic is not None:
            self._bytes -= _topic_size(topic)

    async def get(self, user_id: str, conversation_id: str) -> list[CacheEntry]:
        key = (user_id, conversation_id)
        turns = self._data.get(key)
        if turns is None:
            return []
        self._data.move_to_end(key)  # read is use: the conversation stays longer
        return [entry for entry, _ in turns]

    async def delete(self, user_id: str, conversation_id: str) -> bool:
        key = (user_id, conversation_id)
        async with self._lock:
            found = key in self._data
            self._drop(key)
            return found

    async def list(self, user_id: str) -> list[ConversationInfo]:
        out = [
            ConversationInfo(cid, self._topics.get((uid, cid)),
                             turns[-1][0].completed_at if turns else "", len(turns))
            for (uid, cid), turns in self._data.items()
            if uid == user_id
        ]
        out.sort(key=lambda c: c.last_message_timestamp, reverse=True)
        return out

    async def set_topic_summary(self, user_id: str, conversation_id: str, summary: str) -> None:
        key = (user_id, conversation_id)
        async with self._lock:
            if key not in self._data:  # nothing to describe: keeping it would leak
                return
            old = self._topics.get(key)
            self._topics[key] = summary
            self._bytes += _topic_size(summary) - (_topic_size(old) if old is not None else 0)
            while self._bytes > self.max_bytes and self._data:
                self._drop(next(iter(self._data)))

    async def setup(self) -> None:
        return None

    async def ready(self) -> None:
        return None

    async def close(self) -> None:
        return None


def _topic_size(topic: str) -> int:
    return len(topic.encode("utf-8", "surrogatepass"))
