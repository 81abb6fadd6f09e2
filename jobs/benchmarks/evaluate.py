"""What `arhn-ray evaluate` costs on this machine, and what `plan` assumes for a cluster.

Trains the three arms (original, refined, topk_percpos) through evaluate's own ``train_arms``
one at a time, then side by side as far as the cluster holds them (one CPU and
``evaluate.worker_memory_gb`` a worker), when it holds more than one. Prints the time per arm per
1,000 training queries (the bundled MiniLM, one Ray Train CPU worker, the CPU defaults), each
worker's peak memory, the side-by-side ratio, and the retrieval of the shipped evaluation set.

    python jobs/benchmarks/evaluate.py [--queries 32]

Training rows are the shipped sample's queries repeated under new ids, each copy's texts marked
with its number so that the no-duplicates batch sampler sees distinct texts (as real rows are); the
same rows for every arm. The time, not the quality, is measured.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def copy(row: dict, i: int) -> dict:
    def mark(passages: list[dict]) -> list[dict]:
        return [{**p, "docid": f"{p['docid']}-{i}", "text": f"{p['text']} ({i})"} for p in passages]

    return {**row, "query_id": f"q{i}", "query": f"{row['query']} ({i})", "positive_passages": mark(row["positive_passages"]),
            "negative_passages": mark(row["negative_passages"])}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=32)
    args = ap.parse_args()
    from dataclasses import replace

    import ray

    from arhn_ray.bundled import resolve
    from arhn_ray.config import load_config
    from arhn_ray.data.layout import OutputLayout
    from arhn_ray.evaluate.beir import load_beir
    from arhn_ray.evaluate.run import SETTINGS, score_set, train_arms
    from arhn_ray.evaluate.train import arm_layout
    from arhn_ray.plan import Assumptions

    ev = load_config(str(ROOT / "conf" / "local.yaml")).evaluate
    sample = [json.loads(line) for line in open(ROOT / "arhn_ray" / "samples" / "rlhn_msmarco.jsonl")]
    rows = [copy(sample[i % len(sample)], i) for i in range(args.queries)]
    arms = lambda: {"original": lambda: iter(rows), "refined": lambda: iter(rows), "topk_percpos": lambda: iter(rows)}  # noqa: E731
    settings = {k: getattr(ev, k) for k in SETTINGS} | {"model": resolve(ev.model)}
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    print(f"cluster: {ray.cluster_resources().get('CPU', 0):g} CPUs; {args.queries} training queries an arm, {ev.negatives} negatives, "
          f"batch {ev.batch_size}, max_seq_len {ev.max_seq_len}, {ev.epochs} epoch(s), model {ev.model}", flush=True)  # fmt: skip
    wall = {}
    for at_once in (1, 0):
        if at_once == 0 and arm_layout(ev, ray.cluster_resources())[1] == 1:
            print(f"side by side: not run, this cluster holds one arm at a time ({ray.cluster_resources()['memory'] / 2**30:.1f} GiB "
                  f"of Ray memory, {ev.worker_memory_gb:g} GiB a worker)")  # fmt: skip
            break
        out = OutputLayout(tempfile.mkdtemp(prefix="arhn-bench-evaluate-"))
        t = time.perf_counter()
        trained, used = train_arms(arms(), settings, replace(ev, arms_at_once=at_once), out)
        wall[used] = time.perf_counter() - t
        arm_s = [m["seconds"] for _, m in trained.values()]
        steps = [m["steps"] for _, m in trained.values()]
        peak = [m["peak_rss_gb"] for _, m in trained.values()]
        print(f"3 arms, {used} at a time: wall {wall[used]:.1f} s; each arm {', '.join(f'{s:.1f}' for s in arm_s)} s "
              f"(Ray Train start included), {'/'.join(map(str, steps))} steps, peak memory {'/'.join(map(str, peak))} GB", flush=True)  # fmt: skip
    serial = wall[1]
    per_1000 = serial / 3 * 1000 / args.queries
    print(f"this CPU: {per_1000:.0f} s per arm per 1,000 training queries, one arm at a time (plan's train_queries_per_cpu_s: "
          f"{1000 / per_1000:.2f})")  # fmt: skip
    side = max(wall)
    if side > 1:
        print(
            f"side by side ({side} at a time) / one at a time, wall: {wall[side] / serial:.2f} (speed-up {serial / wall[side]:.2f}x)"
        )
    beir = load_beir(ROOT / "arhn_ray" / "evaluate" / "msmarco_beir")
    t = time.perf_counter()
    score_set(beir, {"zero_shot": settings["model"], **{a: c for a, (c, _) in trained.items()}}, ev, out)
    print(f"this CPU: retrieval of the shipped set by 4 models ({len(beir.queries)} queries, {beir.corpus_size} passages): "
          f"{time.perf_counter() - t:.1f} s")  # fmt: skip
    a = Assumptions()
    hours = 680_000 / (8 * a.train_queries_per_gpu_s) / 3600
    print(f"cluster (assumed, not measured: {a.train_queries_per_gpu_s:g} training queries/s per A100 for E5-base at batch 128, "
          f"1 + 1 + 7 passages of 512 tokens): ~{hours:.2f} h per arm per epoch for 680K queries on 8 A100s; "
          f"16 A100s train 2 of the 3 arms side by side")  # fmt: skip


if __name__ == "__main__":
    main()
