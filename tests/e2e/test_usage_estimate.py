"""An LLM that sends no usage (as llama.cpp's server): LCore reports estimated token counts."""

from __future__ import annotations

import uuid
from typing import Any

from lcore_core.tokens import count as estimate_tokens

from .support import Lcore


async def test_query_without_usage_reports_estimated_tokens(lcore: Lcore, llm: Any) -> None:
    marker = f"no-usage-{uuid.uuid4().hex[:6]}"
    llm.script(marker, text="Kubernetes orchestrates containers across machines.", usage=False)
    response = await lcore.query(f"{marker} what is kubernetes?")
    assert response.status_code == 200, await response.get_data(as_text=True)
    body = await response.get_json()
    assert body["response"] == "Kubernetes orchestrates containers across machines."
    assert body["tokens_estimated"] is True
    assert body["output_tokens"] == estimate_tokens(body["response"])
    assert body["input_tokens"] >= estimate_tokens(f"{marker} what is kubernetes?")


async def test_stream_without_usage_reports_estimated_tokens(lcore: Lcore, llm: Any) -> None:
    marker = f"no-usage-stream-{uuid.uuid4().hex[:6]}"
    llm.script(marker, text="Pods are groups of containers.", usage=False)
    status, events = await lcore.stream(f"{marker} what is a pod?")
    assert status == 200
    end = next(e for e in events if e.get("event") == "end")["data"]
    assert end["tokens_estimated"] is True
    assert end["output_tokens"] == estimate_tokens("Pods are groups of containers.")
    assert end["input_tokens"] > 0


async def test_reported_usage_is_not_marked_estimated(lcore: Lcore, llm: Any) -> None:
    body = await (await lcore.query(f"with usage {uuid.uuid4().hex[:6]}")).get_json()
    assert body["tokens_estimated"] is False
    assert body["output_tokens"] > 0
