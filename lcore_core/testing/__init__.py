"""Test helpers for LCore and plugins: the scripted LLM and a real Llama Stack to run it against.

``lcore_core.testing.fixtures`` is the pytest plugin; ``llama_stack`` and ``mcp_server`` need the
``library`` extra (llama-stack, mcp), so they are imported lazily here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lcore_core.testing.llm import (
    ON_TOPIC_MARKER,
    TOPIC_CHECK_MARKER,
    UNSAFE_MARKER,
    RecordedRequest,
    Rule,
    ScriptedLLM,
    ToolCall,
)
from lcore_core.testing.tcp_proxy import TcpProxy

if TYPE_CHECKING:
    from lcore_core.testing.llama_stack import LlamaStackServer, write_run_yaml
    from lcore_core.testing.mcp_server import MCPTestServer

__all__ = [
    "ON_TOPIC_MARKER",
    "TOPIC_CHECK_MARKER",
    "UNSAFE_MARKER",
    "LlamaStackServer",
    "MCPTestServer",
    "RecordedRequest",
    "Rule",
    "ScriptedLLM",
    "TcpProxy",
    "ToolCall",
    "write_run_yaml",
]

_LAZY = {
    "LlamaStackServer": "lcore_core.testing.llama_stack",
    "write_run_yaml": "lcore_core.testing.llama_stack",
    "MCPTestServer": "lcore_core.testing.mcp_server",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
