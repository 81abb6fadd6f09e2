"""Stage 1 + Stage 2 throughput of the bundled model on this machine, per constraint mode.

One vLLM CPU engine (SmolLM2-135M, enforce_eager), the same rows for each mode:
Stage 1 ``none`` / ``format`` / ``verbatim`` (Stage 2 ``none`` with the first, ``format`` with
the others). Prints queries/s, output tokens/s and prompt tokens/s, engine start on its own.

    python jobs/benchmarks/engine_modes.py [--rows 4]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4)
    args = ap.parse_args()
    from arhn_ray.bundled import minilm_path
    from arhn_ray.data.records import validate_row
    from arhn_ray.data.truncation import Truncator
    from arhn_ray.engines.options import EngineConfig
    from arhn_ray.engines.vllm_engine import VLLMEngine
    from arhn_ray.method import labeling as lb
    from arhn_ray.method.prompts import PromptSet
    from arhn_ray.refiners.arhn import ArhnRefiner

    rows = [validate_row(json.loads(line)) for line in open(ROOT / "arhn_ray" / "samples" / "rlhn_msmarco.jsonl")][: args.rows]
    t0 = time.perf_counter()
    engine = VLLMEngine(EngineConfig(enforce_eager=True, gpu_memory_utilization=0.25, max_model_len=8192))
    print(f"engine start: {time.perf_counter() - t0:.1f} s; {args.rows} queries x 25 negatives (3 chunks each)")
    truncate = Truncator(minilm_path(), 512)
    for stage1, stage2 in (("none", "none"), ("format", "format"), ("verbatim", "format")):
        options = lb.MethodOptions(stage1_constraint=stage1, stage2_constraint=stage2)
        refiner = ArhnRefiner(engine, options, PromptSet.load(), truncate, stage1_max_tokens=2048, stage2_max_tokens=64)
        t = time.perf_counter()
        outs = refiner.refine([dict(r) for r in rows])
        wall = time.perf_counter() - t
        calls = [c for o in outs for c in o.row.get("llm", [])]
        prompt = sum((c["stage1_prompt_tokens"] or 0) + (c["stage2_prompt_tokens"] or 0) for c in calls)
        output = sum((c["stage1_output_tokens"] or 0) + (c["stage2_output_tokens"] or 0) for c in calls)
        decisions = [d for o in outs for d in o.row.get("decisions") or []]
        exact = sum(d["grounding"] == "exact" for d in decisions)
        snippets = sum(d["snippet"] is not None for d in decisions)
        rejected = sum(o.rejected is not None for o in outs)
        print(
            f"stage1={stage1:<8} stage2={stage2:<6} {len(rows) / wall:.4f} queries/s  {output / wall:6.1f} output tok/s  "
            f"{prompt / wall:7.1f} prompt tok/s  ({wall:.0f} s; snippets {snippets}/{len(decisions)}, exact {exact}; rejected {rejected})"
        )
    engine.close()


if __name__ == "__main__":
    main()
