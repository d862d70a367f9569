"""Where an LCore query's time goes, phase by phase: `python -m bench.phases`.

    python -m bench.phases [--targets lcore-min,lcore-full] [--concurrency 1,16]
                           [--endpoint query] [--duration 10]

Each target runs with tracing on, exporting to a loopback OTLP receiver (the one the tracing tests
use), against its own Llama Stack and the scripted LLM. After a warm-up, the load generator
drives it at each concurrency, and the spans of that window are grouped by trace. Printed per
target and concurrency, as p50/p90 ms:

- each span by name (authentication, quota, user DB, cache, the Llama Stack call);
- `before Llama Stack`: from the request's start to the Llama Stack call's start;
- `after Llama Stack`: from the call's end to the response's end.

Tracing costs a little itself (a span is some microseconds): compare phases within one run.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

import bench.__main__ as runner
from lcore_core.testing.llama_stack import LlamaStackServer, write_run_yaml
from lcore_core.testing.llm import ScriptedLLM
from lcore_core.testing.otlp import SERVER, OtlpReceiver, RecordedSpan

BEFORE, AFTER, TOTAL = "before Llama Stack", "after Llama Stack", "whole request"


def phases(spans: list[RecordedSpan]) -> dict[str, list[float]]:
    """Durations in ms by phase, over every complete request trace in `spans`."""
    traces: dict[str, list[RecordedSpan]] = defaultdict(list)
    for span in spans:
        traces[span.trace_id].append(span)
    found: dict[str, list[float]] = defaultdict(list)
    for members in traces.values():
        server = next((s for s in members if s.kind == SERVER), None)
        if server is None:
            continue
        found[TOTAL].append((server.end - server.start) / 1e6)
        for span in members:
            if span is not server:
                found[span.name].append((span.end - span.start) / 1e6)
        calls = sorted((s for s in members if s.name == "llama_stack.responses.create"),
                       key=lambda s: s.start)
        if calls:
            found[BEFORE].append((calls[0].start - server.start) / 1e6)
            found[AFTER].append((server.end - calls[-1].end) / 1e6)
    return found


def measure(target: str, endpoint: str, levels: list[int], duration: float,
            workdir: Path, llm: ScriptedLLM, namespace: str, receiver: OtlpReceiver
            ) -> dict[int, dict[str, list[float]]]:
    stack = LlamaStackServer(write_run_yaml(workdir / f"stack-{target}", llm.base_url),
                             startup_timeout=120).start()
    results: dict[int, dict[str, list[float]]] = {}
    try:
        service = runner.start_target(target, workdir, stack, llm, namespace)
        try:
            for conc in levels:
                runner.load(service, endpoint, conc, 3, 1)  # warm-up, not counted
                time.sleep(1.5)  # the warm-up's spans leave in the exporter's next batch
                seen = len(receiver.spans())
                point = runner.load(service, endpoint, conc, duration, 0)
                time.sleep(6)  # the batch exporter sends every 5 s
                results[conc] = phases(receiver.spans()[seen:])
                runner.say(f"{target} {endpoint} c={conc}: {point['rps']:.1f} req/s, overhead "
                           f"p50 {point.get('overhead_ms', {}).get('p50')} ms")
        finally:
            service.stop()
    finally:
        stack.stop()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.phases",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--targets", default="lcore-min,lcore-full")
    parser.add_argument("--endpoint", default="query", choices=["query", "stream"])
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    if any(t not in ("lcore-min", "lcore-full") for t in targets):
        parser.error("phases are traced for lcore-min and lcore-full")
    levels = [int(c) for c in args.concurrency.split(",")]
    logging.getLogger("httpx").setLevel(logging.WARNING)
    namespace = f"lcore_bench_{uuid.uuid4().hex[:8]}"
    out: dict[str, dict[int, dict[str, list[float]]]] = {}
    with (tempfile.TemporaryDirectory(prefix="lcore-phases-") as tmp, ScriptedLLM() as llm,
          OtlpReceiver() as receiver):
        runner.tracing_endpoint = receiver.url
        try:
            for target in targets:
                (Path(tmp) / target).mkdir()
                out[target] = measure(target, args.endpoint, levels, args.duration,
                                      Path(tmp) / target, llm, namespace, receiver)
        finally:
            if "lcore-full" in targets:
                runner.drop_schema(namespace)
    for target, by_level in out.items():
        names = sorted({n for found in by_level.values() for n in found},
                       key=lambda n: (n in (BEFORE, AFTER, TOTAL), n))
        print(f"\n{target}, /v2/{args.endpoint}: p50 / p90 ms per phase")
        print("| phase | " + " | ".join(f"c={c}" for c in by_level) + " |")
        print("|---|" + "---|" * len(by_level))
        for name in names:
            cells = []
            for found in by_level.values():
                values = sorted(found.get(name, []))
                cells.append(f"{statistics.median(values):.2f} / "
                             f"{values[int(len(values) * 0.9)]:.2f}" if values else "-")
            print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
