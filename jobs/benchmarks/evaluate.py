"""What `arhn-ray evaluate` costs: one arm's training time per 1,000 training queries on this
machine (the bundled MiniLM, one Ray Train CPU worker, the CPU defaults), and the retrieval of the
shipped evaluation set; then what a cluster arm would take, from a stated assumption.

    python jobs/benchmarks/evaluate.py [--queries 100]

Training rows are the shipped sample's 20 queries repeated under new ids (their text repeats:
the time, not the quality, is measured).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# assumed, not measured (no GPU here): E5-base fine-tuning at 512 tokens, batch 128 of 1 + 1 + 7 passages
# and a query, ~120 training examples a second per A100 (forward and backward of ~1,100 sequences a second)
ASSUMED_A100_EXAMPLES_PER_S = 120.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=100)
    args = ap.parse_args()
    import ray

    from arhn_ray.config import load_config
    from arhn_ray.engines.teacher import resolve_teacher
    from arhn_ray.evaluate.beir import load_beir
    from arhn_ray.evaluate.retrieve import retrieve
    from arhn_ray.evaluate.run import SETTINGS
    from arhn_ray.evaluate.train import examples, train_arm

    ev = load_config(str(ROOT / "conf" / "local.yaml")).evaluate
    sample = [json.loads(line) for line in open(ROOT / "arhn_ray" / "samples" / "rlhn_msmarco.jsonl")]
    rows = [{**sample[i % len(sample)], "query_id": f"q{i}"} for i in range(args.queries)]
    train = examples(rows, ev.negatives, ev.seed, ev.query_prefix, ev.passage_prefix)
    settings = {k: getattr(ev, k) for k in SETTINGS} | {"model": resolve_teacher(ev.model)}
    ray.init(include_dashboard=False, log_to_driver=False)
    tmp = Path(tempfile.mkdtemp(prefix="arhn-bench-evaluate-"))
    t = time.perf_counter()
    metrics = train_arm("bench", train, settings, str(tmp / "ray"), str(tmp / "model"))
    arm_s = time.perf_counter() - t
    beir = load_beir(ROOT / "arhn_ray" / "evaluate" / "msmarco_beir")
    t = time.perf_counter()
    retrieve(str(tmp / "model"), beir, k=ev.top_k, max_seq_len=ev.max_seq_len)
    retrieval_s = time.perf_counter() - t
    per_1000 = arm_s * 1000 / len(train)
    print(f"this CPU: one arm, {len(train)} examples ({ev.negatives} negatives, batch {ev.batch_size}, max_seq_len {ev.max_seq_len}), "
          f"{metrics['steps']} steps: {arm_s:.1f} s (Ray Train start included) = {per_1000:.0f} s per 1,000 training queries")
    print(f"this CPU: retrieval of the shipped set ({len(beir.queries)} queries, {len(beir.corpus)} passages): {retrieval_s:.1f} s")
    cluster = 680_000 / (8 * ASSUMED_A100_EXAMPLES_PER_S) / 3600
    print(f"cluster (assumed {ASSUMED_A100_EXAMPLES_PER_S:g} examples/s per A100, 8 A100s an arm): ~{cluster:.2f} h per arm per epoch "
          f"for 680K queries; 3 arms side by side on 24 GPUs, or one after another on 8")


if __name__ == "__main__":
    main()
