"""lcore-cache-sqlite: the contract suite through the installed entry point, and its extras."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from lcore_core import ConfigError, ConversationCache, StorageError
from lcore_core.app import create_app
from lcore_core.plugins import load_plugins
from lcore_core.testing.cache_contract import CacheContract, cache_from_plugins, entry


def sqlite_cache(path: Path) -> Any:
    return cache_from_plugins("sqlite", {"db_path": str(path)})


class TestSqliteCache(CacheContract):
    @pytest.fixture
    async def cache(self, tmp_path: Path) -> AsyncIterator[ConversationCache]:
        cache = sqlite_cache(tmp_path / "cache" / "conversations.db")
        yield cache
        await cache.close()

    @pytest.fixture
    async def unreachable_cache(self, tmp_path: Path) -> AsyncIterator[ConversationCache]:
        (tmp_path / "a-file").write_text("")
        cache = sqlite_cache(tmp_path / "a-file" / "conversations.db")  # a path under a file
        yield cache
        await cache.close()


def test_registered_by_the_installed_plugin() -> None:
    plugins = load_plugins()
    backend = plugins.cache_backends()["sqlite"]
    assert plugins.owner("cache backend", "sqlite") == "cache_sqlite"
    assert plugins.distribution_of("cache_sqlite") == "lcore-cache-sqlite"
    assert backend.required and backend.key == "sqlite"


async def test_two_caches_on_one_file_share_conversations(tmp_path: Path) -> None:
    first, second = sqlite_cache(tmp_path / "c.db"), sqlite_cache(tmp_path / "c.db")
    await first.insert("u", "conv1", entry(1))
    await second.insert("u", "conv1", entry(2))
    assert await first.get("u", "conv1") == [entry(1), entry(2)]
    [info] = await second.list("u")
    assert info.message_count == 2
    await first.close()
    await second.close()


async def test_tables_and_schema_version_are_created_idempotently(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    for _ in range(2):
        cache = sqlite_cache(path)
        await cache.setup()
        await cache.insert("u", "conv1", entry(1))
        await cache.close()
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT component, version FROM lcore_schema_version").fetchall()
        count = conn.execute("SELECT count(*) FROM lcore_cache_entry").fetchone()[0]
    assert rows == [("cache_sqlite", 1)]
    assert count == 2


async def test_unusable_file_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    cache = sqlite_cache(tmp_path / "a-file" / "c.db")
    with pytest.raises(StorageError) as caught:
        await cache.insert("u", "conv1", entry(1))
    assert caught.value.status == 500
    assert caught.value.body()["detail"]["response"] == "Conversation cache error"
    await cache.close()


async def test_failed_insert_leaves_nothing_partial(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    cache = sqlite_cache(path)
    await cache.insert("u", "conv1", entry(1))
    # The conversation row's write fails after the entry row was written: both roll back.
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TRIGGER refuse BEFORE UPDATE ON lcore_cache_conversation "
                     "BEGIN SELECT RAISE(ABORT, 'refused'); END")
    with pytest.raises(StorageError):
        await cache.insert("u", "conv1", entry(2))
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TRIGGER refuse")
    assert await cache.get("u", "conv1") == [entry(1)]
    await cache.insert("u", "conv1", entry(3))
    assert await cache.get("u", "conv1") == [entry(1), entry(3)]
    [info] = await cache.list("u")
    assert info.message_count == 2
    await cache.close()


async def test_a_waiting_call_does_not_block_the_event_loop(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    cache = sqlite_cache(path)
    await cache.setup()
    # Another process holds the write lock: the insert waits for it in a worker thread.
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    insert = asyncio.create_task(cache.insert("u", "conv1", entry(1)))
    started = asyncio.get_running_loop().time()
    await asyncio.sleep(0.3)
    assert asyncio.get_running_loop().time() - started < 0.6  # the loop kept running
    assert not insert.done()
    other.execute("COMMIT")
    other.close()
    await asyncio.wait_for(insert, 5)
    assert await cache.get("u", "conv1") == [entry(1)]
    await cache.close()


async def test_configured_through_yaml(write_config: Any, serving: Any, tmp_path: Path) -> None:
    db = tmp_path / "from-yaml.db"
    app = create_app(write_config({"conversation_cache": {"type": "sqlite",
                                                          "sqlite": {"db_path": str(db)}}}))
    async with serving(app) as client:
        runtime = app.runtime  # type: ignore[attr-defined]
        assert type(runtime.cache.backend).__name__ == "SqliteCache"
        assert db.is_file()  # created at start-up
        await runtime.cache.insert("u", "conv1", entry(1))
        response = await client.get("/readiness")
        assert response.status_code == 200, await response.get_json()


def test_sqlite_section_is_required(write_config: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        create_app(write_config({"conversation_cache": {"type": "sqlite"}}))
    assert "conversation_cache.sqlite" in str(caught.value)
