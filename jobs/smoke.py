"""The one-GPU smoke run: the first thing to run on a new cluster, before 16 GPUs for a day.

Takes the shipped sample through the real path (Ray Data, one vLLM replica on one GPU, a small
Qwen3, conf/smoke-1gpu.yaml) and checks what a real run needs: every input row came out exactly
once, none rejected, every snippet verbatim, a Stage 2 ranking parsed. Exit 0 means PASS.

    ray job submit --address http://HEAD:8265 --working-dir . --runtime-env jobs/runtime_env.yaml \
        -- python jobs/smoke.py output.path=s3://my-bucket/arhn-smoke/

``--cpu`` runs the same config on CPU with the bundled SmolLM2 (one query per sample file):
CI runs it that way, so this script and its config cannot rot.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

CPU = ["engine.model=bundled:smollm2", "engine.device=cpu", "engine.num_cpus=1", "engine.dtype=auto",
       "engine.enforce_eager=true", "engine.gpu_memory_utilization=0.25", "truncation.tokenizer=bundled:minilm",
       "input.limit=1", "stage1.max_tokens=512"]  # fmt: skip


def input_ids(cfg) -> Counter:
    """The query ids of every input row (a rejected one's as its raw row has it), read the way the job reads them."""
    from arhn_ray.data.parts import parts_to_run
    from arhn_ray.data.rows import read_rows

    ids: Counter = Counter()
    parts, _ = parts_to_run(cfg.input.path, cfg.input.part_rows, cfg.input.storage_options, cfg.input.limit, done={})
    for part in parts:
        for r in read_rows(part, cfg.input.format, cfg.input.max_passage_chars, cfg.input.storage_options):
            ids[(r.row or (r.raw if isinstance(r.raw, dict) else {})).get("query_id")] += 1
    return ids


def check(cfg, stats: dict) -> list[str]:
    """What is wrong with the run's output; empty when the smoke run passed."""
    from arhn_ray.data.layout import KINDS, OutputLayout

    out: Counter = Counter()
    snippets, grounding, ranked = 0, Counter(), 0
    layout = OutputLayout(cfg.output.path, cfg.output.storage_options)
    for kind in KINDS:
        for row in layout.read_rows(kind):
            out[row["query_id"]] += 1
            for d in row.get("decisions") or []:
                if d["snippet"] is not None:
                    snippets += 1
                    grounding[d["grounding"]] += 1
            ranked += sum(1 for c in row.get("llm") or [] if c["stage2_status"] in ("ok", "repaired"))
    expected = input_ids(cfg)
    problems = []
    if out != expected:
        problems.append(f"rows in and out differ: missing {sorted(expected - out)[:5]}, extra {sorted(out - expected)[:5]}")
    if stats["overall"]["rejected"]:
        problems.append(f"{stats['overall']['rejected']} rows rejected: {stats['rejected_reasons']}")
    if not snippets:
        problems.append("no snippet at all: Stage 1 answered NO_ANSWER everywhere")
    if set(grounding) - {"exact"}:
        problems.append(f"snippets not verbatim under the verbatim constraint: {dict(grounding)}")
    if not ranked:
        problems.append("no Stage 2 ranking was parsed")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu", action="store_true", help="the bundled model on CPU (CI), instead of a small Qwen3 on one GPU")
    p.add_argument("--config", default="conf/smoke-1gpu.yaml")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. output.path=s3://bucket/smoke/")
    args = p.parse_args(argv)

    from arhn_ray.config import load_config
    from arhn_ray.pipeline.job import run

    cfg = load_config(args.config, (CPU if args.cpu else []) + ["output.overwrite=true", *args.overrides])
    stats = run(cfg)
    problems = check(cfg, stats)
    o = stats["overall"]
    print(f"smoke: {o['queries']} refined, {o['rejected']} rejected, {o['negatives_in']} negatives "
          f"(relabeled {o['relabel']}, filtered {o['filter']}, kept {o['keep']}), model {cfg.engine.model} on {cfg.engine.device}")  # fmt: skip
    for problem in problems:
        print(f"smoke: FAIL: {problem}")
    print("smoke: PASS" if not problems else "smoke: FAIL")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
