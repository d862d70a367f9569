"""RAG sources from the `rag` section (either layout) and `byok_rag`: inline retrieval and the
file_search stores.

Inline RAG searches the configured vector stores before the call and puts the best chunks in
the instructions, so the answer can use them without the model calling a tool (small local
models do not). Tool RAG offers the stores as `file_search`. A source is a rag_id (`okp` for
the portal's Solr store) or, in the 0.6 layout, a Llama Stack vector store id or name (names
let a config name a store indexed at start-up, whose id is only known then).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import structlog

from lcore_core.config.schema import OKP_RAG_ID, OKP_VECTOR_STORE
from lcore_core.llama import llama_errors
from lcore_core.runtime import Runtime

log = structlog.get_logger("lcore.rag")
INDEX_KEY = "vector_store_index"
INDEX_SECONDS = 30.0


@dataclass(frozen=True)
class Source:
    ref: str  # as configured: a rag_id, okp, a vector store id or a name
    store: str  # the vector store id or name to resolve
    multiplier: float = 1.0
    cutoff: float | None = None
    # How many chunks to ask this store for (None: the section's store_max_chunks).
    max_chunks: int | None = None


def _source(config: Any, ref: str) -> Source:
    for byok in config.get("byok_rag") or []:
        if byok["rag_id"] == ref:
            return Source(ref, byok["vector_db_id"], byok["score_multiplier"],
                          byok["relevance_cutoff_score"])
    rag = config.get("rag") or {}
    okp = rag.get("okp")
    if ref == OKP_RAG_ID and okp is not None:
        return Source(ref, OKP_VECTOR_STORE, max_chunks=okp["max_chunks"])
    return Source(ref, ref)


def inline_sources(config: Any, requested: list[str] | None = None) -> list[Source]:
    """The inline sources; a request's `vector_store_ids` narrows them (never widens them:
    only what the configuration lists for inline use is searched before the call)."""
    rag = config.get("rag") or {}
    refs = list(rag.get("inline") or [])
    if requested is not None:
        wanted = set(requested) | set(to_store_ids(config, requested))
        refs = [r for r in refs if r in wanted or _source(config, r).store in wanted]
    return [_source(config, ref) for ref in refs]


def tool_sources(config: Any) -> list[Source] | None:
    """The stores to offer as file_search; None means every store Llama Stack has."""
    rag = config.get("rag")
    if rag is None:
        # As upstream's current release: no rag section, no tool RAG (a request may still
        # name stores in vector_store_ids).
        return []
    tool = rag.get("tool")
    if tool is None:
        # The 0.6 layout: with neither list, every registered store; with only `inline`, none.
        return None if not rag.get("inline") else []
    return [_source(config, ref) for ref in tool]


def to_store_ids(config: Any, ids: list[str]) -> list[str]:
    """A request's `vector_store_ids` with each rag_id replaced by its vector store id, as
    upstream translates them (other ids pass through)."""
    return [_source(config, i).store if i in _rag_ids(config) else i for i in ids]


def _rag_ids(config: Any) -> set[str]:
    ids = {b["rag_id"] for b in config.get("byok_rag") or []}
    if (config.get("rag") or {}).get("okp") is not None:
        ids.add(OKP_RAG_ID)
    return ids


def rag_id_of(config: Any, *store_refs: str | None) -> str | None:
    """The BYOK rag_id configured for a vector store (by its id or name), else None."""
    for byok in config.get("byok_rag") or []:
        if byok["vector_db_id"] in store_refs:
            return str(byok["rag_id"])
    return None


async def store_id_for(runtime: Runtime, rag_id: str) -> str:
    """The vector store id a client's rag_id (or a store's own id) names, as upstream resolves
    `/v1/rags/{rag_id}`: a BYOK rag_id becomes its store's id, anything else is left as it is."""
    if rag_id not in {b["rag_id"] for b in runtime.config.get("byok_rag") or []}:
        return rag_id
    store = _source(runtime.config, rag_id).store
    return (await _index(runtime)).get(store, store)


def tool_max_chunks(config: Any) -> int | None:
    return (config.get("rag") or {}).get("tool_max_chunks")


async def _index(runtime: Runtime) -> dict[str, str]:
    """Vector store id and name -> id, cached briefly (stores indexed at start-up appear)."""
    async def fetch() -> dict[str, str]:
        with llama_errors("vector_stores.list"):
            page = await runtime.llama.client.vector_stores.list()
        index: dict[str, str] = {}
        for store in getattr(page, "data", page):
            if getattr(store, "name", None):
                index.setdefault(store.name, store.id)
            index[store.id] = store.id
        return index

    return await runtime.cached(INDEX_KEY, INDEX_SECONDS, fetch)


