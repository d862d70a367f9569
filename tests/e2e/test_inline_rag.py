"""Inline RAG and the `rag`/`byok_rag` sections, against a real Llama Stack's vector stores.

The scripted LLM answers with the system message it received, so a test sees exactly which
chunks LCore put into the instructions.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from lcore_core.app import create_app
from lcore_core.plugins import load_plugins
from lcore_core.testing.llm import message_text

from .support import Lcore, lcore_config, links, started

OPEN_DOC = ("LCore plugins are separately installable Python distributions found through "
            "entry points.")
STRICT_DOC = "Quota limits reset on a schedule that the quota plugin keeps."
OTHER_DOC = "Pods are the smallest deployable units of computing in Kubernetes."


def echo_system(messages: list[dict[str, Any]]) -> str:
    system = " ".join(message_text(m) for m in messages if m.get("role") == "system")
    return f"SYSTEM[{system}]"


@pytest.fixture(scope="module")
async def stores(llama_stack_server: Any) -> dict[str, str]:
    """Three vector stores with one titled document each: name -> id."""
    from llama_stack_client import AsyncLlamaStackClient

    client = AsyncLlamaStackClient(base_url=llama_stack_server.url)
    found = {}
    suffix = uuid.uuid4().hex[:6]
    for name, text, title in (("open", OPEN_DOC, "Plugins"), ("strict", STRICT_DOC, "Quotas"),
                              ("other", OTHER_DOC, "Pods")):
        upload = io.BytesIO(text.encode())
        upload.name = f"{name}.txt"
        file = await client.files.create(file=upload, purpose="assistants")
        store = await client.vector_stores.create(name=f"inline-{name}-{suffix}")
        await client.vector_stores.files.create(
            vector_store_id=store.id, file_id=file.id,
            attributes={"title": title, "url": f"https://docs.example/{name}"})
        found[name] = store.id
        found[f"{name}-name"] = store.name or ""
    return found


@pytest.fixture(scope="module")
async def rag_lcore(tmp_path_factory: pytest.TempPathFactory, llama_stack_server: Any,
                    stores: dict[str, str]) -> AsyncIterator[Lcore]:
    workdir = tmp_path_factory.mktemp("inline-rag")
    config = lcore_config(
        workdir, "server", llama_stack_server.url,
        byok_rag=[
            # The strict store's cutoff is out of reach: its chunks never make it in.
            {"rag_id": "strict-kb", "vector_db_id": stores["strict"],
             "relevance_cutoff_score": 1e9, "embedding_model": "unused-by-lcore",
             "db_path": "/nowhere/faiss_store.db"},
            {"rag_id": "open-kb", "vector_db_id": stores["open"],
             "relevance_cutoff_score": 0.0, "score_multiplier": 2.0},
        ],
        # By rag_id, and (LCore) by a store's name; one source Llama Stack does not know.
        rag={"inline": ["strict-kb", "open-kb", stores["other-name"], "no-such-store"],
             "tool": ["open-kb"]})
    app = create_app(config, plugins=load_plugins(entrypoints=False))
    async with started(app) as test_app:
        lcore = Lcore(app, test_app.test_client(), "server", workdir)
        yield lcore
        await lcore.runtime.drain()


async def test_inline_chunks_reach_the_model_and_the_response(rag_lcore: Lcore, llm: Any,
                                                              stores: dict[str, str]) -> None:
    llm.script("inline question one", text=echo_system)
    response = await rag_lcore.query("inline question one", generate_topic_summary=False)
    body = await response.get_json()
    assert response.status_code == 200, body
    answer = body["response"]
    assert OPEN_DOC in answer and OTHER_DOC in answer, answer
    assert STRICT_DOC not in answer  # below its store's relevance cutoff
    docs = body["referenced_documents"]
    assert {"doc_title": "Plugins", "doc_url": "https://docs.example/open"} in links(docs)
    assert {"doc_title": "Pods", "doc_url": "https://docs.example/other"} in links(docs)
    assert all(d["doc_title"] != "Quotas" for d in docs)
    open_chunks = [c for c in body["rag_chunks"] if "separately installable" in c["content"]]
    assert open_chunks, body["rag_chunks"]
    # As upstream names them: the chunk's source is its rag_id, its attributes the store's
    # metadata; the document names its source too.
    assert open_chunks[0]["source"] == "open-kb"
    attributes = open_chunks[0]["attributes"]
    assert attributes["title"] == "Plugins" and attributes["url"] == "https://docs.example/open"
    assert {"doc_title": "Plugins", "doc_url": "https://docs.example/open",
            "source": "open-kb", "document_id": attributes["document_id"]} in docs
    # No tool call was needed: the chunks came with the instructions.
    assert body["tool_calls"] == []
    # The open store's scores are weighed by its score_multiplier (2.0).
    raw = await rag_lcore.runtime.llama.client.vector_stores.search(
        vector_store_id=stores["open"], query="inline question one")
    assert open_chunks[0]["score"] == pytest.approx(2.0 * raw.data[0].score)


async def test_tool_rag_offers_only_the_listed_stores(rag_lcore: Lcore, llm: Any,
                                                      stores: dict[str, str]) -> None:
    llm.script("tool question two", tool_call=("file_search", {"query": "plugins pods quota"}),
               then="Found: {tool_output}")
    body = await (await rag_lcore.query("tool question two",
                                        generate_topic_summary=False)).get_json()
    assert [c["name"] for c in body["tool_calls"]] == ["file_search"], body
    searched = body["tool_results"][0]["content"]
    assert "separately installable" in searched  # the open store, listed under `tool`
    assert "smallest deployable" not in searched and "reset on a schedule" not in searched
    # file_search searched one store: its chunks are that store's rag_id's, as upstream says.
    found = [c for c in body["rag_chunks"] if "separately installable" in c["content"]]
    assert found and {c["source"] for c in found} == {"open-kb"}, body["rag_chunks"]


async def test_inline_rag_in_a_stream(rag_lcore: Lcore, llm: Any) -> None:
    llm.script("streamed question three", text=echo_system)
    status, events = await rag_lcore.stream("streamed question three",
                                            generate_topic_summary=False)
    assert status == 200
    end = events[-1]
    assert end["event"] == "end", events
    assert {"doc_title": "Plugins", "doc_url": "https://docs.example/open"} in links(
        end["data"]["referenced_documents"])
    tokens = "".join(e["data"]["token"] for e in events if e["event"] == "token")
    assert OPEN_DOC in tokens


async def test_without_a_rag_section_nothing_is_inlined(lcore: Lcore, llm: Any,
                                                        stores: dict[str, str]) -> None:
    llm.script("plain question four", text=echo_system)
    body = await (await lcore.query("plain question four", no_tools=True,
                                    generate_topic_summary=False)).get_json()
    assert OPEN_DOC not in body["response"] and "SYSTEM[" in body["response"]
    assert body["referenced_documents"] == []


def test_config_refuses_okp_and_repeated_rag_ids(tmp_path: Path) -> None:
    from lcore_core.errors import ConfigError

    for extra, needle in (
        ({"rag": {"inline": ["okp"]}}, "rag.inline"),
        ({"byok_rag": [{"rag_id": "a", "vector_db_id": "x"},
                       {"rag_id": "a", "vector_db_id": "y"}]}, "byok_rag"),
        ({"byok_rag": [{"rag_id": "a"}]}, "vector_db_id"),
    ):
        path = lcore_config(tmp_path / uuid.uuid4().hex, "server", "http://127.0.0.1:1", **extra)
        with pytest.raises(ConfigError) as caught:
            create_app(path, plugins=load_plugins(entrypoints=False))
        assert needle in str(caught.value) and str(path) in str(caught.value), caught.value


# --- upstream's 0.7 layout: rag.byok.stores, rag.okp, rag.retrieval --------------------------

PORTAL_DOC = "Routes expose OpenShift services at a public host name."


@pytest.fixture(scope="module")
async def portal_store(llama_stack_server: Any) -> str:
    """A store named as upstream registers OKP's Solr store, with portal-style metadata."""
    from llama_stack_client import AsyncLlamaStackClient

    client = AsyncLlamaStackClient(base_url=llama_stack_server.url)
    upload = io.BytesIO(PORTAL_DOC.encode())
    upload.name = "routes.txt"
    file = await client.files.create(file=upload, purpose="assistants")
    store = await client.vector_stores.create(name="portal-rag")
    await client.vector_stores.files.create(
        vector_store_id=store.id, file_id=file.id,
        attributes={"title": "Routes", "source_path": "/docs/routes",
                    "reference_url": "https://portal.example/routes"})
    return store.id


