"""The core's public API beyond the package root, for plugins that run LCore's query pipeline
or extend its configuration and command line (the A2A and quota plugins, and third parties).

Plugins import `lcore_core` (the root), `lcore_core.api` and `lcore_core.testing` only; every
other module of the core is private and free to change (tests/core/test_public_api.py checks
the plugins in this repository). What is here keeps its name and signature across minor
versions:

- the query pipeline, as /v2/query runs it: `prepare` -> `run` (or `stream`) -> `finish`;
  `release` gives back the quota reservation of a turn that ends before it ran;
- the query request's shape and bounds (`QueryRequestSchema`, `MAX_ATTACHMENTS`);
- the MCP-HEADERS request header (`MCP_HEADERS`, `parse_mcp_headers`);
- configuration sections: `ConfigSchema` (unknown keys refused), `optional` (a nested optional
  section) and `one_of_backends` (only one of sqlite, postgres);
- `lcore <plugin command>`: `config_arg` (--config) and `EXIT_CONFIG` (a bad one's status).
"""

from __future__ import annotations

from lcore_core.cli import EXIT_CONFIG, config_arg
from lcore_core.config.schema import Base as ConfigSchema
from lcore_core.config.schema import one_of_backends, optional
from lcore_core.mcp import MCP_HEADERS, parse_mcp_headers
from lcore_core.pipeline import (
    QueryPlan,
    QueryResult,
    StreamEvent,
    finish,
    prepare,
    release,
    run,
    stream,
)
from lcore_core.schemas import MAX_ATTACHMENTS, QueryRequestSchema

__all__ = [
    "EXIT_CONFIG",
    "MAX_ATTACHMENTS",
    "MCP_HEADERS",
    "ConfigSchema",
    "QueryPlan",
    "QueryRequestSchema",
    "QueryResult",
    "StreamEvent",
    "config_arg",
    "finish",
    "one_of_backends",
    "optional",
    "parse_mcp_headers",
    "prepare",
    "release",
    "run",
    "stream",
]
