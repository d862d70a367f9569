"""The `rag` section in upstream's 0.7 layout (byok, okp, retrieval), the 0.6 layout, and the
compaction / approvals sections LCore accepts."""

from __future__ import annotations

import textwrap

import pytest

from lcore_core.plugins import Plugins, load_plugins

from .test_config import BASE, errors, load

STORES = textwrap.dedent("""\
    rag:
      byok:
        max_chunks: 4
        stores:
          - rag_id: product-docs
            backend: faiss
            vector_db_id: vs_123
            db_path: /var/lib/rag/kv.db
            score_multiplier: 2.0
          - rag_id: kb
            backend: pgvector
            vector_db_id: vs_456
            relevance_cutoff_score: 0.5
    """)


@pytest.fixture
def plugins() -> Plugins:
    return load_plugins(entrypoints=False)


def test_current_layout_is_normalised(tmp_path, plugins):
    config = load(tmp_path, BASE + STORES + (
        "  okp: {offline: false, max_chunks: 3, search_mode: hybrid}\n"
        "  retrieval:\n"
        "    inline: {sources: [product-docs, okp], max_chunks: 7}\n"
        "    tool: {sources: [kb], max_chunks: 2}\n"), plugins)
    assert config.rag.layout == "0.7"
    assert config.rag.inline == ["product-docs", "okp"]
    assert config.rag.tool == ["kb"]
    assert (config.rag.inline_max_chunks, config.rag.store_max_chunks,
            config.rag.tool_max_chunks) == (7, 4, 2)
    assert config.rag.okp.offline is False and config.rag.okp.max_chunks == 3
    # The stores are where every rag_id lookup goes, with upstream's defaults filled in.
    docs, kb = config.byok_rag
    assert (docs.rag_id, docs.vector_db_id, docs.score_multiplier) == ("product-docs",
                                                                       "vs_123", 2.0)
    assert docs.embedding_model == "sentence-transformers/all-mpnet-base-v2"
    assert docs.embedding_dimension == 768 and docs.relevance_cutoff_score == 0.3
    assert kb.relevance_cutoff_score == 0.5


def test_stores_alone_enable_no_retrieval(tmp_path, plugins):
    config = load(tmp_path, BASE + STORES, plugins)
    assert config.rag.inline == [] and config.rag.tool == []
    assert config.rag.tool_max_chunks == 10


def test_unknown_sources_are_named(tmp_path, plugins):
    lines = errors(tmp_path, BASE + STORES + "  retrieval:\n    tool: {sources: [kb, nope]}\n",
                   plugins)
    assert lines == ["F:17: rag.retrieval.tool.sources: unknown RAG ids ['nope']; declared: "
                     "['kb', 'okp', 'product-docs'] (rag.byok.stores[].rag_id, or okp)"]


def test_layouts_do_not_mix(tmp_path, plugins):
    lines = errors(tmp_path, BASE + STORES + "  inline: [kb]\n", plugins)
    assert lines == ["F:16: rag.inline: inline belongs to the 0.6 layout and byok to the 0.7 "
                     "layout: use one (0.7: rag.byok.stores and rag.retrieval.inline/tool."
                     "sources)"]
    lines = errors(tmp_path, BASE + "byok_rag: [{rag_id: a, vector_db_id: x}]\n" + STORES,
                   plugins)
    assert lines == ["F:3: byok_rag: give the stores either as byok_rag (0.6 layout) or as "
                     "rag.byok.stores (0.7 layout), not both"]


@pytest.mark.parametrize(("store", "message"), [
    ("{rag_id: a, vector_db_id: x}", "rag.byok.stores[0].db_path: db_path is required when "
                                     "backend is 'faiss'"),
    ("{rag_id: a, vector_db_id: x, backend: chroma}",
     "rag.byok.stores[0].backend: unsupported RAG backend 'chroma'; supported: faiss, pgvector"),
    ("{rag_id: a, vector_db_id: x, backend: pgvector, relevance_cutoff_score: 0}",
     "rag.byok.stores[0].relevance_cutoff_score: Must be greater than 0."),
    ("{rag_id: '', vector_db_id: x, backend: pgvector}",
     "rag.byok.stores[0].rag_id: Shorter than minimum length 1."),
])
def test_store_rules(tmp_path, plugins, store, message):
    lines = errors(tmp_path, BASE + f"rag:\n  byok:\n    stores:\n      - {store}\n", plugins)
    assert [line.split(": ", 1)[1] for line in lines] == [message]


