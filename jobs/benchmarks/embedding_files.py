"""How many embedding files evaluate writes for a 200K-passage corpus, with the 1 MiB blocks a refine
run used to leave in Ray Data's context (before) and with evaluate's at least 100K rows a file
(after), side by side. Synthetic embeddings, four arms of 768 dimensions (E5-base, fp32), as
evaluate writes them: no model runs, only the writing is measured.

    python jobs/benchmarks/embedding_files.py [--rows 200000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    import ray
    import ray.data

    from arhn_ray.evaluate.retrieve import write_embeddings

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    args = ap.parse_args()
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.target_max_block_size = 1 << 20  # what a refine run in the same process left behind
    arms = ("zero_shot", "original", "refined", "topk_percpos")

    def embed(batch):
        n = len(batch["id"])
        return {"_id": batch["id"].astype(str), **{a: np.zeros((n, 768), np.float32) for a in arms}}

    for name, write in (("before (a file a block)", lambda ds, t, fs: ds.write_parquet(t, filesystem=fs)),
                        ("after (min_rows_per_file)", write_embeddings)):  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            ds = ray.data.range(args.rows, override_num_blocks=32).map_batches(embed, batch_size=2000)
            started = time.perf_counter()
            write(ds, tmp, None)
            files = list(Path(tmp).glob("*.parquet"))
            print(f"{name}: {len(files):,} files for {args.rows:,} rows x 4 arms x 768 dims, {time.perf_counter() - started:.0f} s",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
