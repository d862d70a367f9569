"""Vector stores and file uploads against a real Llama Stack (server and library mode).

Request bodies follow upstream's OpenAPI shapes (VectorStoreCreateRequest, ...), with this
stack's embedding model and vector_io provider.
"""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.datastructures import FileStorage

from lcore_core.app import create_app
from lcore_core.plugins import load_plugins
from lcore_core.testing.errors import error_text
from lcore_core.testing.llama_stack import (
    EMBEDDING_MODEL_ID,
    LlamaStackServer,
)

from .support import Lcore, lcore_config, links, started

DOC_TEXT = ("The vstore-zebra maintenance window opens every second Tuesday at 02:00 UTC and "
            "lasts ninety minutes.")
TITLE, URL = "Maintenance windows", "https://example.com/ops/maintenance"


def upload(content: bytes, filename: str = "maintenance.txt") -> dict[str, Any]:
    return {"files": {"file": FileStorage(io.BytesIO(content), filename=filename)}}


async def ok(response: Any) -> Any:
    assert response.status_code == 200, await response.get_data(as_text=True)
    return await response.get_json()


async def error(response: Any, status: int) -> dict[str, Any]:
    text = await response.get_data(as_text=True)
    assert response.status_code == status, text
    detail: dict[str, Any] = (await response.get_json())["detail"]
    return detail


def create_body(**extra: Any) -> dict[str, Any]:
    """Upstream's VectorStoreCreateRequest example, with this stack's model and provider."""
    return {"name": f"my_vector_store-{uuid.uuid4().hex[:6]}",
            "embedding_model": EMBEDDING_MODEL_ID, "embedding_dimension": 384,
            "provider_id": "faiss", "metadata": {"user_id": "user123"}, **extra}


# --- the whole life of a store, and a query that finds its document ---------------------


async def test_store_lifecycle_and_query_finds_the_document(lcore: Lcore, llm: Any) -> None:
    client = lcore.client
    file = await ok(await client.post("/v1/files", **upload(DOC_TEXT.encode())))
    assert file["id"] and file["filename"] == "maintenance.txt"
    assert file["bytes"] == len(DOC_TEXT.encode())
    assert (file["purpose"], file["object"]) == ("assistants", "file")
    assert isinstance(file["created_at"], int)

    body = create_body()
    store = await ok(await client.post("/v1/vector-stores", json=body))
    store_id = store["id"]
    assert store["name"] == body["name"]
    assert store["metadata"]["user_id"] == "user123"
    assert set(store) == {"id", "name", "created_at", "last_active_at", "expires_at", "status",
                          "usage_bytes", "metadata"}

    attached = await ok(await client.post(f"/v1/vector-stores/{store_id}/files", json={
        "file_id": file["id"], "attributes": {"title": TITLE, "url": URL, "rank": 1.5,
                                              "public": True},
        "chunking_strategy": {"type": "auto"}}))
    assert attached == {"id": file["id"], "vector_store_id": store_id, "status": "completed",
                        "attributes": {"title": TITLE, "url": URL, "rank": 1.5, "public": True},
                        "last_error": None, "object": "vector_store.file"}

    listed = await ok(await client.get("/v1/vector-stores"))
    assert listed["object"] == "list"
    assert store_id in [s["id"] for s in listed["data"]]
    assert (await ok(await client.get(f"/v1/vector-stores/{store_id}")))["id"] == store_id
    files = await ok(await client.get(f"/v1/vector-stores/{store_id}/files"))
    assert [f["id"] for f in files["data"]] == [file["id"]]
    one = await ok(await client.get(f"/v1/vector-stores/{store_id}/files/{file['id']}"))
    assert one["attributes"]["title"] == TITLE

    renamed = await ok(await client.put(f"/v1/vector-stores/{store_id}", json={
        "name": "updated_vector_store", "metadata": {"user_id": "user456"}}))
    assert renamed["name"] == "updated_vector_store"
    assert renamed["metadata"] == {"user_id": "user456"}

    # The new store, named in a query, is searched through the file_search tool.
    llm.script("when is the zebra window", tool_call=("file_search", {"query": "vstore-zebra"}),
               then="Per the docs: {tool_output}")
    response = await lcore.query("when is the zebra window", vector_store_ids=[store_id],
                                 generate_topic_summary=False)
    answer = await ok(response)
    assert "second Tuesday" in answer["response"]
    assert {"doc_title": TITLE, "doc_url": URL} in links(answer["referenced_documents"])

    deleted = await ok(await client.delete(f"/v1/vector-stores/{store_id}/files/{file['id']}"))
    assert deleted == {"file_id": file["id"], "deleted": True,
                       "response": "Vector store file deleted successfully"}
    assert (await ok(await client.get(f"/v1/vector-stores/{store_id}/files")))["data"] == []
    gone = await ok(await client.delete(f"/v1/vector-stores/{store_id}"))
    assert gone == {"vector_store_id": store_id, "deleted": True,
                    "response": "Vector store deleted successfully"}
    listed = await ok(await client.get("/v1/vector-stores"))
    assert store_id not in [s["id"] for s in listed["data"]]


