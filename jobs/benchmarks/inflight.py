"""How full the pipeline keeps each engine: requests in flight per replica, blocking vs async.

The paper config's shape (8 replicas x TP 2 on a local Ray declaring 16 GPUs, fused, the shipped
A100 config's batches) with the replay engine's latency model (arhn_ray/engines/latency.py)
standing in for vLLM: each request is held for the time its recorded tokens take, in at most
``max_num_seqs`` = 256 slots per replica. Every replica traces its requests in flight; this
prints, over each replica's steady state (the middle 80% of its busy span), the time-weighted
mean and 10th percentile of requests in flight as a fraction of max_num_seqs, and the hours per
1,000 queries the model implies on 8 replicas. Goal: mean >= 0.9 in steady state.

The model's assumptions (printed with the figures): per-sequence prefill 100 tokens/s and decode
2.3 tokens/s, chosen so that a full engine of this mix delivers ~4,400 tokens/s per replica, i.e.
~2,200 tokens/s per A100 (GPUStack's published vLLM baseline for Qwen3-32B is 1,840-2,520); a
sequence's speed does not depend on the batch; Stage 1 1,500 prompt tokens and 150-350 output
tokens per call (uniform), Stage 2 600 + 20. Time runs ``--time-scale`` times real time.

The time scale must leave the 2 cores room to feed 8 replicas: everything around the LLM runs
at ~200 rows/s here, and full engines at scale s ask for ~15/s rows per second, so s below ~0.1
measures this machine's CPU, not the pipeline (0.005 and 0.02 did). The blocking mode runs on
the first ``--blocking-queries`` rows: it is ~5x slower, and its depth needs only a few batches.

    python jobs/benchmarks/inflight.py [--queries 8192] [--time-scale 0.2]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "conf" / "qwen3-32b-a100x16.yaml"


def assumed() -> dict:
    """Per-sequence rates (assumed), and the slots of the config it models (engine.max_num_seqs)."""
    from arhn_ray.config import load_config

    slots = load_config(str(CONFIG)).engine.max_num_seqs
    if not slots:
        raise SystemExit(f"{CONFIG} sets no engine.max_num_seqs: the model needs the engine's slots")
    return {"prefill_tokens_per_s": 100.0, "decode_tokens_per_s": 2.3, "max_num_seqs": slots}


def make_data(folder: Path, n: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    rec = folder.parent / "rec.jsonl"
    with open(folder / "queries.jsonl", "w") as f, open(rec, "w") as r:
        for i in range(n):
            qid = f"q{i}"
            negs = [{"docid": f"{qid}-n{k}", "title": "", "text": f"Fact {k} of query {i}. Nothing else."} for k in range(10)]
            f.write(json.dumps({"query_id": qid, "query": f"fact {i}?", "positive_passages": [{"docid": f"{qid}-p", "title": "", "text": f"The answer {i}."}],
                                "negative_passages": negs}) + "\n")  # fmt: skip
            snippets = [f"The answer {i}."] + [f"Fact {k} of query {i}." if k % 3 == 0 else None for k in range(10)]
            blocks = "\n\n".join(f"[[[doc{d}]]]\n{s or 'NO_ANSWER'}\n[[[/doc{d}]]]" for d, s in enumerate(snippets, 1))
            r.write(
                json.dumps(
                    {
                        "query_id": qid,
                        "stage": 1,
                        "chunk": 0,
                        "text": blocks,
                        "prompt_tokens": 1500,
                        "output_tokens": rng.randint(150, 350),
                    }
                )
                + "\n"
            )
            r.write(
                json.dumps(
                    {
                        "query_id": qid,
                        "stage": 2,
                        "chunk": 0,
                        "text": "[1] > [2] > [3] > [4] > [5]",
                        "prompt_tokens": 600,
                        "output_tokens": 20,
                    }
                )
                + "\n"
            )
    return rec


def depth(trace_dir: Path, slots: int, time_scale: float) -> dict:
    """Time-weighted mean and p10 of requests in flight per replica over its steady state."""
    means, p10s, spans = [], [], []
    for path in trace_dir.glob("replica-*.jsonl"):
        points = sorted(tuple(json.loads(line)) for line in path.read_text().splitlines() if line)
        if len(points) < 10:
            continue
        t0, t1 = points[0][0], points[-1][0]
        lo, hi = t0 + 0.1 * (t1 - t0), t1 - 0.1 * (t1 - t0)
        samples, k, level = [], 0, 0
        step = (hi - lo) / 2000
        for j in range(2000):
            t = lo + j * step
            while k < len(points) and points[k][0] <= t:
                level = points[k][1]
                k += 1
            samples.append(level / slots)
        samples.sort()
        means.append(sum(samples) / len(samples))
        p10s.append(samples[len(samples) // 10])
        spans.append((t1 - t0) / time_scale)
    return {"replicas": len(means), "mean_in_flight": round(sum(means) / len(means), 3), "p10_in_flight": round(sum(p10s) / len(p10s), 3),
            "model_hours": max(spans) / 3600}  # fmt: skip


def run_mode(
    name: str, extra: list[str], data: Path, rec: Path, tmp: Path, n: int, time_scale: float, limit: int | None = None
) -> dict:
    from arhn_ray.config import load_config
    from arhn_ray.pipeline.job import run

    trace = tmp / f"trace-{name}"
    latency = {**assumed(), "time_scale": time_scale, "trace_dir": str(trace)}
    overrides = [f"input.path={data}", f"output.path={tmp / ('out-' + name)}", "engine.kind=replay", f"engine.replay_path={rec}",
                 "truncation.tokenizer=null", f"engine.replay_latency={json.dumps(latency)}", "pipeline.progress=false",
                 # these rows are ~1.3 KB (real ones ~40 KB): blocks of ~a batch and parts of 256 rows spread them over 8 replicas
                 "pipeline.block_bytes=65536", "input.part_rows=256", "pipeline.read_concurrency=4", *extra]  # fmt: skip
    if limit:
        overrides.append(f"input.limit={limit}")
        n = limit
    stats = run(load_config(str(CONFIG), overrides))
    assert stats["overall"]["queries"] == n, stats["overall"]
    d = depth(trace, latency["max_num_seqs"], time_scale)
    return {
        **{k: v for k, v in d.items() if k != "model_hours"},
        "model_hours_per_1000_queries": round(d["model_hours"] * 1000 / n, 3),
    }


def main() -> None:
    import ray

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=8192)
    ap.add_argument("--blocking-queries", type=int, default=2048)
    ap.add_argument("--time-scale", type=float, default=0.2)
    args = ap.parse_args()
    ray.init(address="local", num_cpus=24, num_gpus=16, include_dashboard=False, log_to_driver=False)
    tmp = Path(tempfile.mkdtemp(prefix="arhn-inflight-"))
    rec = make_data(tmp / "in", args.queries)
    print(json.dumps({"assumed": assumed(), "time_scale": args.time_scale, "queries": args.queries}), flush=True)
    modes = [
        (
            "blocking, batches of 64",
            ["pipeline.batch_size=64", "engine.async_engine=false", "pipeline.max_concurrent_batches=1"],
            args.blocking_queries,
        ),
        ("async, 8 x 64 rows", ["pipeline.batch_size=64", "engine.async_engine=true", "pipeline.max_concurrent_batches=8"], None),
        (
            "async, 16 x 64 rows",
            ["pipeline.batch_size=64", "engine.async_engine=true", "pipeline.max_concurrent_batches=16"],
            None,
        ),
        ("shipped A100 config", [], None),
    ]
    for name, extra, limit in modes:
        slug = "".join(c if c.isalnum() else "-" for c in name)
        result = run_mode(slug, extra, tmp / "in", rec, tmp, args.queries, args.time_scale, limit)
        print(json.dumps(result | {"label": name}), flush=True)


if __name__ == "__main__":
    main()
