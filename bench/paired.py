"""Added latency at concurrency 1, measured in pairs: one request to each target in turn.

    python -m bench.paired [--rounds 300] [--targets direct,floor,lcore-min,lcore-lib]
                           [--endpoint query|stream] [--baseline DIR]

On a shared 2-core machine the speed drifts by tens of percent within minutes, so targets
measured one after the other (as `python -m bench` does) can differ by more than what sets them
apart. Here every target runs at once against one Llama Stack server (lcore-lib has its own, in
process) and each round sends one query to each target in turn, in a shuffled order: every
target meets the same machine. Prints p50/p95 per target, the p50 of the per-round
differences from `direct` (the added latency) with their spread, and, when `floor` runs too,
the p50 of the per-round differences from `floor`. A stream is timed to its last byte.

Also the CPU each process spent per request over the timed rounds (/proc, user + system): a far
steadier figure than the latencies, and at c=1 the difference between two targets' CPU is
what one adds to the other's latency. Llama Stack's server is shared: its CPU is divided by the
calls it served (lcore-lib's Llama Stack runs inside lcore-lib, in that target's figure).

`--baseline DIR` compares two versions of LCore in one run: DIR is a checkout of an older commit
(`git worktree add /tmp/base <commit>`), and each LCore target also runs from DIR's sources as
`<target>@base` (its `lcore_core` and plugin directories first on PYTHONPATH, in this venv), in
the same rounds as the current one. Two runs one after the other differ by the machine's drift;
two targets in one round do not. An lcore-full baseline gets its own PostgreSQL schema.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from bench.__main__ import (
    Service,
    _children,
    drop_schema,
    free_port,
    say,
    spawn,
    start_target,
    wait_ready,
)
from lcore_core.testing.llama_stack import LlamaStackServer, write_run_yaml
from lcore_core.testing.llm import ScriptedLLM

WARMUP_ROUNDS = 20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.paired",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--targets", default="direct,floor,lcore-min,lcore-lib")
    parser.add_argument("--endpoint", choices=["query", "stream"], default="query")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="a checkout of an older commit: its LCore targets run too, as "
                             "<target>@base")
    args = parser.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    if "direct" not in targets:
        parser.error("the differences are taken from direct: include it")
    if args.baseline is not None and not (args.baseline / "lcore_core").is_dir():
        parser.error(f"--baseline {args.baseline}: no lcore_core directory there")
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
                if args.baseline is not None and name.startswith("lcore"):
                    services.append(start_baseline(name, args.baseline, workdir, stack,
                                                   namespace))
            times, cpu = measure(services, args.rounds, args.endpoint, stack)
        finally:
            for service in services:
                service.stop()
            stack.stop()
            if "lcore-full" in targets:
                drop_schema(namespace)
                if args.baseline is not None:
                    drop_schema(namespace + "_base")
    path = "/v2/query" if args.endpoint == "query" else "/v2/streaming_query"
    print(f"\n{args.rounds} rounds, one {path} (or direct Responses call) per target each, "
          "in a shuffled order\n")
    floor = "floor" in times
    print("| target | p50 ms | p95 ms | added p50 ms (paired, vs direct) | "
          "middle half of the added ms |" + (" over the floor p50 ms (paired) |" if floor else "")
          + " CPU ms per request |")
    print("|---|---|---|---|---|" + ("---|" if floor else "") + "---|")
    for service in services:
        mine = times[service.name]
        added = paired(mine, times["direct"])
        quartiles = statistics.quantiles(added, n=4)
        over = (f" {statistics.median(paired(mine, times['floor'])):+.1f} |" if floor else "")
        print(f"| {service.name} | {statistics.median(mine):.1f} | "
              f"{statistics.quantiles(mine, n=20)[-1]:.1f} | {statistics.median(added):+.1f} | "
              f"{quartiles[0]:+.1f} .. {quartiles[2]:+.1f} |{over} "
              f"{cpu.get(service.name, float('nan')):.2f} |")
    print(f"\nLlama Stack server: {cpu['llama-stack']:.2f} ms CPU per call it served.")
    for service in services:
        if not service.name.endswith("@base"):
            continue
        current = service.name.removesuffix("@base")
        change = paired(times[current], times[service.name])
        quartiles = statistics.quantiles(change, n=4)
        print(f"{current} against its baseline: {statistics.median(change):+.2f} ms p50 per "
              f"round (middle half {quartiles[0]:+.2f} .. {quartiles[2]:+.2f}), CPU "
              f"{cpu[current]:.2f} against {cpu[service.name]:.2f} ms per request.")
    return 0


BASELINE_CONFIG = """
import json, sys
from pathlib import Path
from bench.__main__ import full_setup, lcore_config
workdir, url, namespace, full = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4] == "1"
stack = type("Stack", (), {"url": url})
section, token = full_setup(workdir, namespace) if full else (None, "")
print(json.dumps({"config": str(lcore_config(workdir, stack, None, section)), "token": token}))
"""


def start_baseline(name: str, tree: Path, workdir: Path, stack: LlamaStackServer,
                   namespace: str) -> Service:
    """Target `name` (lcore-min or lcore-full) run from the sources in `tree` as `<name>@base`,
    with the configuration that tree's own bench writes (an older LCore may not know a newer
    key or action)."""
    if name not in ("lcore-min", "lcore-full"):
        raise SystemExit(f"--baseline: {name} has no baseline run (lcore-min, lcore-full do)")
    say(f"{name}@base: starting from {tree}")
    tree = tree.resolve()
    paths = [tree, *sorted(p for p in (tree / "plugins").iterdir() if p.is_dir())]
    inherited = [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []
    env = {"PYTHONPATH": os.pathsep.join([*(str(p) for p in paths), *inherited])}
    home = workdir / f"{name}@base"
    home.mkdir()
    written = subprocess.run(
        [sys.executable, "-c", BASELINE_CONFIG, str(home), stack.url, namespace + "_base",
         "1" if name == "lcore-full" else "0"],
        cwd=tree, env={**os.environ, **env}, capture_output=True, text=True)
    if written.returncode != 0:
        raise SystemExit(f"{name}@base: its bench could not write its configuration (an older "
                         f"tree may need a package this venv no longer has: pip install "
                         f"--target DIR it, and run with PYTHONPATH=DIR):\n"
                         f"{written.stderr[-2000:]}")
    setup = json.loads(written.stdout.strip().splitlines()[-1])
    port = free_port()
    log = home / "lcore.log"
    process = spawn([str(Path(sys.executable).parent / "lcore"), "serve", "-c", setup["config"],
                     "--port", str(port)], log, env)
    headers = [f"Authorization:Bearer {setup['token']}"] if setup["token"] else []
    url = f"http://127.0.0.1:{port}"
    service = Service(f"{name}@base", url, process, headers)
    wait_ready(url, "/readiness", process, log, headers=dict(h.split(":", 1) for h in headers))
    return service


def paired(mine: list[float], base: list[float]) -> list[float]:
    """Per-round differences from `base`, sorted (the same round met the same machine)."""
    return sorted(m - b for m, b in zip(mine, base, strict=True))


def measure(services: list[Service], rounds: int, endpoint: str,
            stack: LlamaStackServer) -> tuple[dict[str, list[float]], dict[str, float]]:
    """`rounds` timed rounds (after a warm-up) of one request per service, in a shuffled
    order; a failed request stops the run (added latency of an error means nothing). Returns
    the times and each process's CPU ms per request over the timed rounds."""
    times: dict[str, list[float]] = {s.name: [] for s in services}
    order = list(services)
    pids = {s.name: s.process.pid for s in services if s.process is not None}
    assert stack.process is not None
    pids["llama-stack"] = stack.process.pid
    before: dict[str, float] = {}
    with httpx.Client(timeout=60, trust_env=False) as client:
        for round_no in range(WARMUP_ROUNDS + rounds):
            if round_no == WARMUP_ROUNDS:
                before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            random.shuffle(order)
            for service in order:
                body = service.body(endpoint).replace("{n}", f"paired-{round_no}")
                headers = dict(h.split(":", 1) for h in service.headers)
                headers["Content-Type"] = "application/json"
                started = time.perf_counter()
                with client.stream("POST", service.url + service.paths[endpoint], content=body,
                                   headers=headers) as response:
                    content = response.read()
                elapsed = (time.perf_counter() - started) * 1000
                if response.status_code != 200:
                    raise RuntimeError(f"{service.name}: HTTP {response.status_code} "
                                       f"{content[:300]!r}")
                if round_no >= WARMUP_ROUNDS:
                    times[service.name].append(elapsed)
    served = sum(1 for s in services if not s.name.startswith("lcore-lib")) * rounds
    cpu = {name: (cpu_seconds(pid) - before[name]) * 1000 / (
        served if name == "llama-stack" else rounds) for name, pid in pids.items()}
    return times, cpu


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for one in [pid, *_children(pid)]:
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


if __name__ == "__main__":
    raise SystemExit(main())