async def test_list_pages(lcore: Lcore) -> None:
    for _ in range(3):
        await ok(await lcore.client.post("/v1/vector-stores", json=create_body()))
    first = await ok(await lcore.client.get("/v1/vector-stores?limit=2"))
    assert len(first["data"]) == 2 and first["has_more"] is True
    after = first["last_id"]
    second = await ok(await lcore.client.get(f"/v1/vector-stores?limit=2&after={after}"))
    assert not {s["id"] for s in second["data"]} & {s["id"] for s in first["data"]}


# --- unknown ids: upstream's 404 texts ---------------------------------------------------


async def test_unknown_ids(lcore: Lcore) -> None:
    client = lcore.client
    store = await ok(await client.post("/v1/vector-stores", json=create_body()))
    file = await ok(await client.post("/v1/files", **upload(b"some text")))
    nope = "vs_00000000-0000-0000-0000-000000000000"
    missing_store = {"response": "Vector Store not found",
                     "cause": f"Vector Store with ID {nope} does not exist"}
    assert await error(await client.get(f"/v1/vector-stores/{nope}"), 404) == missing_store
    assert await error(await client.put(f"/v1/vector-stores/{nope}", json={"name": "x"}),
                       404) == missing_store
    assert await error(await client.get(f"/v1/vector-stores/{nope}/files"),
                       404) == missing_store
    assert await error(await client.post(f"/v1/vector-stores/{nope}/files",
                                         json={"file_id": file["id"]}), 404) == missing_store
    assert await error(await client.post(f"/v1/vector-stores/{store['id']}/files",
                                         json={"file_id": "file-0000"}), 404) == {
        "response": "File not found", "cause": "File with ID file-0000 does not exist"}
    # ... and the unknown file left nothing behind in the store.
    files = await ok(await client.get(f"/v1/vector-stores/{store['id']}/files"))
    assert files["data"] == []
    assert await error(await client.get(f"/v1/vector-stores/{store['id']}/files/{file['id']}"),
                       404) == {"response": "File not found",
                                "cause": f"File with ID {file['id']} does not exist"}
    # Deleting what is not there is upstream's 200 with deleted: false.
    assert await ok(await client.delete(f"/v1/vector-stores/{store['id']}/files/{file['id']}")) \
        == {"file_id": file["id"], "deleted": False, "response": "Vector store file not found"}
    assert await ok(await client.delete(f"/v1/vector-stores/{nope}")) == {
        "vector_store_id": nope, "deleted": False, "response": "Vector store not found"}
    # An id Llama Stack could never have issued is not sent to it.
    assert (await error(await client.get("/v1/vector-stores/bad%20id"), 404))["response"] == \
        "Vector Store not found"


# --- bounded input: clear 422 ------------------------------------------------------------


