"""What topic summaries cost at the defaults a user runs (issue 25).

    python -m bench.summaries --rounds 3 --concurrency 1,16,64 --duration 10

Every query starts a new conversation, so each one asks for a topic summary. In each round, for
each target in a new order, a fresh Llama Stack server and the target are started and driven
with `bench/load.py` at each concurrency on `/v2/query`. Targets: `direct` (Llama Stack's
Responses API, for reference), `lcore-min` and `lcore-full` at their defaults (summaries on), and
the same two with the request's `generate_topic_summary: false` (`-nosum`). Reports, per target
and concurrency, the median over the rounds of: throughput, LCore's throughput against its own
summaries-off figure, Llama Stack CPU ms per query and Llama Stack calls per query (both over the
whole run, warm-up included, plus a settle time for the background titles), and the errors of
every round. Run it on a quiet machine; it is not a test.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.__main__ import (
    Service,
    compile_sources,
    drop_schema,
    fmt,
    load,
    say,
    start_target,
)
from bench.paired import cpu_seconds
from lcore_core.testing.llama_stack import LlamaStackServer, write_run_yaml
from lcore_core.testing.llm import ScriptedLLM

TARGETS = ["direct", "lcore-min", "lcore-min-nosum", "lcore-full", "lcore-full-nosum"]
# After a point: the titles still waiting (a batch window of 1 s by default) reach Llama Stack.
SETTLE_S = 2.0


class SummaryService(Service):
    """A target whose queries ask for a topic summary (the default) unless `summaries` is off."""

    summaries: bool = True

    def body(self, endpoint: str) -> str:
        body = super().body(endpoint)
        if self.name.startswith("direct") or not self.summaries:
            return body
        asked = json.loads(body)  # the bench's own query, with the request's default
        asked.pop("generate_topic_summary", None)
        return json.dumps(asked)


def access_log_calls(stack: LlamaStackServer) -> int:
    text = stack.log_path.read_text(errors="replace")
    return sum(1 for line in text.splitlines() if '"POST /v1/' in line or '"GET /v1/' in line)


def run_point(service: Service, stack: LlamaStackServer, concurrency: int,
              args: argparse.Namespace) -> dict[str, Any]:
    assert stack.process is not None
    calls, cpu = access_log_calls(stack), cpu_seconds(stack.process.pid)
    point = load(service, "query", concurrency, args.duration, args.warmup)
    time.sleep(SETTLE_S)
    sent = max(point.get("sent") or point["requests"], 1)
    point["ls_cpu_ms_per_query"] = (cpu_seconds(stack.process.pid) - cpu) * 1000 / sent
    point["ls_calls_per_query"] = (access_log_calls(stack) - calls) / sent
    return point


def run_target(target: str, workdir: Path, llm: ScriptedLLM, namespace: str,
               args: argparse.Namespace) -> dict[int, dict[str, Any]]:
    base = target.removesuffix("-nosum")
    stack = LlamaStackServer(write_run_yaml(workdir / f"stack-{target}", llm.base_url),
                             startup_timeout=120).start()
    try:
        started = start_target(base, workdir / target, stack, llm, namespace)
        service = SummaryService(target, started.url, started.process, started.headers,
                                 started.startup_s, started.paths)
        service.summaries = not target.endswith("-nosum")
        try:
            points = {}
            for conc in args.concurrency:
                points[conc] = point = run_point(service, stack, conc, args)
                say(f"{target} c={conc}: {point['rps']:.1f} req/s, LS "
                    f"{point['ls_cpu_ms_per_query']:.1f} ms CPU and "
                    f"{point['ls_calls_per_query']:.2f} calls per query, "
                    f"errors {point['error_count']}")
            return points
        finally:
            service.stop()
    finally:
        stack.stop()


def report(rounds: list[dict[str, dict[int, dict[str, Any]]]], args: argparse.Namespace,
           command: str) -> str:
    def median(target: str, conc: int, key: str) -> float | None:
        values = [r[target][conc][key] for r in rounds if conc in r.get(target, {})]
        return statistics.median(values) if values else None

    lines = ["# Topic summaries: cost at the defaults", "", f"Command: `{command}`", "",
             f"{len(rounds)} round(s), targets in a new order each round; medians over the "
             f"rounds, errors summed. {args.duration:.0f} s per point after {args.warmup:.0f} s "
             "warm-up; every query starts a new conversation.", "",
             "| target | conc | req/s | % of summaries off | LS CPU ms/query | LS calls/query "
             "| errors |", "|---|---|---|---|---|---|---|"]
    for conc in args.concurrency:
        for target in args.targets:
            rps = median(target, conc, "rps")
            if rps is None:
                continue
            off = median(target + "-nosum", conc, "rps")
            share = rps / off * 100 if off and not target.endswith("-nosum") else None
            errors = sum(r[target][conc]["error_count"] for r in rounds
                         if conc in r.get(target, {}))
            lines.append(f"| {target} | {conc} | {fmt(rps)} | {fmt(share, 0)} | "
                         f"{fmt(median(target, conc, 'ls_cpu_ms_per_query'))} | "
                         f"{fmt(median(target, conc, 'ls_calls_per_query'), 2)} | {errors} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.summaries",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per point")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--out", help="also write the report here")
    parser.add_argument("--json", help="also write the raw figures here")
    args = parser.parse_args(argv)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args.targets = [t for t in args.targets.split(",") if t]
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; choose from {TARGETS}")
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    command = "python -m bench.summaries " + " ".join(argv if argv is not None else
                                                      __import__("sys").argv[1:])
    namespace = f"lcore_bench_{uuid.uuid4().hex[:8]}"
    compile_sources()
    rounds: list[dict[str, dict[int, dict[str, Any]]]] = []
    with tempfile.TemporaryDirectory(prefix="lcore-bench-summaries-") as tmp, \
            ScriptedLLM() as llm:
        try:
            for round_no in range(args.rounds):
                order = random.sample(args.targets, len(args.targets))
                say(f"round {round_no + 1}/{args.rounds}: {', '.join(order)}")
                results: dict[str, dict[int, dict[str, Any]]] = {}
                for target in order:
                    workdir = Path(tmp) / f"round-{round_no}"
                    (workdir / target).mkdir(parents=True)
                    results[target] = run_target(target, workdir, llm, namespace, args)
                    if target.startswith("lcore-full"):
                        drop_schema(namespace)  # each start gets empty tables
                rounds.append(results)
        finally:
            if any(t.startswith("lcore-full") for t in args.targets):
                drop_schema(namespace)
    text = report(rounds, args, command)
    if args.out:
        Path(args.out).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps(rounds, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
