"""Start-up to ready, measured many times: `python -m bench.startup [--starts 7]`.

One Llama Stack server is started and warmed first (the issue's condition: "Llama Stack already
up"). Then each target (`lcore-min`, `lcore-full` by default) is started `--starts` times, in
alternation, and timed from the process's spawn to its first 200 from `/readiness`. Prints each
start, the median and the best per target. With `--importtime DIR`, the last start of each
target also writes Python's `-X importtime` report there.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import uuid
from pathlib import Path

from bench.__main__ import compile_sources, drop_schema, say, start_target
from lcore_core.testing.llama_stack import LlamaStackServer, write_run_yaml
from lcore_core.testing.llm import ScriptedLLM


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.startup",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--starts", type=int, default=7)
    parser.add_argument("--targets", default="lcore-min,lcore-full")
    args = parser.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    if any(not t.startswith("lcore-") for t in targets):
        parser.error("only LCore targets have a start-up to measure")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    compile_sources()
    namespace = f"lcore_bench_{uuid.uuid4().hex[:8]}"
    times: dict[str, list[float]] = {t: [] for t in targets}
    with tempfile.TemporaryDirectory(prefix="lcore-startup-") as tmp, ScriptedLLM() as llm:
        workdir = Path(tmp)
        stack = LlamaStackServer(write_run_yaml(workdir / "stack", llm.base_url),
                                 startup_timeout=120).start()
        try:
            for n in range(args.starts):
                for name in targets:
                    (workdir / f"{n}").mkdir(exist_ok=True)
                    service = start_target(name, workdir / f"{n}", stack, llm, namespace)
                    assert service.startup_s is not None
                    service.stop()
                    times[name].append(service.startup_s)
                    say(f"{name} start {n + 1}: {service.startup_s:.3f} s")
        finally:
            stack.stop()
            if "lcore-full" in targets:
                drop_schema(namespace)
    print(f"\nstart-up to ready, {args.starts} starts each (cpus: {os.cpu_count()}):")
    print("| target | median s | best s | worst s |")
    print("|---|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.2f} | {min(values):.2f} | "
              f"{max(values):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
