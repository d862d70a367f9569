"""The load generator: a closed loop of N concurrent clients for a fixed time, in its own process.

    python -m bench.load --url URL --body JSON --concurrency 16 --duration 15 [--stream]

Prints one JSON object: requests, errors, throughput, latency percentiles (ms), and for streams
the time to first token; LCore's own overhead (`X-LCore-Overhead-Ms`, or `overhead_ms` in the
stream's `end` event) when the target reports it. Only loopback targets are accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import httpx

# A streamed answer's first token: LCore's `token` event, or Llama Stack's text delta.
FIRST_TOKEN_MARKERS = (b'"event": "token"', b'"event":"token"', b"output_text.delta")


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float | None]:
    return {f"p{q}": percentile(values, q) for q in (50, 95, 99)}


class Recorder:
    def __init__(self) -> None:
        self.latency: list[float] = []
        self.ttft: list[float] = []
        self.overhead: list[float] = []
        self.errors: dict[str, int] = {}

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


async def one(client: httpx.AsyncClient, args: argparse.Namespace, body: bytes,
              rec: Recorder | None) -> None:
    started = time.perf_counter()
    try:
        if args.new_conversation:
            # What a client of Llama Stack does for a new conversation: create it, then answer.
            created = await client.post(args.new_conversation, content=b"{}")
            created.raise_for_status()
            body = body.replace(b"{conv}", created.json()["id"].encode())
        if args.stream:
            first: float | None = None
            tail = b""
            async with client.stream("POST", args.url, content=body) as response:
                async for chunk in response.aiter_bytes():
                    if first is None and any(m in chunk for m in FIRST_TOKEN_MARKERS):
                        first = time.perf_counter()
                    tail = (tail + chunk)[-4096:]
                status = response.status_code
            overhead = _stream_overhead(tail)
        else:
            response = await client.post(args.url, content=body)
            status = response.status_code
            raw = response.headers.get("x-lcore-overhead-ms")
            overhead = float(raw) if raw else None
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        if rec is not None:
            rec.error(type(exc).__name__)
        return
    if rec is None:
        return
    if status != 200:
        rec.error(f"HTTP {status}")
        return
    rec.latency.append((time.perf_counter() - started) * 1000)
    if args.stream and first is not None:
        rec.ttft.append((first - started) * 1000)
    if overhead is not None:
        rec.overhead.append(overhead)


def _stream_overhead(tail: bytes) -> float | None:
    for line in reversed(tail.split(b"\n")):
        if line.startswith(b"data: ") and b"overhead_ms" in line:
            try:
                data = json.loads(line[6:])
            except ValueError:
                return None
            value = (data.get("data") or {}).get("overhead_ms")
            return float(value) if value is not None else None
    return None


async def run(args: argparse.Namespace) -> dict[str, Any]:
    host = urlsplit(args.url).hostname or ""
    if not host.startswith("127.") and host != "localhost":
        raise SystemExit(f"refusing a non-loopback target: {host}")
    headers = {"Content-Type": "application/json", **dict(h.split(":", 1) for h in args.header)}
    limits = httpx.Limits(max_connections=args.concurrency,
                          max_keepalive_connections=args.concurrency)
    rec = Recorder()
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=args.timeout,
                                 trust_env=False) as client:
        warm_until = time.perf_counter() + args.warmup
        stop_at = warm_until + args.duration
        counter = 0

        async def worker() -> None:
            nonlocal counter
            while (now := time.perf_counter()) < stop_at:
                counter += 1
                body = args.body.replace("{n}", str(counter)).encode()
                await one(client, args, body, rec if now >= warm_until else None)

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    done = len(rec.latency)
    # `sent`: every request started, warm-up included (what the backend served during the run).
    return {"requests": done, "sent": counter, "errors": rec.errors,
            "error_count": sum(rec.errors.values()),
            "rps": done / args.duration, "latency_ms": summary(rec.latency),
            "ttft_ms": summary(rec.ttft), "overhead_ms": summary(rec.overhead)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load")
    parser.add_argument("--url", required=True)
    parser.add_argument("--body", required=True, help="JSON; {n} becomes a request counter")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--header", action="append", default=[], help="Name:value")
    parser.add_argument("--new-conversation", metavar="URL",
                        help="POST here first and put the new id in place of {conv} in the body")
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    json.dump(asyncio.run(run(args)), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
