"""What Llama Stack itself spends per call, by the way a conversation is kept.

    python -m bench.backend_costs [--calls 60]

Starts the scripted LLM and a Llama Stack server (as `python -m bench` does), then times, one call
at a time, the Llama Stack calls a gateway can choose between: a Responses call without state,
with `store`, a conversation create, a first turn in a new conversation (create + answer), later
turns in one conversation, and a chain of `previous_response_id` turns. Later turns grow their
history with every call, as a real conversation does. Prints p50/p95 per kind.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench.__main__ import INSTRUCTIONS, LLM_MODEL_ID
from lcore_core.testing.llama_stack import LlamaStackServer, write_run_yaml
from lcore_core.testing.llm import ScriptedLLM

WARMUP = 5


def measure(label: str, calls: int, fn: Callable[[], Any]) -> None:
    for _ in range(WARMUP):
        fn()
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    print(f"| {label} | {statistics.median(times):.1f} | {times[int(len(times) * 0.95)]:.1f} |",
          flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.backend_costs",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=60, help="timed calls per kind")
    args = parser.parse_args(argv)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="lcore-backend-costs-") as tmp, \
            ScriptedLLM() as llm:
        stack = LlamaStackServer(write_run_yaml(Path(tmp) / "stack", llm.base_url),
                                 startup_timeout=120).start()
        try:
            with httpx.Client(base_url=stack.url, timeout=60, trust_env=False) as client:
                def answer(**extra: Any) -> dict[str, Any]:
                    body = {"model": LLM_MODEL_ID, "input": "hello there",
                            "instructions": INSTRUCTIONS, "store": True, **extra}
                    response = client.post("/v1/responses", json=body)
                    response.raise_for_status()
                    return dict(response.json())

                def create() -> str:
                    response = client.post("/v1/conversations", json={})
                    response.raise_for_status()
                    return str(response.json()["id"])

                print(f"Llama Stack calls, {args.calls} each, one at a time (ms)\n")
                print("| call | p50 | p95 |\n|---|---|---|")
                measure("responses, store=false", args.calls, lambda: answer(store=False))
                measure("responses, store=true", args.calls, answer)
                measure("conversations.create", args.calls, create)
                measure("new conversation: create + responses(conversation)", args.calls,
                        lambda: answer(conversation=create()))
                ongoing = create()
                measure("later turn: responses(conversation), history growing", args.calls,
                        lambda: answer(conversation=ongoing))
                chain = {"last": answer()["id"]}

                def next_turn() -> None:
                    chain["last"] = answer(previous_response_id=chain["last"])["id"]

                measure("later turn: responses(previous_response_id), history growing",
                        args.calls, next_turn)
        finally:
            stack.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
