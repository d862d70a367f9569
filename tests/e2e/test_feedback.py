"""Feedback storage and status, `/v1/config` and `/authorized`, with LCore on a real Llama Stack."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from lcore_core.app import create_app
from lcore_core.auth import DEFAULT_USER_ID, DEFAULT_USERNAME
from lcore_core.plugins import load_plugins
from lcore_core.testing.errors import invalid_fields

pytestmark = pytest.mark.e2e

UUID_FILE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.json$")
GOOD = {"conversation_id": "0d21ba731f21f798dc9680125d5d6f49",
        "user_question": "What is Kubernetes?", "llm_response": "A container orchestrator.",
        "sentiment": -1, "user_feedback": "Too vague.",
        "categories": ["incomplete", "incorrect", "incomplete"]}


def write_config(workdir: Path, llama_url: str, *, feedback_enabled: bool = True,
                 **extra: Any) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "name": "lcore-feedback-e2e",
        "llama_stack": {"url": llama_url},
        "user_data_collection": {"feedback_enabled": feedback_enabled,
                                 "feedback_storage": str(workdir / "data" / "feedback")},
        "database": {"sqlite": {"db_path": str(workdir / "user.db")}},
        **extra,
    }
    path = workdir / "lightspeed-stack.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class Started:
    app: Any
    client: Any
    workdir: Path

    @property
    def storage(self) -> Path:
        return Path(self.app.runtime.config.user_data_collection.feedback_storage)

    def stored(self) -> list[Path]:
        return sorted(self.storage.iterdir()) if self.storage.exists() else []

    def all_files(self) -> set[Path]:
        return {p for p in self.workdir.rglob("*") if p.is_file()}


# Another user's conversation: feedback on it is refused.
ALICES = "a11ce000000000000000000000000000"


@contextlib.asynccontextmanager
async def started(workdir: Path, llama_url: str, **kwargs: Any) -> AsyncIterator[Started]:
    app = create_app(write_config(workdir, llama_url, **kwargs),
                     plugins=load_plugins(entrypoints=False))
    async with app.test_app() as test_app:
        # Feedback is given on a conversation of the caller's (upstream checks it). LCore keeps
        # ids with "conv_"; clients may send them without, as upstream answers them.
        userdb = app.runtime.userdb
        await userdb.record_turn(f"conv_{GOOD['conversation_id']}", DEFAULT_USER_ID,
                                 model="m", provider="p")
        await userdb.record_turn(f"conv_{ALICES}", "alice", model="m", provider="p")
        yield Started(app, test_app.test_client(), workdir)


@pytest.fixture(scope="module")
async def lcore(tmp_path_factory: pytest.TempPathFactory,
                llama_stack_server: Any) -> AsyncIterator[Started]:
    """Feedback enabled, noop authentication, no authorization rules (everything allowed)."""
    async with started(tmp_path_factory.mktemp("feedback"), llama_stack_server.url) as lcore:
        yield lcore


@pytest.fixture
def clean(lcore: Started) -> Started:
    """The shared app with an empty feedback directory and feedback switched on."""
    for path in lcore.stored():
        path.unlink()
    lcore.app.runtime.state.pop("feedback_enabled", None)
    return lcore


async def post_feedback(lcore: Started, body: Any, path: str = "/v1/feedback") -> tuple[int, Any]:
    response = await lcore.client.post(path, json=body)
    return response.status_code, await response.get_json()


async def test_feedback_is_stored_as_one_json_file(clean: Started) -> None:
    status, body = await post_feedback(clean, GOOD)
    assert (status, body) == (200, {"response": "feedback received"})
    files = clean.stored()
    assert len(files) == 1
    assert UUID_FILE.match(files[0].name), files[0].name
    record = json.loads(files[0].read_text(encoding="utf-8"))
    assert record.pop("timestamp")
    assert record == {"user_id": DEFAULT_USER_ID, **GOOD,
                      "categories": ["incomplete", "incorrect"]}
    # The old path works too and writes a second file with a different name.
    status, _ = await post_feedback(clean, {**GOOD, "sentiment": 1, "categories": ["helpful"]},
                                    path="/feedback")
    assert status == 200
    assert len(clean.stored()) == 2


async def test_feedback_records_the_callers_user_id(clean: Started) -> None:
    response = await clean.client.post("/v1/feedback?user_id=alice",
                                       json={**GOOD, "conversation_id": ALICES})
    assert response.status_code == 200
    (file,) = clean.stored()
    assert json.loads(file.read_text(encoding="utf-8"))["user_id"] == "alice"


async def test_feedback_only_on_the_callers_own_conversations(clean: Started) -> None:
    status, body = await post_feedback(clean, {**GOOD, "conversation_id": "0" * 32})
    assert status == 404 and body["detail"] == {
        "response": "Conversation not found",
        "cause": f"Conversation with ID {'0' * 32} does not exist"}
    status, body = await post_feedback(clean, {**GOOD, "conversation_id": ALICES})
    assert status == 403 and body["detail"] == {
        "response": "User does not have permission to perform this action",
        "cause": f"User {DEFAULT_USER_ID} does not have permission to submit feedback for "
                 f"conversation with ID {ALICES}"}
    assert clean.stored() == []


@pytest.mark.parametrize("bad", [
    {k: v for k, v in GOOD.items() if k != "llm_response"},
    {k: v for k, v in GOOD.items() if k != "conversation_id"},
    {**GOOD, "unexpected": "field"},
    {**GOOD, "sentiment": 0},
    {**GOOD, "sentiment": "one"},
    {**GOOD, "user_feedback": "x" * 4097},
    {**GOOD, "categories": ["not-a-category"]},
    {"conversation_id": GOOD["conversation_id"], "user_question": "q", "llm_response": "a"},
    {"conversation_id": GOOD["conversation_id"], "user_question": "q", "llm_response": "a",
     "user_feedback": "", "categories": []},
    [GOOD],
], ids=["no-llm-response", "no-conversation-id", "unknown-field", "sentiment-0",
        "sentiment-string", "feedback-too-long", "bad-category", "no-feedback",
        "empty-feedback", "not-an-object"])
async def test_bad_feedback_is_422_and_writes_nothing(clean: Started, bad: Any) -> None:
    status, body = await post_feedback(clean, bad)
    assert status == 422, body
    assert invalid_fields(body)
    assert clean.stored() == []


async def test_feedback_at_the_length_limit_is_accepted(clean: Started) -> None:
    status, _ = await post_feedback(clean, {**GOOD, "user_feedback": "x" * 4096})
    assert status == 200
    assert len(clean.stored()) == 1


async def test_malformed_json_is_422(clean: Started) -> None:
    response = await clean.client.post("/v1/feedback", data="{not json",
                                       headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert invalid_fields(await response.get_json()) == {"1": "JSON decode error"}
    assert clean.stored() == []


@pytest.mark.parametrize("conversation_id", [
    "../../escaped", "../feedback-escape", "/tmp/absolute", "a/../../b", "..", "a\\..\\b",
    "x" * 129,
])
async def test_path_traversal_in_conversation_id_is_rejected(clean: Started,
                                                             conversation_id: str) -> None:
    before = clean.all_files()
    status, body = await post_feedback(clean, {**GOOD, "conversation_id": conversation_id})
    assert status == 422, body
    assert "conversation_id" in invalid_fields(body)
    assert clean.all_files() == before
    assert not (clean.workdir / "escaped").exists()
    assert not (clean.workdir / "data" / "feedback-escape").exists()


async def test_status_toggle_at_runtime(clean: Started) -> None:
    client = clean.client
    status = await (await client.get("/v1/feedback/status")).get_json()
    assert status == {"functionality": "feedback", "status": {"enabled": True}}

    response = await client.put("/v1/feedback/status", json={"status": False})
    assert response.status_code == 200
    update = (await response.get_json())["status"]
    assert update.pop("timestamp")
    assert update == {"previous_status": True, "updated_status": False,
                      "updated_by": DEFAULT_USER_ID}
    assert (await (await client.get("/feedback/status")).get_json())["status"] == {
        "enabled": False}

    status_code, body = await post_feedback(clean, GOOD)
    assert status_code == 403
    assert body["detail"] == {"response": "Storing feedback is disabled",
                              "cause": "Storing feedback is disabled."}
    assert clean.stored() == []

    response = await client.put("/feedback/status", json={"status": True})
    assert (await response.get_json())["status"]["previous_status"] is False
    assert (await post_feedback(clean, GOOD))[0] == 200
    assert len(clean.stored()) == 1


@pytest.mark.parametrize("bad", [{"status": True, "extra": 1}, {"status": "maybe"}, []])
async def test_status_update_body_is_validated(clean: Started, bad: Any) -> None:
    response = await clean.client.put("/v1/feedback/status", json=bad)
    assert response.status_code == 422
    assert (await (await clean.client.get("/v1/feedback/status")).get_json())["status"] == {
        "enabled": True}


async def test_status_absent_means_off_as_upstream(clean: Started) -> None:
    response = await clean.client.put("/v1/feedback/status", json={})
    assert response.status_code == 200
    assert (await response.get_json())["status"]["updated_status"] is False
    assert (await (await clean.client.get("/v1/feedback/status")).get_json())["status"] == {
        "enabled": False}


async def test_feedback_disabled_in_config_is_403(tmp_path: Path,
                                                  llama_stack_server: Any) -> None:
    async with started(tmp_path, llama_stack_server.url, feedback_enabled=False) as lcore:
        status, body = await post_feedback(lcore, GOOD)
        assert status == 403
        assert body["detail"]["response"] == "Storing feedback is disabled"
        assert not lcore.storage.exists()
        status_body = await (await lcore.client.get("/v1/feedback/status")).get_json()
        assert status_body["status"] == {"enabled": False}


async def test_config_is_served_with_secrets_masked(clean: Started) -> None:
    response = await clean.client.get("/v1/config")
    assert response.status_code == 200
    configuration = (await response.get_json())["configuration"]
    assert configuration["name"] == "lcore-feedback-e2e"
    assert configuration["user_data_collection"]["feedback_enabled"] is True
    assert (await (await clean.client.get("/config")).get_json())["configuration"] == (
        configuration)


async def test_config_masks_api_keys_and_authorized_needs_a_key(
        tmp_path: Path, llama_stack_server: Any) -> None:
    secrets = {"llama": "llama-secret-1234", "auth": "auth-secret-5678"}
    rules = {"always_apply_access_rules": True,
             "access_rules": [{"role": "*", "actions": ["get_config", "feedback"]}]}
    auth = {"module": "api-key-token", "api_key_config": {"api_key": secrets["auth"]}}
    path = write_config(tmp_path, llama_stack_server.url, authentication=auth,
                        authorization=rules)
    config = yaml.safe_load(path.read_text())
    config["llama_stack"]["api_key"] = secrets["llama"]
    path.write_text(yaml.safe_dump(config))
    app = create_app(path, plugins=load_plugins(entrypoints=False))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        headers = {"Authorization": f"Bearer {secrets['auth']}"}

        assert (await client.get("/v1/config")).status_code == 401
        response = await client.get("/v1/config", headers=headers)
        assert response.status_code == 200
        text = await response.get_data(as_text=True)
        for secret in (secrets["llama"], secrets["auth"]):
            assert secret not in text
        configuration = json.loads(text)["configuration"]
        assert configuration["llama_stack"]["api_key"] == "*****"
        assert configuration["llama_stack"]["url"] == llama_stack_server.url
        assert configuration["authentication"]["settings"]["api_key"] == "*****"

        # /authorized: any authenticated caller, no action needed (rules grant none for it)
        assert (await client.post("/authorized")).status_code == 401
        response = await client.post("/v1/authorized", headers=headers)
        assert response.status_code == 200
        assert await response.get_json() == {"user_id": DEFAULT_USER_ID,
                                             "username": DEFAULT_USERNAME,
                                             "skip_userid_check": True}
        # PUT /feedback/status needs admin, which the rules do not grant
        response = await client.put("/v1/feedback/status", json={"status": False},
                                    headers=headers)
        assert response.status_code == 403
        status = await (await client.get("/v1/feedback/status")).get_json()
        assert status["status"] == {"enabled": True}


async def test_authorized_returns_the_caller(clean: Started) -> None:
    response = await clean.client.post("/authorized?user_id=bob")
    assert response.status_code == 200
    assert await response.get_json() == {"user_id": "bob", "username": DEFAULT_USERNAME,
                                         "skip_userid_check": True}
    assert (await clean.client.get("/authorized")).status_code == 405
