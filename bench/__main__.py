"""LCore's benchmarks: `python -m bench` (or `tox -e bench`), run by hand; prints the figures.

In one run, against one Llama Stack and the scripted LLM (fixed answers), it measures:

- direct:     the load generator calls Llama Stack's Responses API itself (no conversation);
- direct-conv: the same Llama Stack work LCore asks for: create a conversation, then answer
              in it (two calls, both timed);
- floor:      the thinnest forwarder (bench/floor.py on Hypercorn, one httpx call per query);
- lcore-min:  LCore, noop auth, memory cache, no quota, server mode;
- lcore-lib:  the same in library mode (Llama Stack inside LCore's process);
- lcore-full: jwk-token auth, RBAC, lcore-quota and lcore-cache-postgres on PostgreSQL,
              metrics, JSON logs.

For each: throughput and latency percentiles at each concurrency for `/v2/query` and
`/v2/streaming_query` (time to first token too), latency added over direct, LCore's own reported
overhead, RSS after warm-up (and after `--soak` seconds of mixed traffic), start-up to ready, and
how many Llama Stack calls one query costs (from Llama Stack's access log). The load generator
(bench/load.py) is a separate process using httpx; all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from lcore_core.testing.jwks import local_jwks
from lcore_core.testing.llama_stack import (
    LLM_MODEL_ID,
    LlamaStackServer,
    free_port,
    library_client_config,
    write_run_yaml,
)
from lcore_core.testing.llm import ScriptedLLM

HERE = Path(__file__).resolve().parent
PG = {"host": "127.0.0.1", "port": 5432, "db": "test", "user": "postgres",
      "ssl_mode": "disable", "gss_encmode": "disable"}
INSTRUCTIONS = "You are a helpful assistant."
TARGETS = ["direct", "direct-conv", "floor", "lcore-min", "lcore-lib", "lcore-full"]
# Set by `bench.phases`: LCore targets started from then on export their spans here (OTLP/HTTP).
tracing_endpoint: str | None = None


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Service:
    """A process under test: its base URL, the request body and headers to send."""

    name: str
    url: str
    process: subprocess.Popen[bytes] | None = None
    headers: list[str] = field(default_factory=list)
    startup_s: float | None = None
    paths: dict[str, str] = field(default_factory=lambda: {
        "query": "/v2/query", "stream": "/v2/streaming_query"})

    def body(self, endpoint: str) -> str:
        if self.name.startswith("direct"):
            body = {"model": LLM_MODEL_ID, "input": "bench question {n}",
                    "instructions": INSTRUCTIONS, "store": True, "stream": endpoint == "stream"}
            if self.name == "direct-conv":
                body["conversation"] = "{conv}"
            return json.dumps(body)
        return json.dumps({"query": "bench question {n}", "shield_ids": [],
                           "generate_topic_summary": False})

    def rss_mb(self) -> float | None:
        if self.process is None:
            return None
        pids = [self.process.pid, *_children(self.process.pid)]
        total = 0
        for pid in pids:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except OSError:
                continue
        return total / 1024

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def _children(pid: int) -> list[int]:
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    except OSError:
        return []
    kids = [int(p) for p in out.split()]
    return kids + [g for k in kids for g in _children(k)]


def wait_ready(url: str, path: str, process: subprocess.Popen[bytes], log: Path,
               timeout: float = 180, headers: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    with httpx.Client(timeout=2, trust_env=False) as client:
        while time.perf_counter() - started < timeout:
            if process.poll() is not None:
                raise RuntimeError(f"{url} exited during start-up:\n{log.read_text()[-3000:]}")
            try:
                if client.get(url + path, headers=headers).status_code == 200:
                    return time.perf_counter() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
    raise TimeoutError(f"{url} not ready after {timeout} s:\n{log.read_text()[-3000:]}")


def spawn(command: list[str], log: Path, env: dict[str, str] | None = None
          ) -> subprocess.Popen[bytes]:
    with log.open("ab") as fh:
        return subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})},
                                start_new_session=True)


def compile_sources() -> None:
    """Write LCore's bytecode, as an installed service has it: an editable install under
    PYTHONDONTWRITEBYTECODE (as on the CI machines) would compile its sources at every start-up
    measured here."""
    for package in (HERE.parent / "lcore_core", HERE.parent / "plugins"):
        compileall.compile_dir(package, quiet=1)


def lcore_config(workdir: Path, stack: LlamaStackServer, library: Path | None,
                 full: dict[str, Any] | None) -> Path:
    config: dict[str, Any] = {
        "name": "lcore-bench",
        "service": {"host": "127.0.0.1", "port": 8080, "log_format": "json",
                    **({"tracing": {"enabled": True, "endpoint": tracing_endpoint}}
                       if tracing_endpoint else {})},
        "llama_stack": ({"use_as_library_client": True,
                         "library_client_config_path": str(library)} if library else
                        {"url": stack.url, "timeout": 60}),
        "database": {"sqlite": {"db_path": str(workdir / "user.db")}},
        "authentication": {"module": "noop"},
        # The shipped default bound (1000 turns): a soak shows the cache full, not growing.
        "conversation_cache": {"type": "memory", "memory": {"max_entries": 1000}},
    }
    if full:
        config.update(full)
    else:
        # LCore minimal = the core alone, as installed without plugins (plugins.blocked stops
        # their import, the same as not installing them).
        config["plugins"] = {"blocked": ["a2a", "quota", "auth_jwk", "auth_k8s", "cache_sqlite",
                                         "cache_postgres"]}
    path = workdir / "lightspeed-stack.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def full_setup(workdir: Path, namespace: str) -> tuple[dict[str, Any], str]:
    """jwk-token (a local JWKS file), RBAC, user DB, cache and quota on PostgreSQL; a token."""
    jwks, token = local_jwks(workdir, "bench")
    pg = {**PG, "namespace": namespace}
    section = {
        # Installed but not used by this deployment, as a user who installs only what they need
        # would have it (plugins.blocked keeps them from being imported).
        "plugins": {"blocked": ["a2a", "auth_k8s", "cache_sqlite"]},
        "authentication": {"module": "jwk-token", "skip_for_health_probes": True, "jwk_config": {
            "url": str(jwks), "issuer": "bench-issuer", "audience": "lcore",
            "jwt_configuration": {"role_rules": [
                {"jsonpath": "$.groups[*]", "operator": "contains", "value": "users",
                 "roles": ["user"]}]}}},
        "authorization": {"access_rules": [
            # override_shields: the bench's queries run without shields (`shield_ids: []`).
            {"role": "user", "actions": ["query", "streaming_query", "list_conversations",
                                         "get_conversation", "feedback", "get_models", "info",
                                         "override_shields"]}]},
        "database": {"postgres": pg},
        "conversation_cache": {"type": "postgres", "postgres": pg},
        "quota_handlers": {"postgres": pg, "limiters": [
            {"name": "user_daily", "type": "user_limiter", "initial_quota": 10**12,
             "quota_increase": 0, "period": "1 day"},
            {"name": "cluster_daily", "type": "cluster_limiter", "initial_quota": 10**13,
             "quota_increase": 0, "period": "1 day"}], "scheduler": {"period": 60}},
    }
    return section, token


def drop_schema(namespace: str) -> None:
    import psycopg

    conn = psycopg.connect(host=PG["host"], port=PG["port"], dbname=PG["db"], user=PG["user"])
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute(f'DROP SCHEMA IF EXISTS "{namespace}" CASCADE')
    conn.close()


def start_target(name: str, workdir: Path, stack: LlamaStackServer, llm: ScriptedLLM,
                 namespace: str) -> Service:
    if name.startswith("direct"):
        return Service(name, stack.url, paths={"query": "/v1/responses",
                                               "stream": "/v1/responses"})
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = workdir / f"{name}.log"
    bindir = Path(sys.executable).parent
    if name == "floor":
        command = [str(bindir / "hypercorn"), "--bind", f"127.0.0.1:{port}",
                   "--log-level", "warning", *floor_worker_class(), "bench.floor:app"]
        env = {"FLOOR_LLAMA_URL": stack.url, "FLOOR_MODEL": LLM_MODEL_ID,
               "FLOOR_INSTRUCTIONS": INSTRUCTIONS, "PYTHONPATH": str(HERE.parent)}
        process = spawn(command, log, env)
        _wait_port(port, process, log)
        return Service(name, url, process)
    target_dir = workdir / name
    target_dir.mkdir()
    library = (library_client_config(target_dir / "library", llm.base_url)
               if name == "lcore-lib" else None)
    full, token = (full_setup(target_dir, namespace) if name == "lcore-full" else (None, ""))
    config = lcore_config(target_dir, stack, library, full)
    command = [str(bindir / "lcore"), "serve", "-c", str(config), "--port", str(port)]
    process = spawn(command, log)
    headers = [f"Authorization:Bearer {token}"] if token else []
    service = Service(name, url, process, headers)
    service.startup_s = wait_ready(url, "/readiness", process, log,
                                   headers=dict(h.split(":", 1) for h in headers))
    return service


def _wait_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    import socket

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited during start-up:\n{log.read_text()[-3000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} not open:\n{log.read_text()[-3000:]}")


def load(service: Service, endpoint: str, concurrency: int, duration: float,
         warmup: float) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.load", "--url", service.url + service.paths[endpoint],
               "--body", service.body(endpoint), "--concurrency", str(concurrency),
               "--duration", str(duration), "--warmup", str(warmup)]
    if endpoint == "stream":
        command.append("--stream")
    if service.name == "direct-conv":
        command += ["--new-conversation", service.url + "/v1/conversations"]
    for header in service.headers:
        command += ["--header", header]
    out = subprocess.run(command, capture_output=True, text=True, cwd=HERE.parent,
                         timeout=duration + warmup + 120)
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout)


def backend_calls(service: Service, stack: LlamaStackServer, count: int = 10) -> float | None:
    """Llama Stack requests per query, from its access log (server-mode targets only)."""
    if service.name == "lcore-lib":
        return None
    if service.name == "direct-conv":
        return 2.0
    def requests() -> int:
        text = stack.log_path.read_text(errors="replace")
        return sum(1 for line in text.splitlines() if '"POST /v1/' in line or '"GET /v1/' in line)

    headers = dict(h.split(":", 1) for h in service.headers)
    headers["Content-Type"] = "application/json"
    time.sleep(1.0)
    before = requests()
    with httpx.Client(timeout=60, trust_env=False) as client:
        for i in range(count):
            body = service.body("query").replace("{n}", f"calls-{i}")
            client.post(service.url + service.paths["query"], content=body, headers=headers)
    time.sleep(1.0)  # background work (caches refreshed, summaries) lands in the log too
    return (requests() - before) / count


SOAK_WARMUP_S = 30.0


def soak(service: Service, seconds: float, warmup: float = SOAK_WARMUP_S) -> dict[str, Any]:
    """Mixed traffic for `seconds`: queries, streams, bad requests, many distinct users.

    The same mix runs for `warmup` seconds first, so "before" is RSS after warm-up: every
    code path (streams, errors) has run once and the pools and caches a first request fills
    are there. RSS before that warm-up is reported too.
    """
    cold = service.rss_mb()
    counts = {"query": 0, "stream": 0, "bad": 0, "errors": 0}
    samples: list[float | None] = []  # RSS each tenth of the soak: a plateau or a slope
    headers = dict(h.split(":", 1) for h in service.headers)
    with httpx.Client(timeout=60, trust_env=False, headers=headers) as client:
        def drive(until: float, tally: dict[str, int], tick: Callable[[], None]) -> None:
            i = 0
            while time.monotonic() < until:
                tick()
                i += 1
                user = f"?user_id=soak-{i % 500}" if not service.headers else ""
                kind = ("bad", "stream", "query", "query")[i % 4]
                try:
                    if kind == "bad":
                        response = client.post(service.url + "/v2/query" + user,
                                               content=b"{oops",
                                               headers={"Content-Type": "application/json"})
                        ok = response.status_code == 400
                    else:
                        response = client.post(service.url + service.paths[kind] + user,
                                               content=service.body(kind).replace("{n}", str(i)),
                                               headers={"Content-Type": "application/json"})
                        ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                tally[kind] += 1
                tally["errors"] += 0 if ok else 1

        warm = {"query": 0, "stream": 0, "bad": 0, "errors": 0}
        drive(time.monotonic() + warmup, warm, lambda: None)
        before = service.rss_mb()
        samples.append(before)
        started = time.monotonic()

        def sample() -> None:
            if time.monotonic() - started >= len(samples) * seconds / 10:
                samples.append(service.rss_mb())

        drive(started + seconds, counts, sample)
    after = service.rss_mb()
    growth = (after - before) / before * 100 if before and after else None
    samples.append(after)
    half = samples[len(samples) // 2]
    second_half = (after - half) / half * 100 if half and after else None
    return {"seconds": seconds, "warmup_s": warmup, "warmup_errors": warm["errors"],
            "rss_cold_mb": cold, "rss_before_mb": before, "rss_after_mb": after,
            "growth_pct": growth, "second_half_growth_pct": second_half,
            "rss_samples_mb": samples, **counts}


def _profile(service: Service, args: argparse.Namespace, label: str
             ) -> subprocess.Popen[bytes] | None:
    """With `--profile DIR`: py-spy samples the target (collapsed stacks) during this point."""
    if not args.profile or service.process is None:
        return None
    out = Path(args.profile) / f"{service.name}-{label}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    # The one installed beside this interpreter (pip install py-spy), else the one on PATH.
    local = Path(sys.executable).parent / "py-spy"
    command = [str(local) if local.exists() else "py-spy", "record", "--pid",
               str(service.process.pid), "--duration", str(int(args.duration + args.warmup)),
               "--format", "raw", "--subprocesses", "-o", str(out)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _minus(value: float | None, base: float | None) -> float | None:
    return None if value is None or base is None else value - base


def report(results: dict[str, Any], args: argparse.Namespace, command: str) -> str:
    lines = ["# LCore benchmark results", "",
             f"Command: `{command}`", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
             f"{platform.python_version()}, {platform.platform()}; run {time.strftime('%F %T %Z')}."
             " Scripted LLM with a fixed answer behind a real Llama Stack (server mode).",
             "Load generator: bench/load.py (httpx, closed loop, separate process), "
             f"{args.duration:.0f} s per point after {args.warmup:.0f} s warm-up.", ""]
    for endpoint in args.endpoints:
        lines += [f"## {'/v2/query' if endpoint == 'query' else '/v2/streaming_query'}", "",
                  "| target | conc | req/s | % of direct | p50 ms | p95 ms | p99 ms | added p50 ms"
                  " | added p50 vs direct-conv ms | TTFT p50 ms | own overhead p50/p99 ms"
                  " | errors |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for conc in args.concurrency:
            direct = results.get("direct", {}).get("points", {}).get(f"{endpoint}@{conc}")
            conv = results.get("direct-conv", {}).get("points", {}).get(f"{endpoint}@{conc}")
            for target in args.targets:
                point = results.get(target, {}).get("points", {}).get(f"{endpoint}@{conc}")
                if not point:
                    continue
                lat = point["latency_ms"]
                share = (point["rps"] / direct["rps"] * 100 if direct and direct["rps"]
                         else None)
                added = _minus(lat["p50"], direct and direct["latency_ms"]["p50"])
                added_conv = _minus(lat["p50"], conv and conv["latency_ms"]["p50"])
                over = point["overhead_ms"]
                lines.append(
                    f"| {target} | {conc} | {fmt(point['rps'])} | {fmt(share, 0)} | "
                    f"{fmt(lat['p50'])} | {fmt(lat['p95'])} | {fmt(lat['p99'])} | "
                    f"{fmt(added)} | {fmt(added_conv)} | {fmt(point['ttft_ms']['p50'])} | "
                    f"{fmt(over['p50'], 2)}/{fmt(over['p99'], 2)} | {point['error_count']} |")
        lines.append("")
    lines += ["## Per target", "",
              "| target | start-up to ready s | RSS after warm-up MB | RSS after run MB |"
              " Llama Stack calls per query |", "|---|---|---|---|---|"]
    for target in args.targets:
        r = results.get(target)
        if r:
            lines.append(f"| {target} | {fmt(r.get('startup_s'), 2)} | "
                         f"{fmt(r.get('rss_warm_mb'))} | {fmt(r.get('rss_end_mb'))} | "
                         f"{fmt(r.get('backend_calls'), 2)} |")
    soaks = [(t, results[t]["soak"]) for t in args.targets if results.get(t, {}).get("soak")]
    if soaks:
        lines += ["", "## Soak (mixed traffic: queries, streams, bad requests, 500 users)", "",
                  f"The mix first runs {SOAK_WARMUP_S:.0f} s as a warm-up; growth is from the "
                  "RSS after it.", "",
                  "| target | seconds | requests | errors | RSS cold MB | RSS after warm-up MB |"
                  " RSS after MB | growth % | second-half growth % | RSS each tenth MB |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for target, s in soaks:
            total = s["query"] + s["stream"] + s["bad"]
            series = " ".join(fmt(v) for v in s.get("rss_samples_mb") or [])
            lines.append(f"| {target} | {s['seconds']:.0f} | {total} | {s['errors']} | "
                         f"{fmt(s.get('rss_cold_mb'))} | "
                         f"{fmt(s['rss_before_mb'])} | {fmt(s['rss_after_mb'])} | "
                         f"{fmt(s['growth_pct'], 2)} | "
                         f"{fmt(s.get('second_half_growth_pct'), 2)} | {series} |")
    return "\n".join(lines) + "\n"


def run_target(target: str, workdir: Path, stack: LlamaStackServer, llm: ScriptedLLM,
               namespace: str, args: argparse.Namespace) -> dict[str, Any]:
    """Start `target`, drive every point at it (then the soak), stop it; its results."""
    service = start_target(target, workdir, stack, llm, namespace)
    result: dict[str, Any] = {"startup_s": service.startup_s, "points": {}}
    try:
        for endpoint in args.endpoints:
            for conc in args.concurrency:
                profiler = _profile(service, args, f"{endpoint}-c{conc}")
                point = load(service, endpoint, conc, args.duration, args.warmup)
                if profiler is not None:
                    profiler.wait()
                result["points"][f"{endpoint}@{conc}"] = point
                if "rss_warm_mb" not in result:
                    result["rss_warm_mb"] = service.rss_mb()
                say(f"{target} {endpoint} c={conc}: {point['rps']:.1f} req/s, "
                    f"p50 {fmt(point['latency_ms']['p50'])} ms, "
                    f"errors {point['error_count']}")
        result["backend_calls"] = backend_calls(service, stack)
        if args.soak and target.startswith("lcore"):
            say(f"{target}: soak for {args.soak:.0f} s")
            result["soak"] = soak(service, args.soak)
        result["rss_end_mb"] = service.rss_mb()
    finally:
        service.stop()
    return result


def floor_worker_class() -> list[str]:
    """The floor runs on uvloop when it is installed, as LCore does."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return []
    return ["--worker-class", "uvloop"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--endpoints", default="query,stream")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per point")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--soak", type=float, default=0.0,
                        help="seconds of mixed traffic per LCore target (600 for the 10-minute "
                             "soak)")
    parser.add_argument("--out", help="write the report here (default: bench/RESULTS.md for a "
                                      "full run, nowhere for a partial or profiled one)")
    parser.add_argument("--json", help="also write the raw figures here")
    parser.add_argument("--profile", help="py-spy each point of each target into this directory")
    args = parser.parse_args(argv)
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)
    args.targets = [t for t in args.targets.split(",") if t]
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; choose from {TARGETS}")
    args.endpoints = args.endpoints.split(",")
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    command = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])

    results: dict[str, Any] = {}
    namespace = f"lcore_bench_{uuid.uuid4().hex[:8]}"
    compile_sources()
    with tempfile.TemporaryDirectory(prefix="lcore-bench-") as tmp, ScriptedLLM() as llm:
        workdir = Path(tmp)
        say(f"scripted LLM on {llm.base_url}")
        try:
            for target in args.targets:
                # A Llama Stack of its own per target: an empty store for each, and a stack that
                # a target drove into trouble (0.7's SQLite store locks up under c=64) cannot
                # spoil the next target's figures.
                say(f"{target}: starting Llama Stack, then the target")
                stack = LlamaStackServer(write_run_yaml(workdir / f"stack-{target}",
                                                        llm.base_url), startup_timeout=120).start()
                try:
                    results[target] = run_target(target, workdir, stack, llm, namespace, args)
                finally:
                    stack.stop()
        finally:
            if "lcore-full" in args.targets:
                drop_schema(namespace)
    text = report(results, args, command)
    out = args.out or (str(HERE / "RESULTS.md") if full_run(args) else None)
    if out:
        Path(out).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(text)
    say(f"wrote {out}" if out else
        "a partial or profiled run: bench/RESULTS.md left as it was (pass --out to keep this)")
    return 0


def full_run(args: argparse.Namespace) -> bool:
    """Only a run of every target and point, unprofiled, replaces bench/RESULTS.md by default."""
    return (args.targets == list(TARGETS) and args.endpoints == ["query", "stream"]
            and args.concurrency == [1, 16, 64] and not args.profile and not args.soak)


if __name__ == "__main__":
    raise SystemExit(main())
