"""The OpenAI-compatible engine against real servers on loopback: ``vllm serve`` (CPU build,
bundled model) and a small HTTP server that fails on purpose; and the replay engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import free_port
from helpers import RLHN_STAGE1, load_jsonl, send_json

from arhn_ray.data.records import validate_row
from arhn_ray.engines.base import ChatRequest
from arhn_ray.engines.openai_engine import OpenAIEngine
from arhn_ray.engines.options import EngineConfig
from arhn_ray.engines.replay import ReplayEngine
from arhn_ray.method import labeling as lb
from arhn_ray.method.prompts import PromptSet, chat
from arhn_ray.refiners.arhn import ArhnRefiner


class Flaky(BaseHTTPRequestHandler):
    """Answers 500 (or 429) for the first ``fail`` calls of each prompt, then a completion."""

    calls: dict[str, int] = {}
    fail = 2
    status = 500
    auth: list[str] = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Flaky.auth.append(self.headers.get("Authorization", ""))
        prompt = body["messages"][0]["content"]
        n = Flaky.calls[prompt] = Flaky.calls.get(prompt, 0) + 1
        if "always-400" in prompt:
            return send_json(self, 400, {"error": "bad request"})
        if n <= Flaky.fail:
            return send_json(self, Flaky.status, {"error": "try later"})
        send_json(
            self,
            200,
            {
                "choices": [{"message": {"content": f"ok {prompt}"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2},
            },
        )

    def log_message(self, *args):
        pass


@pytest.fixture
def flaky_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Flaky.calls.clear()
    Flaky.auth.clear()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


@pytest.mark.parametrize("status", [500, 429])
def test_retries_with_backoff_then_succeeds(flaky_server, status, monkeypatch):
    Flaky.status, Flaky.fail = status, 2
    monkeypatch.setenv("MY_TEST_KEY", "sk-test-secret")
    eng = OpenAIEngine(
        EngineConfig(
            kind="openai", base_url=flaky_server, model="m", api_key_env="MY_TEST_KEY", max_attempts=4, max_concurrency=3
        )
    )
    res = eng.generate([ChatRequest(chat(f"p{i}"), max_tokens=5) for i in range(4)])
    assert [r.text for r in res] == [f"ok p{i}" for i in range(4)]
    assert all(r.error is None and r.prompt_tokens == 3 for r in res)
    assert Flaky.calls == {f"p{i}": 3 for i in range(4)}
    assert set(Flaky.auth) == {"Bearer sk-test-secret"}


def test_bounded_retries_give_an_error_result_for_that_request_only(flaky_server):
    Flaky.status, Flaky.fail = 500, 99
    eng = OpenAIEngine(EngineConfig(kind="openai", base_url=flaky_server, model="m", max_attempts=2))
    Flaky.fail = 2
    res = eng.generate([ChatRequest(chat("always-400")), ChatRequest(chat("fine"), max_tokens=5)])
    assert res[0].error and "HTTP 400" in res[0].error
    assert Flaky.calls["always-400"] == 1  # a 4xx is not retried
    assert res[1].error and "HTTP 500" in res[1].error and Flaky.calls["fine"] == 2


def test_missing_api_key_variable_is_a_clear_error():
    with pytest.raises(RuntimeError, match="NOT_SET_ANYWHERE"):
        OpenAIEngine(EngineConfig(kind="openai", base_url="http://127.0.0.1:9/v1", model="m", api_key_env="NOT_SET_ANYWHERE"))


class Thinking(BaseHTTPRequestHandler):
    """A model that thinks aloud first: its reasoning names the wrong document."""

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        text = "<think>doc2 has it: [[[doc2]]]\nwrong\n[[[/doc2]]]</think>\n[[[doc1]]]\nNO_ANSWER\n[[[/doc1]]]\n" + "".join(
            f"[[[doc{i}]]]\nNO_ANSWER\n[[[/doc{i}]]]\n" for i in range(2, 40)
        )
        send_json(self, 200, {"choices": [{"message": {"content": text}, "finish_reason": "stop"}]})

    def log_message(self, *args):
        pass


def test_a_think_block_is_kept_in_the_stored_text_and_stripped_once_by_the_parser():
    """Engines hand back what the model said; method/'s parsers read from the last </think>."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Thinking)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        eng = OpenAIEngine(EngineConfig(kind="openai", base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", model="m"))
        row = validate_row(load_jsonl(RLHN_STAGE1)[0])
        row["negative_passages"] = row["negative_passages"][:3]
        out = ArhnRefiner(eng, lb.MethodOptions(), PromptSet.load()).refine([row])[0]
    finally:
        server.shutdown()
    assert out.row["llm"][0]["stage1_text"].startswith("<think>doc2 has it")
    # the think block's snippet for doc2 is not read: every document said NO_ANSWER after it
    assert [(d["action"], d["reason"]) for d in out.row["decisions"]] == [("keep", "no_answer")] * 3


