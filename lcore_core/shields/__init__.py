"""LCore-side guardrail shields: upstream's top-level `shields:` section.

Two kinds, told apart by `provider_id`:

- `redaction`: regular expressions replace sensitive text in everything the turn sends to the
  LLM and everything LCore stores, and in the answer (`redaction.py`);
- `question_validity`: one small, unstored Llama Stack call asks a model whether the question
  is on topic; an off-topic question gets a fixed answer instead of the LLM's (`validity.py`).

`schema.py` validates the section; `selection.py` decides which shields a request runs.
These are separate from Llama Stack's own shields, which LCore passes on as `guardrails`.
"""

from __future__ import annotations

from lcore_core.shields.schema import PROVIDERS, ShieldSchema, shields_field

__all__ = ["PROVIDERS", "ShieldSchema", "shields_field"]