async def _layout_07(tmp_path_factory: pytest.TempPathFactory, server: Any,
                     stores: dict[str, str], okp: dict[str, Any]) -> Lcore:
    workdir = tmp_path_factory.mktemp("rag-07")
    config = lcore_config(
        workdir, "server", server.url,
        rag={"byok": {"max_chunks": 5, "stores": [
                {"rag_id": "open-kb", "vector_db_id": stores["open"], "backend": "faiss",
                 "db_path": "/unused/by/server/mode.db", "score_multiplier": 3.0,
                 "relevance_cutoff_score": 0.0001},
                {"rag_id": "other-kb", "vector_db_id": stores["other"], "backend": "faiss",
                 "db_path": "/unused/by/server/mode.db", "relevance_cutoff_score": 0.0001}]},
             "okp": okp,
             "retrieval": {"inline": {"sources": ["open-kb", "other-kb", "okp"]},
                           "tool": {"sources": ["other-kb"], "max_chunks": 1}}})
    return Lcore(create_app(config, plugins=load_plugins(entrypoints=False)), None, "server",
                 workdir)


@pytest.fixture(scope="module")
async def lcore_07(tmp_path_factory: pytest.TempPathFactory, llama_stack_server: Any,
                   stores: dict[str, str], portal_store: str) -> AsyncIterator[Lcore]:
    made = await _layout_07(tmp_path_factory, llama_stack_server, stores,
                            {"rhokp_url": "https://okp.example:8443", "offline": True})
    async with started(made.app) as test_app:
        lcore = Lcore(made.app, test_app.test_client(), "server", made.workdir)
        yield lcore
        await lcore.runtime.drain()


