"""A client that stops reading cannot hold a response open (issue 23, item 13).

`lcore serve` (Hypercorn) in front of the real Llama Stack and the scripted LLM, lcore-quota on
SQLite; the client is a raw socket with a tiny receive buffer that reads the headers and stops.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from .support import LcoreProcess, wait_for, write_config

USER_QUOTA = 100_000
RESERVED = 100
WRITE_TIMEOUT = 2.0
MARGIN = 20.0  # generous: the machine is shared
# About 6 MB of answer: more than the server's socket send buffer (Linux grows it to 4 MB on
# loopback) and the transport's high-water mark, so the write really waits.
WORDS = 6000
WORD = "x" * 1000


def available(db: Path, user: str) -> int | None:
    with sqlite3.connect(db) as conn:
        rows = list(conn.execute("SELECT available FROM lcore_quota_limit WHERE subject_id = ?",
                                 (user,)))
    return rows[0][0] if rows else None


def stalled_client(port: int, path: str, body: dict[str, Any]) -> socket.socket:
    """POST `body`, read the first bytes of the answer, then read no more."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)  # before connect: the window
    sock.connect(("127.0.0.1", port))
    payload = json.dumps(body).encode()
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                 f"\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload)
    sock.settimeout(60)
    assert sock.recv(16).startswith(b"HTTP/1.1 200")
    return sock


def drain(sock: socket.socket, deadline: float) -> tuple[bytes, bool]:
    """Everything the server still sends, and whether the connection then ended."""
    received = b""
    sock.settimeout(1)
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return received, True
        if not chunk:
            return received, True
        received += chunk
    return received, False


def write_timeouts(lcore: LcoreProcess) -> float:
    text = httpx.get(f"{lcore.url}/metrics", timeout=10, trust_env=False).text
    return sum(s.value for f in text_string_to_metric_families(text)
               for s in f.samples if s.name == "ls_response_write_timeouts_total")


async def test_stalled_reader_ends_stream_and_releases_quota(llama_stack_server: Any, llm: Any,
                                                             tmp_path: Path) -> None:
    llm.script("endless story", text=" ".join([WORD] * WORDS), chunks=120)
    llm.script("huge answer", text=" ".join([WORD] * WORDS), chunks=20)
    quota_db = tmp_path / "quota.db"
    config = write_config(
        tmp_path / "lcore.yaml", llama_stack_server.url,
        service={"host": "127.0.0.1", "port": 8080, "log_format": "json",
                 "write_timeout_seconds": WRITE_TIMEOUT},
        quota_handlers={"sqlite": {"db_path": str(quota_db)}, "reservation_tokens": RESERVED,
                        "reservation_chars_per_token": 0,
                        "limiters": [{"name": "user-daily", "type": "user_limiter",
                                      "initial_quota": USER_QUOTA, "quota_increase": 0,
                                      "period": "1 day"}]})
    lcore = LcoreProcess(config).start()
    try:
        lcore.wait_ready()
        assert write_timeouts(lcore) == 0
        sock = stalled_client(lcore.port, "/v2/streaming_query?user_id=slow",
                              {"query": "endless story", "generate_topic_summary": False})
        started = time.monotonic()
        # The reservation is held while the answer is being written ...
        wait_for(lambda: available(quota_db, "slow") == USER_QUOTA - RESERVED, 30,
                 what="the stream's quota reservation")
        # ... and given back once the write has waited WRITE_TIMEOUT: nothing is charged.
        wait_for(lambda: available(quota_db, "slow") == USER_QUOTA, WRITE_TIMEOUT + MARGIN,
                 what="the reservation released")
        assert time.monotonic() - started >= WRITE_TIMEOUT
        wait_for(lambda: write_timeouts(lcore) == 1, MARGIN, what="the metric")
        # The connection is closed: the client, reading again, gets the rest, then the end,
        # and the stream never reached its end event.
        rest, ended = drain(sock, time.monotonic() + MARGIN)
        sock.close()
        assert ended
        assert b'"event": "end"' not in rest and not rest.endswith(b"0\r\n\r\n")

        # A large non-streamed answer to a client that stops reading ends the same way.
        sock = stalled_client(lcore.port, "/v2/query?user_id=big",
                              {"query": "huge answer", "generate_topic_summary": False})
        wait_for(lambda: write_timeouts(lcore) == 2, WRITE_TIMEOUT + MARGIN,
                 what="the second write timeout")
        rest, ended = drain(sock, time.monotonic() + MARGIN)
        sock.close()
        assert ended and len(rest) < WORDS * len(WORD)

        # The service is fine: a reading client gets its whole answer.
        answer = httpx.post(f"{lcore.url}/v2/query?user_id=reader", timeout=60,
                            trust_env=False,
                            json={"query": "huge answer", "generate_topic_summary": False})
        assert answer.status_code == 200 and len(answer.json()["response"]) > WORDS * 1000
        log = lcore.log_path.read_text()
        assert log.count('"event": "response write timed out"') == 2, lcore.log_tail()
    finally:
        lcore.stop()
