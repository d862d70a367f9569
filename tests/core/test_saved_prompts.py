"""Saved prompts (`/v1/saved-prompts`) on the user DB's database: SQLite in a temp dir and the
machine's real PostgreSQL (a schema of the test's own), through the running app."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from lcore_core.config import ConfigError, load_config
from lcore_core.plugins import load_plugins
from lcore_core.saved_prompts import SavedPrompts
from lcore_core.userdb import UserDB

PG = {"host": "127.0.0.1", "port": 5432, "db": "test", "user": "postgres",
      "ssl_mode": "disable", "gss_encmode": "disable"}


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The `database` section: a SQLite file in tmp_path, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield {"sqlite": {"db_path": str(tmp_path / "user.db")}}
        return
    namespace = f"lcore_saved_{uuid.uuid4().hex[:10]}"
    yield {"postgres": {**PG, "namespace": namespace}}
    conn = psycopg.connect(host=PG["host"], port=PG["port"], dbname=PG["db"], user=PG["user"])
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute(f'DROP SCHEMA IF EXISTS "{namespace}" CASCADE')
    conn.close()


@pytest.fixture
async def client(make_app: Any, serving: Any, database: dict[str, Any]) -> AsyncIterator[Any]:
    # (None: the base configuration's SQLite file is not wanted next to PostgreSQL.)
    app = make_app({"database": {"sqlite": None, **database}, "authentication": {"module": "noop"},
                    "saved_prompts": {"max_prompts_per_user": 3,
                                      "max_display_name_length": 20,
                                      "max_content_length": 100}})
    async with serving(app) as test_client:
        yield test_client


def as_user(user: str) -> dict[str, Any]:
    return {"query_string": {"user_id": user}}


async def created(client: Any, name: str, content: str = "Help me", user: str = "alice") -> Any:
    response = await client.post("/v1/saved-prompts", json={"name": name, "content": content},
                                 **as_user(user))
    assert response.status_code == 201, await response.get_data(as_text=True)
    return await response.get_json()


async def listed(client: Any, user: str = "alice") -> list[dict[str, Any]]:
    response = await client.get("/v1/saved-prompts", **as_user(user))
    assert response.status_code == 200, await response.get_data(as_text=True)
    prompts: list[dict[str, Any]] = (await response.get_json())["prompts"]
    return prompts


async def detail(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, await response.get_data(as_text=True)
    found: dict[str, Any] = (await response.get_json())["detail"]
    return found


async def test_each_user_keeps_their_own(client: Any) -> None:
    first = await created(client, "  Deploy to staging ", "  Help me write a checklist\n")
    assert set(first) == {"id", "name", "content", "created_at", "updated_at"}
    assert uuid.UUID(first["id"])
    # The name is a label (trimmed); the content is kept as written.
    assert (first["name"], first["content"]) == ("Deploy to staging",
                                                 "  Help me write a checklist\n")
    moment = dt.datetime.fromisoformat(first["created_at"])
    assert moment.tzinfo is not None
    assert abs(dt.datetime.now(dt.UTC) - moment) < dt.timedelta(minutes=1)
    assert first["updated_at"] == first["created_at"]
    second = await created(client, "Second")
    bobs = await created(client, "Deploy to staging", user="bob")  # names are per user

    assert [p["id"] for p in await listed(client)] == [second["id"], first["id"]]
    assert await listed(client) == [second, first]
    assert await listed(client, "bob") == [bobs]
    assert await listed(client, "carol") == []

    # Bob cannot delete Alice's prompt; to him it does not exist.
    response = await client.delete(f"/v1/saved-prompts/{first['id']}", **as_user("bob"))
    assert response.status_code == 200
    assert await response.get_json() == {"prompt_id": first["id"], "deleted": False,
                                         "response": "Saved prompt not found"}
    assert len(await listed(client)) == 2

    response = await client.delete(f"/v1/saved-prompts/{first['id']}", **as_user("alice"))
    assert await response.get_json() == {"prompt_id": first["id"], "deleted": True,
                                         "response": "Saved prompt deleted successfully"}
    assert await listed(client) == [second]
    again = await client.delete(f"/v1/saved-prompts/{first['id']}", **as_user("alice"))
    assert (await again.get_json())["deleted"] is False


async def test_names_are_unique_per_user(client: Any) -> None:
    await created(client, "Deploy")
    found = await detail(await client.post("/v1/saved-prompts", json={
        "name": " Deploy ", "content": "other"}, **as_user("alice")), 409)
    assert found == {"response": "Saved Prompt already exists",
                     "cause": "Saved Prompt with name 'Deploy' is already registered"}
    assert len(await listed(client)) == 1


async def test_the_count_per_user_is_bounded(client: Any) -> None:
    for i in range(3):
        await created(client, f"p{i}")
    found = await detail(await client.post("/v1/saved-prompts", json={
        "name": "p3", "content": "x"}, **as_user("alice")), 422)
    assert found == {"response": "Saved prompt limit exceeded",
                     "cause": "Saved prompt limit exceeded: 3 existing prompts, maximum is 3"}
    await created(client, "p0", user="bob")  # another user's count is their own


async def test_concurrent_creates_do_not_pass_the_limit(client: Any) -> None:
    responses = await asyncio.gather(*(client.post(
        "/v1/saved-prompts", json={"name": f"c{i}", "content": "x"}, **as_user("dana"))
        for i in range(8)))
    assert sorted(r.status_code for r in responses) == [201] * 3 + [422] * 5
    assert len(await listed(client, "dana")) == 3


@pytest.mark.parametrize(("body", "cause"), [
    ({"name": "   ", "content": "x"}, "Saved prompt name must not be empty"),
    ({"name": "n" * 21, "content": "x"}, "Saved prompt name length 21 exceeds maximum 20"),
    ({"name": "n", "content": " \n\t"}, "Saved prompt content must not be empty"),
    ({"name": "n", "content": "c" * 101}, "Saved prompt content length 101 exceeds maximum 100"),
    # Found by the deep fuzz: a 500 "Database error" on PostgreSQL, stored on SQLite
    ({"name": "a\x00b", "content": "x"},
     "Saved prompt name must not contain NUL (U+0000) characters"),
    ({"name": "n", "content": "x\x00"},
     "Saved prompt content must not contain NUL (U+0000) characters"),
])
async def test_invalid_values_are_422(client: Any, body: dict[str, Any], cause: str) -> None:
    found = await detail(await client.post("/v1/saved-prompts", json=body,
                                           **as_user("alice")), 422)
    assert found == {"response": "Invalid attribute value", "cause": cause}
    assert await listed(client) == []


@pytest.mark.parametrize("body", [
    {"name": "n"}, {"content": "c"}, {"name": 5, "content": "c"},
    {"name": "n", "content": "c", "extra": 1}, ["n", "c"],
])
async def test_malformed_bodies_are_422(client: Any, body: Any) -> None:
    response = await client.post("/v1/saved-prompts", json=body, **as_user("alice"))
    assert response.status_code == 422, await response.get_data(as_text=True)
    assert await listed(client) == []


async def test_malformed_ids_are_400(client: Any) -> None:
    for bad in ("abc123", "not-a-uuid", "1" * 47, "conv_" + "z" * 48):
        found = await detail(await client.delete(f"/v1/saved-prompts/{bad}"), 400)
        assert found == {"response": "Invalid saved prompt ID format",
                         "cause": f"The saved prompt ID {bad} has invalid format."}
    # Other id forms upstream accepts are looked up (and not found).
    for other in ("a" * 48, "conv_" + "b" * 48, str(uuid.uuid4())):
        response = await client.delete(f"/v1/saved-prompts/{other}")
        assert (await response.get_json())["deleted"] is False


async def test_config_shows_the_limits(client: Any) -> None:
    response = await client.get("/v1/saved-prompts/config")
    assert await response.get_json() == {"max_prompts_per_user": 3,
                                         "max_display_name_length": 20,
                                         "max_content_length": 100}


async def test_defaults_and_list_cap(make_app: Any, serving: Any, tmp_path: Path) -> None:
    app = make_app({"authentication": {"module": "noop"}})
    async with serving(app) as test_client:
        response = await test_client.get("/v1/saved-prompts/config")
        assert await response.get_json() == {"max_prompts_per_user": 50,
                                             "max_display_name_length": 255,
                                             "max_content_length": 10000}
        # Rows beyond any configurable limit (written when a larger one was set, or imported)
        # are kept, but a list returns at most the ceiling.
        store: SavedPrompts = app.runtime.saved_prompts
        for i in range(205):
            await store.create("erin", f"n{i}", "c", limit=1000)
        assert len(await listed(test_client, "erin")) == 200


async def test_store_setup_is_idempotent(database: dict[str, Any]) -> None:
    from lcore_core.config import Settings

    settings = Settings.wrap(database)
    if "postgres" in database:
        settings["postgres"].update(password="", max_connections=2)
    userdb = UserDB.open(settings)
    store = SavedPrompts(userdb)
    try:
        assert not await store.installed()
        await userdb.setup()
        await store.setup()
        await store.setup()
        assert await store.installed()
        await store.create("u", "n", "c", limit=1)
        assert [p["name"] for p in await store.list("u")] == ["n"]
    finally:
        await userdb.close()


# --- the configuration section ---------------------------------------------------------------

BASE = "name: x\nllama_stack:\n  url: http://127.0.0.1:9\n"


@pytest.mark.parametrize(("section", "message"), [
    ("  max_prompts_per_user: 201\n",
     "saved_prompts.max_prompts_per_user: Must be greater than or equal to 1 and less than or "
     "equal to 200."),
    ("  max_display_name_length: 0\n", "saved_prompts.max_display_name_length: Must be"),
    ("  max_content_length: 30001\n", "saved_prompts.max_content_length: Must be"),
    ("  max_prompts: 5\n", "saved_prompts.max_prompts: unknown key"),
])
def test_config_errors_name_the_key(tmp_path: Path, section: str, message: str) -> None:
    path = tmp_path / "lightspeed-stack.yaml"
    path.write_text(BASE + "saved_prompts:\n" + section)
    with pytest.raises(ConfigError) as caught:
        load_config(path, load_plugins(entrypoints=False))
    assert f"{path}:5: {message}" in str(caught.value)
