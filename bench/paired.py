"""Added latency at concurrency 1, measured in pairs: one request to each target in turn.

    python -m bench.paired [--rounds 300] [--targets direct,floor,lcore-min,lcore-lib]

On a shared 2-core machine the speed drifts by tens of percent within minutes, so targets
measured one after the other (as `python -m bench` does) can differ by more than what sets them
apart. Here every target runs at once against one Llama Stack server (lcore-lib has its own, in
process) and each round sends one query to each target in turn, in a shuffled order: every
target meets the same machine. Prints p50/p95 per target, the p50 of the per-round
differences from `direct` (the added latency) with their spread, and, when `floor` runs too,
the p50 of the per-round differences from `floor`.
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from bench.__main__ import Service, drop_schema, say, start_target
from lcore_core.testing.llama_stack import LlamaStackServer, write_run_yaml
from lcore_core.testing.llm import ScriptedLLM

WARMUP_ROUNDS = 20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.paired",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--targets", default="direct,floor,lcore-min,lcore-lib")
    args = parser.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    if "direct" not in targets:
        parser.error("the differences are taken from direct: include it")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    namespace = f"lcore_bench_{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="lcore-paired-") as tmp, ScriptedLLM() as llm:
        workdir = Path(tmp)
        stack = LlamaStackServer(write_run_yaml(workdir / "stack", llm.base_url),
                                 startup_timeout=120).start()
        services: list[Service] = []
        try:
            for name in targets:
                say(f"{name}: starting")
                services.append(start_target(name, workdir, stack, llm, namespace))
            times = measure(services, args.rounds)
        finally:
            for service in services:
                service.stop()
            stack.stop()
            if "lcore-full" in targets:
                drop_schema(namespace)
    print(f"\n{args.rounds} rounds, one /v2/query (or direct Responses call) per target each, "
          "in a shuffled order\n")
    floor = "floor" in times
    print("| target | p50 ms | p95 ms | added p50 ms (paired, vs direct) | "
          "middle half of the added ms |" + (" over the floor p50 ms (paired) |" if floor else ""))
    print("|---|---|---|---|---|" + ("---|" if floor else ""))
    for service in services:
        mine = times[service.name]
        added = paired(mine, times["direct"])
        quartiles = statistics.quantiles(added, n=4)
        over = (f" {statistics.median(paired(mine, times['floor'])):+.1f} |" if floor else "")
        print(f"| {service.name} | {statistics.median(mine):.1f} | "
              f"{statistics.quantiles(mine, n=20)[-1]:.1f} | {statistics.median(added):+.1f} | "
              f"{quartiles[0]:+.1f} .. {quartiles[2]:+.1f} |{over}")
    return 0


def paired(mine: list[float], base: list[float]) -> list[float]:
    """Per-round differences from `base`, sorted (the same round met the same machine)."""
    return sorted(m - b for m, b in zip(mine, base, strict=True))


def measure(services: list[Service], rounds: int) -> dict[str, list[float]]:
    """`rounds` timed rounds (after a warm-up) of one request per service, in a shuffled
    order; a failed request stops the run (added latency of an error means nothing)."""
    times: dict[str, list[float]] = {s.name: [] for s in services}
    order = list(services)
    with httpx.Client(timeout=60, trust_env=False) as client:
        for round_no in range(WARMUP_ROUNDS + rounds):
            random.shuffle(order)
            for service in order:
                body = service.body("query").replace("{n}", f"paired-{round_no}")
                headers = dict(h.split(":", 1) for h in service.headers)
                headers["Content-Type"] = "application/json"
                started = time.perf_counter()
                response = client.post(service.url + service.paths["query"], content=body,
                                       headers=headers)
                elapsed = (time.perf_counter() - started) * 1000
                if response.status_code != 200:
                    raise RuntimeError(f"{service.name}: HTTP {response.status_code} "
                                       f"{response.text[:300]}")
                if round_no >= WARMUP_ROUNDS:
                    times[service.name].append(elapsed)
    return times


if __name__ == "__main__":
    raise SystemExit(main())
