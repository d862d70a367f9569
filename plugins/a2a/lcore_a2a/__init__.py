"""LCore plugin lcore-a2a: LCore as an A2A (agent-to-agent) agent.

`GET /.well-known/agent-card.json` (and `/.well-known/agent.json`) serve the agent card;
`POST /a2a` speaks A2A 0.3 JSON-RPC (`message/send`, `message/stream`, `tasks/get`,
`tasks/cancel`). Every message runs through LCore's query pipeline; `a2a_state` selects where
contexts and tasks are kept.
"""

from __future__ import annotations

from lcore_a2a.store import ContextRecord, ContextStore, MemoryStore, SqlStore, TaskRecord

__all__ = ["ContextRecord", "ContextStore", "MemoryStore", "SqlStore", "TaskRecord"]
