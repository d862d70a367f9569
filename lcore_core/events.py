"""Values the pipeline hands to observers and quota plugins."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Usage:
    """Tokens one LLM call used."""

    input_tokens: int = 0
    output_tokens: int = 0
    provider: str = ""
    model: str = ""
    # The provider reported no usage: the counts are LCore's estimate (see pipeline).
    estimated: bool = False

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True)
class QueryCompleted:
    """One finished query, successful or not (`error` set)."""

    user_id: str
    conversation_id: str | None
    provider: str
    model: str
    endpoint: str
    input_tokens: int = 0
    output_tokens: int = 0
    tokens_estimated: bool = False
    duration_s: float = 0.0
    llm_duration_s: float = 0.0
    streaming: bool = False
    shield_violations: tuple[str, ...] = field(default_factory=tuple)
    error: str | None = None


@dataclass
class QuotaTicket:
    """One query's quota bookkeeping, from the check to the consume or release.

    `query` and `endpoint` help a plugin estimate what to reserve; `reservations` is where each
    quota plugin keeps what it reserved (keyed by its own name), to settle or refund it later.
    """

    query: str
    endpoint: str
    reservations: dict[str, Any] = field(default_factory=dict)
    settled: bool = False
