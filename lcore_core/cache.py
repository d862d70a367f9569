"""The conversation cache contract and the built-in memory and noop backends."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass
class ReferencedDocument:
    doc_title: str | None = None
    doc_url: str | None = None


@dataclass
class CacheEntry:
    """One turn of a conversation as the cache stores it."""

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CacheEntry:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


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

    async def ready(self) -> None:
        """Raise if the backend cannot serve."""
        ...

    async def close(self) -> None:
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

    async def ready(self) -> None:
        return None

    async def close(self) -> None:
        return None


class MemoryCache:
    """In-process, bounded by `max_entries` entries (turns) in all: the least recently used
    conversations go first; a lone conversation longer than the bound loses its oldest turns."""

    def __init__(self, max_entries: int = 1000) -> None:
        self.max_entries = max(max_entries, 1)
        self._data: OrderedDict[tuple[str, str], list[CacheEntry]] = OrderedDict()
        self._topics: dict[tuple[str, str], str] = {}
        self._count = 0  # entries held, over every conversation
        self._lock = asyncio.Lock()

    async def insert(self, user_id: str, conversation_id: str, entry: CacheEntry) -> None:
        key = (user_id, conversation_id)
        async with self._lock:
            self._data.setdefault(key, []).append(entry)
            self._data.move_to_end(key)
            self._count += 1
            while self._count > self.max_entries and len(self._data) > 1:
                old, entries = self._data.popitem(last=False)
                self._topics.pop(old, None)
                self._count -= len(entries)
            if self._count > self.max_entries:
                del self._data[key][:self._count - self.max_entries]
                self._count = self.max_entries

    async def get(self, user_id: str, conversation_id: str) -> list[CacheEntry]:
        return list(self._data.get((user_id, conversation_id), []))

    async def delete(self, user_id: str, conversation_id: str) -> bool:
        key = (user_id, conversation_id)
        async with self._lock:
            self._topics.pop(key, None)
            entries = self._data.pop(key, None)
            self._count -= len(entries or ())
            return entries is not None

    async def list(self, user_id: str) -> list[ConversationInfo]:
        out = [
            ConversationInfo(cid, self._topics.get((uid, cid)),
                             entries[-1].completed_at if entries else "", len(entries))
            for (uid, cid), entries in self._data.items()
            if uid == user_id
        ]
        out.sort(key=lambda c: c.last_message_timestamp, reverse=True)
        return out

    async def set_topic_summary(self, user_id: str, conversation_id: str, summary: str) -> None:
        self._topics[(user_id, conversation_id)] = summary

    async def ready(self) -> None:
        return None

    async def close(self) -> None:
        return None
