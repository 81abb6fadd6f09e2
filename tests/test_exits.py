"""No traceback, no silent success: each way a user's command fails whole ends in one line on the
terminal and an exit code of its own (docs/reliability.md lists them), run as the user runs it,
``python -m arhn_ray`` in a subprocess of the tree under test."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import ROOT, SAMPLES, load_jsonl

from arhn_ray.data.records import InvalidRow, validate_row

REPLAY = str(ROOT / "conf" / "replay.yaml")


def cli(args: list[str], tmp_path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | (env or {})
    return subprocess.run([sys.executable, "-m", "arhn_ray", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=tmp_path, env=environ)  # fmt: skip


def no_traceback(done: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout, done.stderr[-3000:]


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: a connection is refused


def test_hf_input_without_network_is_one_line_and_exit_6(tmp_path):
    env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}"}
    done = cli(["refine", REPLAY, "input.path=hf://datasets/rlhn/rlhn-680K", f"output.path={tmp_path / 'out'}",
                f"engine.replay_path={tmp_path}"], tmp_path, env)  # fmt: skip
    assert done.returncode == 6, done.stderr
    no_traceback(done)
    assert "arhn-ray: network: ConnectionRefusedError" in done.stderr and "HF_HUB_OFFLINE=1" in done.stderr


class _Broken(http.server.BaseHTTPRequestHandler):
    """A proxy in front of the Hub that answers every request with a bare status, no Hub error code."""

    status = 502

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET  # noqa: N815

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("status", [502, 404])
def test_a_hub_http_error_without_an_error_code_is_one_line(tmp_path, status):
    handler = type("Broken", (_Broken,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}",
               "HF_HUB_ETAG_TIMEOUT": "2", "HF_HUB_DOWNLOAD_TIMEOUT": "2"}  # fmt: skip
        done = cli(["refine", REPLAY, "input.path=hf://datasets/rlhn/rlhn-680K", f"output.path={tmp_path / 'out'}",
                    f"engine.replay_path={tmp_path}"], tmp_path, env)  # fmt: skip
    finally:
        server.shutdown()
    no_traceback(done)
    lines = [line for line in done.stderr.splitlines() if line.startswith("arhn-ray: ") and "refining" not in line]
    # a 404 the Hub library reads as a missing repository (2, named); anything else is the network's (6)
    assert done.returncode in (2, 6) and len(lines) == 1, done.stderr
    assert "rlhn/rlhn-680K" in lines[0] or "network:" in lines[0], lines


def test_stage_names_the_model_it_could_not_fetch(tmp_path):
    env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}", "HF_HOME": str(tmp_path / "hf")}
    done = cli(["stage", str(ROOT / "conf" / "qwen3-32b-a100x16.yaml")], tmp_path, env)
    assert done.returncode == 6, done.stderr
    no_traceback(done)
    assert "could not fetch Qwen/Qwen3-32B (engine.model)" in done.stderr


def test_an_empty_input_says_so_and_starts_no_engine(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "empty.jsonl").write_text("")
    done = cli(["refine", REPLAY, f"input.path={tmp_path / 'in'}", f"output.path={tmp_path / 'out'}",
                f"engine.replay_path={tmp_path}"], tmp_path)  # fmt: skip
    assert done.returncode == 2, done.stderr
    no_traceback(done)
    assert "no rows to refine (1 empty file(s)); no engine was started" in done.stderr
    log = next((tmp_path / "out" / "logs").glob("refine-*.log")).read_text()
    assert "Started a local Ray instance" not in log  # nothing was started for zero rows


def test_a_row_without_the_negatives_key_is_rejected_naming_it():
    row = load_jsonl(SAMPLES / "rlhn_msmarco.jsonl")[0]
    assert validate_row({**row, "negative_passages": []})["negative_passages"] == []  # none: an empty list
    with pytest.raises(InvalidRow) as e:
        validate_row({k: v for k, v in row.items() if k != "negative_passages"})
    assert e.value.field == "negative_passages"


@pytest.mark.ray
@pytest.mark.parametrize("column", ["negative_passages", "query"])
def test_a_parquet_without_a_required_column_rejects_every_row_and_exits_3(tmp_path, column):
    rows = [{k: v for k, v in r.items() if k != column} for r in load_jsonl(SAMPLES / "rlhn_msmarco.jsonl")[:3]]
    (tmp_path / "in").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in" / "shard.parquet")
    out = tmp_path / "out"
    done = cli(["refine", REPLAY, f"input.path={tmp_path / 'in'}", f"output.path={out}", f"engine.replay_path={tmp_path}"],
               tmp_path)  # fmt: skip
    assert done.returncode == 3, done.stdout + done.stderr
    no_traceback(done)
    assert f"every row was rejected (3; most often: invalid {column})" in done.stderr
    rejected = pq.read_table(out / "rejected").to_pylist()
    assert len(rejected) == 3 and {r["field"] for r in rejected} == {column}  # nothing lost: each row named


@pytest.mark.ray
def test_ctrl_c_during_a_run_is_exit_130_and_the_rerun_resumes(tmp_path):
    """SIGINT as a terminal sends it, while the job runs: one line saying how to go on, exit 130."""
    from test_pipeline import dataset

    data, recordings, _ = dataset(tmp_path)
    args = [sys.executable, "-m", "arhn_ray", "refine", REPLAY, f"input.path={data}", f"engine.replay_path={recordings}",
            f"output.path={tmp_path / 'out'}", "method.negatives_per_query=null", "engine.replay_delay_s=4",
            "pipeline.batch_size=1"]  # fmt: skip
    # 4 rows a batch each, 4 s a batch: the run is still going when the interrupt comes
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    log_dir = tmp_path / "out" / "logs"
    deadline = time.time() + 120
    while time.time() < deadline:  # the job has started its Ray and reads the parts
        logs = list(log_dir.glob("refine-*.log")) if log_dir.is_dir() else []
        if logs and "Started a local Ray instance" in logs[0].read_text(errors="replace"):
            break
        time.sleep(0.3)
    time.sleep(3.0)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert "arhn-ray: interrupted: rerun the same command to resume" in stderr
    assert "Traceback" not in stderr
    again = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    refined = pq.read_table(tmp_path / "out" / "refined").num_rows
    assert refined == 3  # every row once, after the interrupt and the rerun
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["overall"]["queries"] == 3