def test_replay_serves_recordings_and_errors_on_missing(tmp_path):
    rec = tmp_path / "rec.jsonl"
    rec.write_text(json.dumps({"query_id": "q", "stage": 1, "chunk": 0, "text": "hello"}) + "\n")
    eng = ReplayEngine(str(rec))
    res = eng.generate([ChatRequest(chat("x"), ("q", 1, 0)), ChatRequest(chat("x"), ("q", 2, 0))])
    assert res[0].text == "hello" and res[0].error is None
    assert "no recording" in res[1].error and "stage=2" in res[1].error


@pytest.fixture(scope="module")
def vllm_server():
    """``vllm serve`` of the CPU build with the bundled model, on loopback."""
    from arhn_ray.bundled import prepare_model
    from arhn_ray.engines.vllm_engine import cpu_dtype

    port = free_port()
    model = str(prepare_model())
    log = open(os.path.join(os.environ.get("TMPDIR", "/tmp"), f"vllm-serve-{port}.log"), "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            model,
            "--served-model-name",
            "smollm2",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--max-model-len",
            "8192",
            "--enforce-eager",
            "--gpu-memory-utilization",
            "0.2",
            "--dtype",
            cpu_dtype("auto"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vllm serve exited with {proc.returncode}; see {log.name}")
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            break
        except Exception:
            time.sleep(2)
    else:
        proc.kill()
        raise RuntimeError("vllm serve did not come up in 600 s")
    yield url + "/v1"
    proc.terminate()
    proc.wait(timeout=60)
    log.close()


@pytest.mark.vllm
def test_openai_engine_against_vllm_serve_with_verbatim_regex(vllm_server):
    rows = [validate_row(r) for r in load_jsonl(RLHN_STAGE1)[3:4]]
    rows[0]["negative_passages"] = rows[0]["negative_passages"][:4]
    eng = OpenAIEngine(EngineConfig(kind="openai", base_url=vllm_server, model="smollm2", max_concurrency=2, timeout_s=600))
    options = lb.MethodOptions(stage1_constraint="verbatim", stage2_constraint="format")
    out = ArhnRefiner(eng, options, PromptSet.load(), stage1_max_tokens=800).refine(rows)[0]
    assert out.rejected is None, out.rejected
    call = out.row["llm"][0]
    assert call["stage1_prompt_tokens"] > 0 and call["stage1_output_tokens"] > 0
    assert call["stage1_text"].startswith("[[[doc1]]]")
    for d in out.row["decisions"]:
        assert d["grounding"] in (None, "exact")
    if call["stage2_text"] is not None:
        assert call["stage2_text"].startswith("[")


class Unwell(BaseHTTPRequestHandler):
    """Answers each prompt's first call as the prompt says: ``429 Retry-After: 1``, a body cut off
    mid-JSON, a dropped connection, an answer past the client's timeout; then properly. Records when each call came."""

    seen: dict[str, list[float]] = {}

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][0]["content"]
        times = Unwell.seen.setdefault(prompt, [])
        times.append(time.monotonic())
        if len(times) == 1 and prompt == "throttled":
            self.send_response(429)
            self.send_header("Retry-After", "1")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if len(times) == 1 and prompt == "truncated":
            data = b'{"choices": [{"message": {"cont'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        if len(times) == 1 and prompt == "slow":
            time.sleep(1.5)  # past the client's timeout of 0.5 s: the answer comes too late
        if len(times) == 1 and prompt == "dropped":
            self.connection.shutdown(2)  # no answer at all: the connection goes
            return
        send_json(self, 200, {"choices": [{"message": {"content": f"ok {prompt}"}, "finish_reason": "stop"}],
                              "usage": {"prompt_tokens": 3, "completion_tokens": 2}})  # fmt: skip

    def log_message(self, *args):
        pass


def test_retry_after_is_honoured_and_cut_or_dropped_answers_are_asked_again():
    Unwell.seen.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Unwell)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        eng = OpenAIEngine(EngineConfig(kind="openai", base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", model="m",
                                        max_attempts=3, max_concurrency=4, timeout_s=0.5))  # fmt: skip
        res = eng.generate([ChatRequest(chat(p), max_tokens=5) for p in ("throttled", "truncated", "dropped", "slow")])
    finally:
        server.shutdown()
    assert [r.text for r in res] == ["ok throttled", "ok truncated", "ok dropped", "ok slow"] and all(
        r.error is None for r in res
    )
    assert {p: len(t) for p, t in Unwell.seen.items()} == {"throttled": 2, "truncated": 2, "dropped": 2, "slow": 2}
    first, second = Unwell.seen["throttled"]
    assert second - first >= 0.95  # the server's Retry-After: 1, not the 0.5 s of the first backoff step


def test_retry_after_reads_seconds_and_http_dates():
    from email.utils import formatdate

    from arhn_ray.engines.openai_engine import retry_after_s

    assert retry_after_s("3") == 3.0 and retry_after_s(None) is None and retry_after_s("soon") is None
    assert 8 < retry_after_s(formatdate(time.time() + 10, usegmt=True)) <= 10
