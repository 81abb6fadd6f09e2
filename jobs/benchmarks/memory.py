"""Peak memory of the driver and of each worker for 1x and 10x rows (replay engine), side by side.

The data comes as shards of the same size (as real datasets do): 1x is ``--shards`` shards,
10x is ten times as many. RSS is sampled every 0.1 s over the driver process and every
process below it (the local Ray cluster: raylet, workers, replicas). Goal: the 10x peaks at
most 1.2x the 1x peaks.

    python jobs/benchmarks/memory.py [--shards 2 --rows-per-shard 250]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
WORDS = "the of answer passage retrieval query negative positive model data train label snippet rank".split()


def passage(rng, i: int) -> dict:
    text = " ".join(rng.choice(WORDS) for _ in range(90)) + f" Fact number {i}."
    return {"docid": f"d{i}-{rng.randrange(10**9)}", "title": "", "text": text}


def make_data(folder: Path, shards: int, rows: int, seed: int = 0) -> Path:
    import random

    rng = random.Random(seed)
    folder.mkdir(parents=True)
    rec = open(folder.parent / f"{folder.name}-rec.jsonl", "w")
    for s in range(shards):
        with open(folder / f"shard-{s:04d}.jsonl", "w") as f:
            for r in range(rows):
                qid = f"s{s}r{r}"
                row = {"query_id": qid, "query": "what is fact number 3?", "positive_passages": [passage(rng, 0)],
                       "negative_passages": [passage(rng, i) for i in range(1, 11)]}  # fmt: skip
                f.write(json.dumps(row) + "\n")
                blocks = "\n\n".join(
                    f"[[[doc{k}]]]\nFact number {k - 1}.\n[[[/doc{k}]]]"
                    if k % 3 == 1
                    else f"[[[doc{k}]]]\nNO_ANSWER\n[[[/doc{k}]]]"
                    for k in range(1, 12)
                )
                n = 1 + sum(1 for k in range(2, 12) if k % 3 == 1)
                rec.write(json.dumps({"query_id": qid, "stage": 1, "chunk": 0, "text": blocks}) + "\n")
                rec.write(
                    json.dumps({"query_id": qid, "stage": 2, "chunk": 0, "text": " > ".join(f"[{k}]" for k in range(n, 0, -1))})
                    + "\n"
                )
    rec.close()
    return folder.parent / f"{folder.name}-rec.jsonl"


def measure(data: Path, rec: Path, out: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [sys.executable, "-m", "arhn_ray", "refine", str(ROOT / "conf" / "replay.yaml"), f"input.path={data}",
           f"output.path={out}", f"engine.replay_path={rec}", "pipeline.batch_size=32", "pipeline.progress=false"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peaks = {"driver": 0, "workers": {}, "total": 0}
    done = threading.Event()

    def sample():
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                total = root.memory_info().rss
                peaks["driver"] = max(peaks["driver"], total)
                for child in root.children(recursive=True):
                    try:
                        name = " ".join(child.cmdline()[:1])
                        rss = child.memory_info().rss
                    except psutil.Error:
                        continue
                    total += rss
                    key = "replica" if "RefineStage" in " ".join(child.cmdline()) else os.path.basename(name)[:30]
                    peaks["workers"][key] = max(peaks["workers"].get(key, 0), rss)
                peaks["total"] = max(peaks["total"], total)
            except psutil.Error:
                pass
            time.sleep(0.1)

    t = threading.Thread(target=sample)
    t.start()
    t0 = time.perf_counter()
    code = proc.wait()
    done.set()
    t.join()
    stats = json.loads((out / "stats.json").read_text())
    return {
        "code": code,
        "wall_s": time.perf_counter() - t0,
        "rows": stats["overall"]["queries"] + stats["overall"]["rejected"],
        **peaks,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--rows-per-shard", type=int, default=250)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="arhn-mem-"))
    results = {}
    for scale in (1, 10):
        data = tmp / f"x{scale}"
        rec = make_data(data, args.shards * scale, args.rows_per_shard, seed=scale)
        results[scale] = measure(data, rec, tmp / f"out{scale}")
    mb = 1024 * 1024
    a, b = results[1], results[10]
    print(
        f"rows: 1x = {a['rows']}, 10x = {b['rows']} (exit codes {a['code']}, {b['code']}); wall {a['wall_s']:.0f} s vs {b['wall_s']:.0f} s"
    )
    print(
        f"driver peak RSS:   1x {a['driver'] / mb:7.0f} MB   10x {b['driver'] / mb:7.0f} MB   ratio {b['driver'] / a['driver']:.2f}"
    )
    for key in sorted(set(a["workers"]) & set(b["workers"])):
        ra, rb = a["workers"][key], b["workers"][key]
        if ra and rb:
            print(f"{key:<30} 1x {ra / mb:7.0f} MB   10x {rb / mb:7.0f} MB   ratio {rb / ra:.2f}")
    print(
        f"all processes:     1x {a['total'] / mb:7.0f} MB   10x {b['total'] / mb:7.0f} MB   ratio {b['total'] / a['total']:.2f}"
    )


if __name__ == "__main__":
    main()