async def test_invalid_bodies_are_422(lcore: Lcore) -> None:
    if lcore.mode != "server":
        pytest.skip("validation happens before Llama Stack: one mode is enough")
    post = lcore.client.post
    cases = [
        ("/v1/vector-stores", {"name": ""}, "name"),
        ("/v1/vector-stores", {"name": "x" * 257}, "name"),
        ("/v1/vector-stores", {"name": "x", "surprise": 1}, "surprise"),
        ("/v1/vector-stores", {"name": "x", "embedding_dimension": 0}, "embedding_dimension"),
        ("/v1/vector-stores", {"name": "x", "metadata": {f"k{i}": i for i in range(17)}},
         "at most 16 pairs"),
        ("/v1/vector-stores", {"name": "x", "metadata": {"k": "v" * 600}}, "exceeds 512"),
        ("/v1/vector-stores", {"name": "x", "chunking_strategy": {"size": 5}}, "'type'"),
        ("/v1/vector-stores/vs_1/files", {"file_id": "f", "attributes": {
            f"k{i}": "v" for i in range(17)}}, "at most 16 pairs"),
        ("/v1/vector-stores/vs_1/files", {"file_id": "f", "attributes": {"k" * 65: "v"}},
         "exceeds 64 characters"),
        ("/v1/vector-stores/vs_1/files", {"file_id": "f", "attributes": {"k": "v" * 513}},
         "exceeds 512 characters"),
        ("/v1/vector-stores/vs_1/files", {"file_id": "f", "attributes": {"k": ["list"]}},
         "a string, a number or a boolean"),
        ("/v1/vector-stores/vs_1/files", {"attributes": {}}, "file_id"),
    ]
    for path, body, needle in cases:
        response = await post(path, json=body)
        await error(response, 422)
        problem = error_text(await response.get_json())
        assert needle in problem, (body, problem)
    empty = await lcore.client.put("/v1/vector-stores/vs_1", json={})
    await error(empty, 422)
    assert "At least one field must be provided" in error_text(await empty.get_json())
    for query in ("limit=0", "limit=101", "order=sideways", "after=bad%20id"):
        for path in ("/v1/vector-stores", "/v1/vector-stores/vs_1/files"):
            response = await lcore.client.get(f"{path}?{query}")
            await error(response, 422)
            name = query.split("=")[0]
            assert (await response.get_json())["detail"][0]["loc"] == ["query", name]


async def test_upload_shape_is_checked(lcore: Lcore) -> None:
    if lcore.mode != "server":
        pytest.skip("checked before Llama Stack: one mode is enough")
    post = lcore.client.post
    assert "multipart/form-data" in (await error(await post("/v1/files", json={}), 422))["cause"]
    assert "multipart/form-data" in (await error(await post("/v1/files", form={"x": "y"}),
                                                 422))["cause"]
    other = {"files": {"document": FileStorage(io.BytesIO(b"a"), filename="a.txt")}}
    assert "exactly one file" in (await error(await post("/v1/files", **other), 422))["cause"]
    two = {"files": {"file": FileStorage(io.BytesIO(b"a"), filename="a.txt"),
                     "other": FileStorage(io.BytesIO(b"b"), filename="b.txt")}}
    assert "exactly one file" in (await error(await post("/v1/files", **two), 422))["cause"]
    long_name = "n" * 252 + ".txt"
    assert "longer than 255" in (await error(await post("/v1/files", **upload(b"a", long_name)),
                                             422))["cause"]
    many = {"form": {f"field{i}": "x" for i in range(20)}, **upload(b"a")}
    assert (await error(await post("/v1/files", **many), 413))["response"] == \
        "Too many form parts"


async def test_upload_without_extension_becomes_txt(lcore: Lcore) -> None:
    file = await ok(await lcore.client.post("/v1/files", **upload(b"notes", "README")))
    assert file["filename"] == "README.txt"


# --- separate apps: small upload limit, RBAC, Llama Stack down ----------------------------


