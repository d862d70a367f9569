"""Splunk HEC export: events go out in the background, through a bounded queue.

Sending never delays or fails an answer: `SplunkExporter.send` only enqueues (a full queue drops
the event, logged and counted), and a few worker tasks POST the events to the HEC URL. A failed
POST (receiver down, timeout, TLS, 4xx/5xx) is logged and counted, never retried: telemetry must
not pile up behind an outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

import httpx
import structlog
from prometheus_client import CollectorRegistry, Counter

log = structlog.get_logger("lcore.splunk")

WORKERS = 4
# How long shutdown waits for queued events before it drops them.
DRAIN_SECONDS = 5.0

_METRICS: WeakKeyDictionary[CollectorRegistry, Counter] = WeakKeyDictionary()


def register_metrics(registry: CollectorRegistry) -> None:
    _METRICS[registry] = Counter(
        "lcore_splunk_events", "Splunk HEC events by outcome: sent, failed (not accepted or "
        "unreachable), dropped (queue full or shut down)", ["outcome"], registry=registry)


def _version() -> str:
    try:
        return metadata.version("lcore-core")
    except metadata.PackageNotFoundError:
        return "unknown"


class SplunkExporter:
    """One per app while `splunk.enabled`: `start()` in the serving loop, `close()` at the end."""

    def __init__(self, settings: Any, registry: CollectorRegistry | None = None) -> None:
        self.url: str = settings["url"]
        self.index: str = settings["index"]
        self.token_path = Path(settings["token_path"]).expanduser()
        self.timeout: float = float(settings["timeout"])
        # As upstream: the configured source with the service's version.
        self.source = f"{settings['source']} (v{_version()})"
        self.host = platform.node() or "unknown"
        self.verify_ssl: bool = bool(settings["verify_ssl"])
        self.queue_size: int = int(settings.get("queue_size") or 1000)
        self._counter = _METRICS.get(registry) if registry is not None else None
        self._queue: asyncio.Queue[dict[str, Any]] | None = None
        self._client: httpx.AsyncClient | None = None
        self._workers: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._queue = asyncio.Queue(self.queue_size)
        self._client = httpx.AsyncClient(verify=self.verify_ssl, timeout=self.timeout,
                                         trust_env=False)
        self._workers = [asyncio.get_running_loop().create_task(self._work())
                         for _ in range(WORKERS)]

    def send(self, event: dict[str, Any], sourcetype: str) -> None:
        """Queue one event; returns at once and never raises."""
        payload = {"time": int(time.time()), "host": self.host, "source": self.source,
                   "sourcetype": sourcetype, "index": self.index, "event": event}
        if self._queue is None:
            self._count("dropped")
            log.warning("splunk event dropped: exporter not running", sourcetype=sourcetype)
            return
        try:
            self._queue.put_nowait(payload)
        except asyncio.QueueFull:
            self._count("dropped")
            log.warning("splunk event dropped: queue full", sourcetype=sourcetype,
                        queue_size=self.queue_size)

    async def close(self, drain_seconds: float = DRAIN_SECONDS) -> None:
        """Send what is queued (for at most `drain_seconds`), then stop."""
        queue, self._queue = self._queue, None
        if queue is not None and not queue.empty():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(queue.join(), drain_seconds)
            left = queue.qsize()
            if left:
                self._count("dropped", left)
                log.warning("splunk events dropped at shutdown", count=left)
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _work(self) -> None:
        queue = self._queue
        assert queue is not None
        while True:
            payload = await queue.get()
            try:
                await self._post(payload)
            except Exception as exc:  # a worker must outlive any one event
                self._count("failed")
                log.warning("splunk event not delivered", error=f"{type(exc).__name__}: {exc}")
            finally:
                queue.task_done()

    async def _post(self, payload: dict[str, Any]) -> None:
        sourcetype = payload["sourcetype"]
        token = self._token()
        if token is None:
            self._count("failed")
            return
        assert self._client is not None
        try:
            response = await self._client.post(
                self.url, json=payload, headers={"Authorization": f"Splunk {token}"})
        except httpx.TimeoutException:
            self._count("failed")
            log.warning("splunk event not delivered: timed out", url=self.url,
                        timeout_s=self.timeout, sourcetype=sourcetype)
            return
        except httpx.HTTPError as exc:
            self._count("failed")
            log.warning("splunk event not delivered", url=self.url, sourcetype=sourcetype,
                        error=f"{type(exc).__name__}: {exc}")
            return
        if response.status_code >= 400:
            self._count("failed")
            log.warning("splunk event refused", url=self.url, status=response.status_code,
                        body=response.text[:200], sourcetype=sourcetype)
            return
        self._count("sent")

    def _token(self) -> str | None:
        # Read for every event so a rotated token is picked up without a restart (a few bytes
        # from a local file: not worth a thread hop).
        try:
            token = self.token_path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            log.warning("splunk HEC token unreadable", path=str(self.token_path),
                        error=f"{type(exc).__name__}: {exc}")
            return None
        if not token:
            log.warning("splunk HEC token file is empty", path=str(self.token_path))
            return None
        return token

    def _count(self, outcome: str, n: int = 1) -> None:
        if self._counter is not None:
            self._counter.labels(outcome).inc(n)


def inference_event(*, question: str, response: str, inference_time: float, model: str,
                    deployment: str, org_id: str, system_id: str, request_id: str,
                    cla_version: str, system_os: str, system_version: str, system_arch: str,
                    input_tokens: int = 0, output_tokens: int = 0) -> dict[str, Any]:
    """The `event` of a /v1/infer HEC event, in upstream's rlsapi field names."""
    return {
        "question": question,
        "refined_questions": [],
        "context": "",
        "response": response,
        "inference_time": inference_time,
        "model": model,
        "deployment": deployment,
        "org_id": org_id,
        "system_id": system_id,
        "total_llm_tokens": input_tokens + output_tokens,
        "request_id": request_id,
        "cla_version": cla_version,
        "system_os": system_os,
        "system_version": system_version,
        "system_arch": system_arch,
    }