async def resolve(runtime: Runtime, sources: list[Source]) -> list[tuple[Source, str]]:
    """Each source with its vector store id; a source Llama Stack does not know is skipped
    (logged once), e.g. a store still being indexed."""
    index = await _index(runtime)
    found = []
    for source in sources:
        store_id = index.get(source.store)
        if store_id is None:
            warned = runtime.state.setdefault("rag_unknown", set())
            if source.ref not in warned:
                warned.add(source.ref)
                log.warning("rag source not found in Llama Stack's vector stores; skipped",
                            source=source.ref, vector_store=source.store)
            continue
        found.append((source, store_id))
    return found


async def tool_store_ids(runtime: Runtime) -> list[str] | None:
    sources = tool_sources(runtime.config)
    if sources is None:
        return None
    return [store_id for _, store_id in await resolve(runtime, sources)]


async def retrieve(runtime: Runtime, query: str,
                   requested: list[str] | None = None) -> list[dict[str, Any]]:
    """The best chunks of the inline sources for `query`, best first (scores weighted)."""
    sources = inline_sources(runtime.config, requested)
    if not sources or not query.strip():
        return []
    rag = runtime.config.get("rag") or {}
    per_store = int(rag.get("store_max_chunks") or 10)
    okp = rag.get("okp") or {}

    async def search(source: Source, store_id: str) -> list[dict[str, Any]]:
        body: dict[str, Any] = {"query": query,
                                "max_num_results": source.max_chunks or per_store}
        if source.cutoff is not None:
            body["ranking_options"] = {"score_threshold": source.cutoff}
        if source.ref == OKP_RAG_ID and okp.get("search_mode"):
            # Llama Stack's names: vector (semantic), hybrid, keyword.
            mode = okp["search_mode"]
            body["search_mode"] = "vector" if mode == "semantic" else mode
        with llama_errors("vector_stores.search", {"lcore.rag.source": source.ref}):
            page = await runtime.llama.client.post(f"/v1/vector_stores/{store_id}/search",
                                                   body=body, cast_to=object)
        hits = []
        for hit in (page or {}).get("data") or []:
            score = float(hit.get("score") or 0.0)
            if source.cutoff is not None and score < source.cutoff:
                continue
            text = "".join(part.get("text") or "" for part in hit.get("content") or [])
            attrs = dict(hit.get("attributes") or {})
            if source.ref == OKP_RAG_ID and okp:
                attrs["url"] = okp_url(okp, attrs)
            hits.append({"text": text, "score": score * source.multiplier,
                         "filename": hit.get("filename"), "attributes": attrs,
                         "source": source.ref})
        return hits

    found = await resolve(runtime, sources)
    batches = await asyncio.gather(*(search(source, store_id) for source, store_id in found))
    merged = sorted((h for batch in batches for h in batch), key=lambda h: -h["score"])
    return merged[:int(rag.get("inline_max_chunks") or 10)]


DEFAULT_OKP_URL = "http://localhost:8081"


def okp_url(okp: dict[str, Any], attrs: dict[str, Any]) -> str | None:
    """An OKP document's link into the portal: by its source path offline, by its public
    reference URL online (each falling back to the document id)."""
    ref = (attrs.get("source_path") if okp["offline"] else attrs.get("reference_url")) \
        or attrs.get("doc_id") or attrs.get("document_id")
    return urljoin(okp.get("rhokp_url") or DEFAULT_OKP_URL, ref) if ref else None


# Chunk metadata keys that may hold a document's link, in the order they are tried: LCore's
# OKP link, then the keys upstream reads (rag-content writes `docs_url`).
URL_KEYS = ("url", "doc_url", "docs_url", "reference_url", "link")


def title_and_url(hit: dict[str, Any]) -> tuple[str | None, str | None]:
    """A chunk's document title and link; a value that is not an absolute URL (rag-content
    stores a PDF's file name in `docs_url`) is no link, as upstream answers it."""
    attrs = hit.get("attributes") or {}
    url = next((str(attrs[k]) for k in URL_KEYS if attrs.get(k)), None)
    if url is not None and not _absolute_url(url):
        url = None
    return attrs.get("title") or attrs.get("doc_title") or hit.get("filename"), url


def _absolute_url(value: str) -> bool:
    parts = urlsplit(value)
    return bool(parts.scheme) and bool(parts.netloc or parts.path) and len(parts.scheme) > 1


def document_id(hit: dict[str, Any]) -> str | None:
    attrs = hit.get("attributes") or {}
    found = attrs.get("document_id") or attrs.get("doc_id")
    return str(found) if found else None


def context(hits: list[dict[str, Any]]) -> str:
    """The instructions' addendum carrying the retrieved chunks ("" without any)."""
    if not hits:
        return ""
    parts = ["\n\nUse the following documents to answer when they are relevant."]
    for number, hit in enumerate(hits, 1):
        title, url = title_and_url(hit)
        heading = f"[{number}] {title or 'document'}" + (f" ({url})" if url else "")
        parts.append(f"{heading}\n{hit['text'].strip()}")
    return "\n\n".join(parts)