@pytest.fixture
async def small_limit(tmp_path: Path, llama_stack_server: Any) -> AsyncIterator[Any]:
    config = lcore_config(tmp_path, "server", llama_stack_server.url,
                          service={"host": "127.0.0.1", "port": 8080,
                                   "max_request_size": 4096})
    app = create_app(config, plugins=load_plugins(entrypoints=False))
    async with started(app) as test_app:
        yield test_app.test_client()


async def test_oversized_upload_is_413(small_limit: Any) -> None:
    response = await small_limit.post("/v1/files", **upload(b"x" * 5000))
    detail = await error(response, 413)
    assert detail == {"response": "File too large", "cause": "File size exceeds maximum "
                      "allowed size of 4096 bytes (0 MB)"}
    # With a Content-Length the body is refused before it is read, naming its size.
    boundary = "lcore-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"big.txt\"\r\nContent-Type: text/plain\r\n\r\n").encode() \
        + b"x" * 5000 + f"\r\n--{boundary}--\r\n".encode()
    response = await small_limit.post("/v1/files", data=body, headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}",
        "Content-Length": str(len(body))})
    assert await error(response, 413) == {"response": "File too large", "cause": (
        f"File size {len(body)} bytes exceeds maximum allowed size of 4096 bytes (0 MB)")}
    # Under the limit the same app uploads.
    await ok(await small_limit.post("/v1/files", **upload(b"x" * 1000)))


READS = [("GET", "/v1/vector-stores"), ("GET", "/v1/vector-stores/vs_1"),
         ("GET", "/v1/vector-stores/vs_1/files"), ("GET", "/v1/vector-stores/vs_1/files/f_1")]
MANAGES = [("POST", "/v1/vector-stores"), ("PUT", "/v1/vector-stores/vs_1"),
           ("DELETE", "/v1/vector-stores/vs_1"), ("POST", "/v1/vector-stores/vs_1/files"),
           ("DELETE", "/v1/vector-stores/vs_1/files/f_1")]
UPLOADS = [("POST", "/v1/files")]
ROUTES = {"read_vector_stores": READS, "manage_vector_stores": MANAGES, "manage_files": UPLOADS}


@pytest.mark.parametrize("withheld", sorted(ROUTES))
async def test_each_route_needs_its_action(tmp_path: Path, llama_stack_server: Any,
                                           withheld: str) -> None:
    granted = [a for a in ROUTES if a != withheld]
    config = lcore_config(tmp_path, "server", llama_stack_server.url, authorization={
        "always_apply_access_rules": True,  # noop's callers are not judged otherwise
        "access_rules": [{"role": "*", "actions": granted}]})
    app = create_app(config, plugins=load_plugins(entrypoints=False))
    async with started(app) as test_app:
        client = test_app.test_client()
        for action, routes in ROUTES.items():
            for method, path in routes:
                # No body: a granted route answers 4xx/2xx for it, never 403.
                response = await client.open(path, method=method)
                if action == withheld:
                    detail = await error(response, 403)
                    assert detail["response"] == \
                        "User does not have permission to access this endpoint"
                else:
                    assert response.status_code != 403, (method, path)


async def test_llama_stack_down_is_503(tmp_path: Path, own_stack: LlamaStackServer) -> None:
    app = create_app(lcore_config(tmp_path / "lcore", "server", own_stack.url),
                     plugins=load_plugins(entrypoints=False))
    async with started(app) as test_app:
        client = test_app.test_client()
        store = await ok(await client.post("/v1/vector-stores", json=create_body()))
        own_stack.kill()
        calls = [client.get("/v1/vector-stores"), client.get(f"/v1/vector-stores/{store['id']}"),
                 client.post("/v1/vector-stores", json=create_body()),
                 client.delete(f"/v1/vector-stores/{store['id']}"),
                 client.get(f"/v1/vector-stores/{store['id']}/files"),
                 client.post("/v1/files", **upload(b"text"))]
        for call in calls:
            detail = await error(await call, 503)
            assert detail["response"] == "Unable to connect to OGX"
        await asyncio.to_thread(own_stack.start)
        assert (await ok(await client.get(f"/v1/vector-stores/{store['id']}")))["id"] == \
            store["id"]
