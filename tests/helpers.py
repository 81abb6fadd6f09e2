"""Small shared pieces for tests: rows, a scripted engine, the test data (tests/data, sources in its SOURCES.md)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path

from arhn_ray.engines.base import ChatRequest, ChatResult

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
SAMPLES = ROOT / "arhn_ray" / "samples"
RLHN_STAGE1 = DATA / "rlhn_msmarco_passage.stage_1.gpt-4o-mini.jsonl"
RLHN_STAGE2 = DATA / "rlhn_msmarco_passage.stage_2.gpt-4o.jsonl"
# the README's main command runs on the first PER_FILE queries of each sample file: on a 2-core CPU
# without bf16 units a query takes the bundled model over a minute
PER_FILE = 1


def load_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def passage(docid: str, text: str) -> dict:
    return {"docid": docid, "title": "", "text": text}


def make_row(n_neg: int, qid: str = "q1", query: str = "what is x?") -> dict:
    return {
        "query_id": qid,
        "query": query,
        "positive_passages": [passage("p0", "Positive passage zero. X is a letter.")],
        "negative_passages": [passage(f"n{i}", f"Negative passage number {i}. It talks about topic {i}.") for i in range(n_neg)],
        "subset": "test",
    }


def blocks(snippets: list[str | None]) -> str:
    return "\n\n".join(f"[[[doc{i}]]]\n{s or 'NO_ANSWER'}\n[[[/doc{i}]]]" for i, s in enumerate(snippets, 1))


class ScriptedEngine:
    """Answers each request with ``script(request)``; a returned Exception becomes an error result."""

    model = "scripted"

    def __init__(self, script: Callable[[ChatRequest], str | Exception]):
        self.script = script
        self.requests: list[ChatRequest] = []
        self.gate: Callable[[ChatRequest], Awaitable[None]] | None = None

    def generate(self, requests: list[ChatRequest]) -> list[ChatResult]:
        self.requests.extend(requests)
        out = []
        for r in requests:
            text = self.script(r)
            if isinstance(text, Exception):
                out.append(ChatResult.failed(str(text)))
            else:
                out.append(ChatResult(text, 100, 10, "stop"))
        return out

    async def agenerate(self, requests: list[ChatRequest]) -> list[ChatResult]:
        """The same answers, each request awaiting ``gate(request)`` first when one is set."""
        if self.gate is not None:
            import asyncio

            await asyncio.gather(*(self.gate(r) for r in requests))
        return self.generate(requests)

    def close(self) -> None:
        pass


def run_in_terminal(
    cmd: list[str], env: dict, cwd: Path = ROOT, columns: int = 80, rows: int = 24, timeout: float = 600
) -> tuple[int, str]:
    """``cmd`` as a person runs it: its stdin, stdout and stderr a pseudo-terminal of ``columns`` x
    ``rows`` (a pipe is not a terminal: ``isatty()`` and the width differ). Returns the exit code
    and every byte the terminal received, as text (``\\r`` rewrites kept)."""
    import fcntl
    import os
    import select
    import struct
    import subprocess
    import termios
    import time

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    proc = subprocess.Popen(cmd, cwd=cwd, env=env | {"TERM": "xterm", "COLUMNS": str(columns)}, stdin=slave, stdout=slave,
                            stderr=slave, start_new_session=True)  # fmt: skip
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the last writer closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
            raise TimeoutError(f"{cmd} still running after {timeout} s")
        code = proc.wait(timeout=60)
    finally:
        os.close(master)
    return code, b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")


def terminal_lines(screen: str) -> list[str]:
    """What stays on the screen, line by line: a ``\\r`` rewrite leaves only its last text."""
    import re

    plain = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", screen)
    return [next((part for part in reversed(line.split("\r")) if part), "") for line in plain.split("\n")]


def send_json(handler, code: int, payload: dict) -> None:
    """A JSON answer from a ``BaseHTTPRequestHandler`` (the loopback OpenAI-compatible servers of the tests)."""
    data = json.dumps(payload).encode()
    handler.send_response(code)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