async def test_current_layout_inlines_by_rag_id(lcore_07: Lcore, llm: Any,
                                                stores: dict[str, str]) -> None:
    llm.script("layout question five", text=echo_system)
    body = await (await lcore_07.query("layout question five", no_tools=True,
                                       generate_topic_summary=False)).get_json()
    answer = body["response"]
    assert OPEN_DOC in answer and OTHER_DOC in answer and PORTAL_DOC in answer, answer
    docs = body["referenced_documents"]
    # OKP's documents link into the portal by their source path (offline: true).
    assert {"doc_title": "Routes",
            "doc_url": "https://okp.example:8443/docs/routes"} in links(docs)
    # open-kb's score_multiplier (3.0) puts its chunk first.
    assert "separately installable" in body["rag_chunks"][0]["content"]


async def test_request_store_ids_narrow_inline_rag_and_name_rag_ids(
        lcore_07: Lcore, llm: Any) -> None:
    llm.script("layout question six", text=echo_system)
    body = await (await lcore_07.query("layout question six", vector_store_ids=["open-kb"],
                                       no_tools=False, generate_topic_summary=False)
                  ).get_json()
    assert OPEN_DOC in body["response"], body
    assert OTHER_DOC not in body["response"] and PORTAL_DOC not in body["response"]
    # The rag_id reached Llama Stack as its vector store id: file_search was offered on it.
    offered = [r for r in llm.chat_requests if "layout question six" in str(r.messages)]
    assert offered and "file_search" in offered[-1].tool_names


async def test_rags_names_byok_stores_by_rag_id(lcore_07: Lcore, stores: dict[str, str],
                                               portal_store: str) -> None:
    """inline_rag.feature and faiss.feature, "...source is registered": /v1/rags lists a BYOK
    store by its configured rag_id (other stores by their id), and /v1/rags/{rag_id} takes and
    shows that rag_id, as upstream."""
    listed = (await (await lcore_07.client.get("/v1/rags")).get_json())["rags"]
    assert {"open-kb", "other-kb", portal_store} <= set(listed), listed
    assert stores["open"] not in listed and stores["other"] not in listed
    for asked in ("open-kb", stores["open"]):
        answer = await lcore_07.client.get(f"/v1/rags/{asked}")
        assert answer.status_code == 200, await answer.get_data(as_text=True)
        assert (await answer.get_json())["id"] == "open-kb"
    unknown = await lcore_07.client.get("/v1/rags/no-such-kb")
    assert unknown.status_code == 404


async def test_tool_rag_uses_the_tool_sources_and_their_limit(lcore_07: Lcore,
                                                              stores: dict[str, str]) -> None:
    from lcore_core.auth import AuthTuple
    from lcore_core.pipeline import select_tools

    auth = AuthTuple("u", "u", frozenset(), None)
    tools = await select_tools(lcore_07.runtime, auth, None, {}, {})
    assert tools == [{"type": "file_search", "vector_store_ids": [stores["other"]],
                      "max_num_results": 1}]
    tools = await select_tools(lcore_07.runtime, auth, ["open-kb", "vs_literal"], {}, {})
    assert tools[0]["vector_store_ids"] == [stores["open"], "vs_literal"]


