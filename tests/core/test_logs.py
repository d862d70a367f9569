"""`service.log_format`: JSON lines by default, structlog's console renderer on a terminal."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys

import pytest

from lcore_core.config import load_config
from lcore_core.errors import ConfigError
from lcore_core.plugins import load_plugins

SCRIPT = """
import structlog
from lcore_core.logs import configure_logging
configure_logging({fmt!r})
structlog.get_logger("lcore.test").info("hello logs", answer=42)
"""


def emit(fmt: str, *, terminal: bool) -> str:
    """What one log line looks like on standard error, as a pipe or as a terminal."""
    command = [sys.executable, "-c", SCRIPT.format(fmt=fmt)]
    if not terminal:
        return subprocess.run(command, capture_output=True, text=True, timeout=60,
                              check=True).stderr
    leader, follower = pty.openpty()
    try:
        subprocess.run(command, stderr=follower, stdout=subprocess.DEVNULL, timeout=60,
                       check=True)
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal's other end is closed: all read
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")
    finally:
        os.close(leader)


def is_json_line(text: str) -> bool:
    line = text.strip().splitlines()[-1]
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return False
    return record["event"] == "hello logs" and record["answer"] == 42


@pytest.mark.parametrize("fmt, terminal, json_expected", [
    ("auto", False, True),
    ("auto", True, False),
    ("json", True, True),
    ("console", False, False),
])
def test_format_follows_the_setting_and_the_terminal(fmt, terminal, json_expected):
    text = emit(fmt, terminal=terminal)
    assert "hello logs" in text and "42" in text
    assert is_json_line(text) is json_expected, text


def test_auto_is_the_default_and_other_formats_are_refused(tmp_path, write_config):
    bare = tmp_path / "bare.yaml"
    bare.write_text("name: bare\nllama_stack:\n  url: http://127.0.0.1:9\n")
    assert load_config(bare, load_plugins(entrypoints=False)).service.log_format == "auto"
    with pytest.raises(ConfigError, match=r"service\.log_format"):
        load_config(write_config({"service": {"log_format": "xml"}}),
                    load_plugins(entrypoints=False))


STALLED = """
import asyncio, sys, time
import structlog
from lcore_core.logs import configure_logging
configure_logging("json")
log = structlog.get_logger("lcore.test")

async def main():
    started = time.monotonic()
    for n in range({lines}):
        log.info("line", n=n, padding="x" * 200)  # far more than a pipe holds
        await asyncio.sleep(0)
    print(f"loop done {{time.monotonic() - started:.3f}}", flush=True)

asyncio.run(main())
"""


def test_a_stalled_log_reader_does_not_stall_the_event_loop() -> None:
    """Nobody reads standard error while the loop logs 2,000 lines (about 500 KB; a pipe holds
    64 KB): the loop still finishes; then every line comes out, once and in order."""
    import select

    lines = 2000
    process = subprocess.Popen([sys.executable, "-c", STALLED.format(lines=lines)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 30)
        # A loop writing its own log lines would be stuck on the full pipe: nothing on stdout.
        assert ready, "the event loop stalled on a full standard error"
        assert process.stdout.readline().startswith(b"loop done")
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0
    numbers = [json.loads(line)["n"] for line in err.decode().splitlines()
               if line.startswith("{") and '"line"' in line]
    assert numbers == list(range(lines))


CONTEXT = """
import logging, structlog
from lcore_core.logs import configure_logging
configure_logging("json")
structlog.contextvars.bind_contextvars(request_id="rid-42")
try:
    1 / 0
except ZeroDivisionError:
    structlog.get_logger("lcore.test").exception("it broke")
logging.getLogger("some.library").warning("plain line")
"""


def test_lines_keep_their_traceback_and_request_id() -> None:
    """Rendered where they are logged: a structlog `exception()` line carries its traceback, and
    a plain `logging` line from a library carries the request id bound in that context."""
    err = subprocess.run([sys.executable, "-c", CONTEXT], capture_output=True, text=True,
                         timeout=60, check=True).stderr
    records = {r["event"]: r for r in map(json.loads, err.splitlines()) if "event" in r}
    assert "ZeroDivisionError" in records["it broke"].get("exception", ""), err
    assert records["it broke"]["request_id"] == "rid-42", err
    assert records["plain line"]["request_id"] == "rid-42", err


RACE = """
import logging, threading, structlog
from lcore_core.logs import configure_logging, flush_logging
configure_logging("json")
log = structlog.get_logger("lcore.test")
start = threading.Barrier(3)

def chatter(name):
    start.wait()
    for n in range(20000):
        log.info("line", who=name, n=n)

threads = [threading.Thread(target=chatter, args=(w,)) for w in ("a", "b")]
for t in threads:
    t.start()
start.wait()
flush_logging()  # while both threads are still logging
for t in threads:
    t.join()
"""


def test_flushing_while_other_threads_log_loses_no_line() -> None:
    err = subprocess.run([sys.executable, "-c", RACE], capture_output=True, text=True,
                         timeout=120, check=True).stderr
    seen = [(r["who"], r["n"]) for r in map(json.loads, err.splitlines())]
    for who in ("a", "b"):
        assert [n for w, n in seen if w == who] == list(range(20000)), who
