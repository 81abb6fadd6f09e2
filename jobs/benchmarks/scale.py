"""The paper's layout in small: parts as the unit of work, memory and resume, measured side by side.

Seven input files, one holding 72% of the rows (as MS MARCO holds 72% of the BGE queries),
through the real job (local Ray, Ray Data, the openai engine) against a loopback
OpenAI-compatible server that stands in for the LLM, answers at once and counts every call.
Prints, each measured in this run:

1. rows/s of everything around the LLM over the whole layout (--rows, default 100,000 queries);
2. peak summed RSS of the job's processes for one 20,000-query file against one 2,000-query file
   (goal <= 1.3x), and per process;
3. LLM calls over a run SIGKILLed (driver and its local Ray) at 60% of one 30,000-query file and
   its rerun, per query (goal <= 1.15), and the same for the whole layout killed at 50%;
4. bytes read from S3 (moto's server on loopback, through a counting proxy) per input byte (goal <= 1.2);
5. the output's size (refined/ and rejected/ parquet) per input byte and per 1,000 rows, for the
   layout (section 1) and for one file at 1x and 10x (section 2): a self-contained output keeps
   every input passage once (kept, relabeled or in ``removed_passages``), so it grows with the
   input and stays under it (goal: output bytes / input bytes <= 1, the same at 1x and 10x).

    python jobs/benchmarks/scale.py [--rows 100000] [--skip-s3] [--sections 12345]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
WORDS = "the of answer passage retrieval query negative positive model data train label snippet rank".split()
LAYOUT = {"msmarco": 0.72, "nq": 0.09, "hotpotqa": 0.07, "fever": 0.05, "trivia": 0.03, "squad": 0.02, "eli5": 0.02}


def make_layout(folder: Path, total: int, shares: dict[str, float], seed: int = 0) -> int:
    """JSONL for the large file (BGE's MS MARCO is JSONL), parquet with 1,000-row groups for the rest."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    made = 0
    for name, share in shares.items():
        n = max(1, round(total * share))
        rows = ({"query_id": f"{name}-{i}", "query": f"what is fact {i}?", "subset": name,
                 "positive_passages": [{"docid": f"{name}-{i}-p", "title": "", "text": _text(rng, i)}],
                 "negative_passages": [{"docid": f"{name}-{i}-n{k}", "title": "", "text": _text(rng, k)} for k in range(4)]}
                for i in range(n))  # fmt: skip
        if name == "msmarco" or len(shares) == 1:
            with open(folder / f"{name}.jsonl", "w") as f:
                for row in rows:
                    f.write(json.dumps(row) + "\n")
        else:
            pq.write_table(pa.Table.from_pylist(list(rows)), folder / f"{name}.parquet", row_group_size=1000)
        made += n
    return made


def _text(rng: random.Random, i: int) -> str:
    return f"Fact {i} is here. " + " ".join(rng.choice(WORDS) for _ in range(40)) + "."


class FakeLLM(BaseHTTPRequestHandler):
    """Stage 1: the anchor positive's first sentence, NO_ANSWER for every negative (so no Stage 2
    call: one call per query); counts every call."""

    protocol_version = "HTTP/1.1"  # keep-alive: the engine's client reuses its connections
    calls = 0
    lock = threading.Lock()

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with FakeLLM.lock:
            FakeLLM.calls += 1
        prompt = body["messages"][-1]["content"]
        docs = prompt.count("\ndoc") + prompt.startswith("doc")
        first = prompt.split("doc1:\n", 1)[-1].split(".", 1)[0] + "."
        text = "\n\n".join(f"[[[doc{k}]]]\n{first if k == 1 else 'NO_ANSWER'}\n[[[/doc{k}]]]" for k in range(1, max(2, docs) + 1))
        data = json.dumps({"choices": [{"message": {"content": text}, "finish_reason": "stop"}],
                           "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(text) // 4}}).encode()  # fmt: skip
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def serve(handler) -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"


def job(data: str, out: Path, base_url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "arhn_ray", "refine", str(ROOT / "conf" / "openai-endpoint.yaml"), f"input.path={data}",
            f"output.path={out}", f"engine.base_url={base_url}", "engine.api_key_env=null", "engine.model=fake",
            "engine.max_concurrency=32", "engine.replicas=1", "pipeline.batch_size=64", "pipeline.progress=false", *extra]  # fmt: skip


def run_measured(cmd: list[str], kill_at_calls: int | None = None) -> dict:
    """Runs the job in its own session; samples summed and per-process RSS every 0.2 s; SIGKILLs
    the whole session once the LLM has been called ``kill_at_calls`` times."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    peaks: dict = {"total": 0, "by_kind": {}}
    calls0, t0 = FakeLLM.calls, time.perf_counter()
    killed = False
    while proc.poll() is None:
        try:
            procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        except psutil.Error:
            procs = []
        total = 0
        for p in procs:
            try:
                rss, title = p.memory_info().rss, " ".join(p.cmdline())
            except psutil.Error:
                continue
            total += rss
            kind = (
                "driver"
                if p.pid == proc.pid
                else "replica"
                if "RefineStage" in title
                else "read"
                if "read_parts" in title
                else "ray"
            )
            peaks["by_kind"][kind] = max(peaks["by_kind"].get(kind, 0), rss)
        peaks["total"] = max(peaks["total"], total)
        if kill_at_calls is not None and FakeLLM.calls - calls0 >= kill_at_calls:
            for p in procs:  # the driver and every process below it (raylet, workers): a whole node lost
                try:
                    p.kill()
                except psutil.Error:
                    pass
            os.killpg(proc.pid, signal.SIGKILL)
            psutil.wait_procs(procs, timeout=30)
            killed = True
            break
        time.sleep(0.2)
    proc.wait()
    return {
        "code": proc.returncode,
        "killed": killed,
        "wall_s": time.perf_counter() - t0,
        "calls": FakeLLM.calls - calls0,
        **peaks,
    }


def count_proxy(target_port: int) -> tuple[int, dict]:
    """A TCP proxy on loopback that counts the bytes the S3 server sends to its clients."""
    counted = {"down": 0}
    listener = socket.create_server(("127.0.0.1", 0))

    def pipe(src, dst, count: bool) -> None:
        try:
            while chunk := src.recv(1 << 16):
                if count:
                    counted["down"] += len(chunk)
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def accept() -> None:
        while True:
            client, _ = listener.accept()
            upstream = socket.create_connection(("127.0.0.1", target_port))
            threading.Thread(target=pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=pipe, args=(upstream, client, True), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener.getsockname()[1], counted


def s3_bytes_per_input_byte(folder: Path, base_url: str, tmp: Path) -> dict:
    import boto3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    moto = subprocess.Popen(
        ["moto_server", "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        time.sleep(3)
        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                              aws_access_key_id="bench", aws_secret_access_key="bench-secret")  # fmt: skip
        client.create_bucket(Bucket="bench")
        size = 0
        for f in sorted(folder.iterdir()):
            client.upload_file(str(f), "bench", f"in/{f.name}")
            size += f.stat().st_size
        proxy, counted = count_proxy(port)
        so = json.dumps({"key": "bench", "secret": "bench-secret",
                         "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{proxy}", "region_name": "us-east-1"}})  # fmt: skip
        res = run_measured(job("s3://bench/in/", tmp / "s3-out", base_url, f"input.storage_options={so}"))
        return {"input_bytes": size, "read_bytes": counted["down"], "ratio": counted["down"] / size, "code": res["code"]}
    finally:
        moto.terminate()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000, help="queries in the 7-file layout")
    ap.add_argument(
        "--memory-rows", type=int, default=2_000, help="the small file of the memory comparison; the large one is 10x"
    )
    ap.add_argument("--kill-rows", type=int, default=30_000, help="the one file killed at 60%% and run again")
    ap.add_argument("--skip-s3", action="store_true")
    ap.add_argument("--skip-layout-kill", action="store_true", help="kill only the 30,000-query file, not the whole layout")
    ap.add_argument("--sections", default="1234", help="which of the four measures to run, e.g. 34")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="arhn-scale-"))
    _, url = serve(FakeLLM)
    report = {}

    layout = tmp / "layout"
    n = make_layout(layout, args.rows, LAYOUT)
    if "1" in args.sections:
        full = run_measured(job(str(layout), tmp / "full", url))
        report["1. around the LLM"] = {"queries": n, "wall_s": round(full["wall_s"], 1), "rows_per_s": round(n / full["wall_s"], 1),
                                       "llm_calls_per_query": round(full["calls"] / n, 3)}  # fmt: skip
        report["5. output size, layout"] = output_size(layout, tmp / "full", n)
        print(json.dumps(report, indent=2), flush=True)
    if "2" in args.sections:
        memory(args.memory_rows, tmp, url, report)
    if "3" in args.sections:
        kills(args, layout, n, tmp, url, report)
    if "4" in args.sections and not args.skip_s3:
        s3_data = tmp / "s3-layout"
        make_layout(s3_data, max(7_000, args.rows // 5), LAYOUT, seed=4)
        report["4. S3 bytes read per input byte"] = s3_bytes_per_input_byte(s3_data, url, tmp)
    print(json.dumps(report, indent=2), flush=True)


def memory(rows: int, tmp: Path, url: str, report: dict) -> None:
    small, large = tmp / "one-2k", tmp / "one-20k"
    make_layout(small, rows, {"msmarco": 1.0}, seed=1)
    make_layout(large, 10 * rows, {"msmarco": 1.0}, seed=2)
    a = run_measured(job(str(small), tmp / "out-2k", url))
    b = run_measured(job(str(large), tmp / "out-20k", url))
    report["2. memory, one file"] = {"rows": [rows, 10 * rows], "rss_small_mb": round(a["total"] / 2**20), "rss_10x_mb": round(b["total"] / 2**20),
                                     "ratio": round(b["total"] / a["total"], 3),
                                     "per_process_ratio": {k: round(b["by_kind"][k] / a["by_kind"][k], 3) for k in a["by_kind"] if k in b["by_kind"]}}  # fmt: skip
    one, ten = output_size(small, tmp / "out-2k", rows), output_size(large, tmp / "out-20k", 10 * rows)
    report["5. output size, one file"] = {"1x": one, "10x": ten,
                                          "growth_10x": round(ten["output_bytes"] / one["output_bytes"], 3)}  # fmt: skip
    print(json.dumps(report, indent=2), flush=True)


def output_size(data: Path, out: Path, rows: int) -> dict:
    """The output's rows (refined/ and rejected/ parquet) against the input's files, in bytes."""
    size = lambda folder, pattern: sum(f.stat().st_size for f in folder.glob(pattern))  # noqa: E731
    written = size(out, "refined/*/*.parquet") + size(out, "rejected/*/*.parquet")
    read = size(data, "**/*.*")
    return {"input_bytes": read, "output_bytes": written, "output_per_input_byte": round(written / read, 3),
            "output_mb_per_1000_rows": round(written / 2**20 / rows * 1000, 3), "input_mb_per_1000_rows": round(read / 2**20 / rows * 1000, 3)}  # fmt: skip


def kills(args, layout: Path, n: int, tmp: Path, url: str, report: dict) -> None:
    one = tmp / "one-30k"
    queries = make_layout(one, args.kill_rows, {"msmarco": 1.0}, seed=3)
    runs = [(f"one {queries:,}-query file killed at 60%", one, queries, 0.6)]
    if not args.skip_layout_kill:
        runs.append(("7-file layout killed at 50%", layout, n, 0.5))
    for label, data, rows, at in runs:
        out = tmp / f"killed-{at}"
        first = run_measured(job(str(data), out, url), kill_at_calls=int(rows * at))
        second = run_measured(job(str(data), out, url))
        stats = json.loads((out / "stats.json").read_text())
        report[f"3. {label}"] = {"queries": rows, "calls_killed_run": first["calls"], "calls_rerun": second["calls"],
                                 "calls_per_query": round((first["calls"] + second["calls"]) / rows, 4),
                                 "rows_out": stats["overall"]["queries"] + stats["overall"]["rejected"]}  # fmt: skip
        print(json.dumps(report, indent=2), flush=True)


if __name__ == "__main__":
    main()