def test_repeated_rag_ids(tmp_path, plugins):
    lines = errors(tmp_path, BASE + textwrap.dedent("""\
        rag:
          byok:
            stores:
              - {rag_id: a, vector_db_id: x, backend: pgvector}
              - {rag_id: a, vector_db_id: y, backend: pgvector}
        """), plugins)
    assert lines == ["F:5: rag.byok.stores: rag_id values must be unique; repeated: a"]


def test_reranking_cannot_be_switched_on(tmp_path, plugins):
    lines = errors(tmp_path, BASE + textwrap.dedent("""\
        rag:
          retrieval:
            inline:
              reranker: {enabled: true}
        """), plugins)
    assert len(lines) == 1 and lines[0].startswith(
        "F:6: rag.retrieval.inline.reranker.enabled: LCore does not rerank")
    # Present but off is fine (upstream writes it so).
    load(tmp_path, BASE + "rag:\n  retrieval:\n    inline:\n      reranker: {enabled: false}\n",
         plugins)


def test_old_layout_keeps_its_meaning(tmp_path, plugins):
    config = load(tmp_path, BASE + "rag:\n  inline: [store-name]\n", plugins)
    assert config.rag.layout == "0.6"
    assert config.rag.inline == ["store-name"] and config.rag.tool is None
    assert (config.rag.inline_max_chunks, config.rag.store_max_chunks) == (10, 10)
    assert load(tmp_path, BASE, plugins).rag is None


def test_okp_only_in_the_current_layout(tmp_path, plugins):
    [line] = errors(tmp_path, BASE + "rag:\n  tool: [okp]\n", plugins)
    assert line.startswith("F:4: rag.tool: 'okp' is a source of the 0.7 layout only")


def test_compaction_and_approvals(tmp_path, plugins):
    config = load(tmp_path, BASE + textwrap.dedent("""\
        compaction: {enabled: false, threshold_ratio: 0.5}
        approvals: {approval_timeout_seconds: 60}
        inference: {context_windows: {gpt-4o-mini: 128000}}
        mcp_servers:
          - name: a
            url: http://a:1
            require_approval: {never: [read_file]}
        """), plugins)
    assert config.compaction.threshold_ratio == 0.5
    assert config.approvals.approval_timeout_seconds == 60
    assert config.approvals.approval_retention_days == 30
    assert config.inference.context_windows == {"gpt-4o-mini": 128000}
    lines = errors(tmp_path, BASE + textwrap.dedent("""\
        compaction: {enabled: true}
        approvals: {approval_timeout_seconds: 0}
        mcp_servers:
          - name: a
            url: http://a:1
            require_approval: {always: [rm], never: [ls]}
        """), plugins)
    assert lines == [
        "F:3: compaction.enabled: LCore does not compact conversation history yet: a "
        "conversation is replayed whole; set enabled: false",
        "F:4: approvals.approval_timeout_seconds: Must be greater than or equal to 1.",
        "F:8: mcp_servers[0].require_approval: LCore does not hold tool calls for human "
        "approval: tools ['rm'] would never run; remove them from always"]


def test_ratio_bounds(tmp_path, plugins):
    assert errors(tmp_path, BASE + "compaction: {buffer_max_ratio: 1.5}\n", plugins) == [
        "F:3: compaction.buffer_max_ratio: must be between 0.0 and 1.0 (inclusive)"]


def test_a_section_with_nothing_under_it_is_its_defaults(tmp_path, plugins):
    """Upstream's example writes `rlsapi_v1:` with every key commented out."""
    config = load(tmp_path, BASE + "compaction:\n  # enabled: false\ninference:\n", plugins)
    assert config.compaction.enabled is False and config.compaction.threshold_ratio == 0.7
    assert config.inference.max_tool_calls == 30