async def test_without_a_rag_section_no_store_is_offered(lcore: Lcore) -> None:
    from lcore_core.auth import AuthTuple
    from lcore_core.pipeline import select_tools

    tools = await select_tools(lcore.runtime, AuthTuple("u", "u", frozenset(), None), None,
                               {}, {})
    assert [t for t in tools if t["type"] == "file_search"] == []


async def test_okp_online_links_to_the_public_page(
        tmp_path_factory: pytest.TempPathFactory, llama_stack_server: Any,
        stores: dict[str, str], portal_store: str, llm: Any) -> None:
    made = await _layout_07(tmp_path_factory, llama_stack_server, stores, {"offline": False})
    async with started(made.app) as test_app:
        lcore = Lcore(made.app, test_app.test_client(), "server", made.workdir)
        llm.script("layout question seven", text=echo_system)
        body = await (await lcore.query("layout question seven", no_tools=True,
                                        generate_topic_summary=False)).get_json()
        await lcore.runtime.drain()
    assert {"doc_title": "Routes", "doc_url": "https://portal.example/routes"} in links(
        body["referenced_documents"])


async def test_rag_content_metadata_links_as_upstream(
        tmp_path_factory: pytest.TempPathFactory, llama_stack_server: Any, llm: Any) -> None:
    """byok_pdf.feature: rag-content's stores keep a document's link in `docs_url` and its id in
    `document_id` (upstream's fixture pdf_kv_store.db: `docs_url: lightspeed-field-notes.pdf`,
    `title`, `document_id`, `source`). Upstream links `docs_url` when it is a URL and gives
    no link for a bare file name; the document carries its rag_id and id."""
    from llama_stack_client import AsyncLlamaStackClient

    client = AsyncLlamaStackClient(base_url=llama_stack_server.url)
    store = await client.vector_stores.create(name=f"field-notes-{uuid.uuid4().hex[:6]}")
    for name, text, attrs in (
            ("notes.txt", "The mascot of the field notes is a purple penguin named Zephyr.",
             {"title": "Field notes", "docs_url": "lightspeed-field-notes.pdf",
              "document_id": "file-notes", "source": "lightspeed-field-notes"}),
            ("guide.txt", "The field guide says the penguin Zephyr answers on Tuesdays.",
             {"title": "Field guide", "docs_url": "https://docs.example/field-guide",
              "document_id": "file-guide"})):
        upload = io.BytesIO(text.encode())
        upload.name = name
        file = await client.files.create(file=upload, purpose="assistants")
        await client.vector_stores.files.create(vector_store_id=store.id, file_id=file.id,
                                                attributes=attrs)
    workdir = tmp_path_factory.mktemp("rag-content")
    config = lcore_config(workdir, "server", llama_stack_server.url,
                          byok_rag=[{"rag_id": "pdf-field-notes", "vector_db_id": store.id,
                                     "relevance_cutoff_score": 0.0}],
                          rag={"inline": ["pdf-field-notes"]})
    app = create_app(config, plugins=load_plugins(entrypoints=False))
    async with started(app) as test_app:
        lcore = Lcore(app, test_app.test_client(), "server", workdir)
        llm.script("penguin mascot question", text=echo_system)
        body = await (await lcore.query("penguin mascot question", no_tools=True,
                                        generate_topic_summary=False)).get_json()
        await lcore.runtime.drain()
    # (Llama Stack puts its own file id in a chunk's `document_id`.)
    ids = {c["attributes"]["title"]: c["attributes"]["document_id"] for c in body["rag_chunks"]}
    docs = {d["doc_title"]: d for d in body["referenced_documents"]}
    assert docs["Field notes"] == {"doc_title": "Field notes", "doc_url": None,
                                   "source": "pdf-field-notes",
                                   "document_id": ids["Field notes"]}
    assert docs["Field guide"] == {"doc_title": "Field guide",
                                   "doc_url": "https://docs.example/field-guide",
                                   "source": "pdf-field-notes",
                                   "document_id": ids["Field guide"]}
    assert {c["source"] for c in body["rag_chunks"]} == {"pdf-field-notes"}
