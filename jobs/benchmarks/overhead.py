"""How close the job runs to the engine's own limit, and fused vs staged, side by side in one run.

(a) a plain single-process ``vllm.LLM.chat`` loop over exactly the prompts the job sends
    (Stage 1 for the rows, then Stage 2 built from the Stage 1 outputs), and
(b) ``arhn-ray refine`` in ``fused`` mode with the same model and settings, then
(c) the same in ``staged`` mode (two pools, two engines, same machine).
Engine start is excluded from every throughput and reported on its own. Also prints vLLM's
prefix-cache hit rate in (a).

    python jobs/benchmarks/overhead.py [--rows 4]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def job(out: Path, data: Path, mode: str) -> dict:
    from arhn_ray.config import load_config
    from arhn_ray.pipeline.job import run

    cfg = load_config(
        str(ROOT / "conf" / "local.yaml"),
        [f"input.path={data}", "input.limit=null", f"output.path={out}", f"pipeline.mode={mode}", "pipeline.progress=false"],
    )
    return run(cfg), cfg


def plain_loop(cfg, out: Path, rows: list[dict]) -> dict:
    """(a): the job's exact prompts through vllm.LLM.chat, two batched calls, as the replica makes them."""
    import pyarrow.parquet as pq
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    from arhn_ray.engines.vllm_engine import VLLMEngine
    from arhn_ray.method import labeling as lb
    from arhn_ray.method.prompts import chat
    from arhn_ray.refiners import method_for

    e = cfg.engine
    t0 = time.perf_counter()
    engine = VLLMEngine(e)
    start = time.perf_counter() - t0
    refiner = method_for(cfg).build(cfg, engine)
    llm, options, prompts = engine.llm, refiner.options, refiner.prompts

    def params(constraint, max_tokens):
        so = StructuredOutputsParams(regex=constraint) if constraint else None
        return SamplingParams(temperature=0.0, max_tokens=max_tokens, seed=e.seed, structured_outputs=so)

    stage1 = []
    plans = [lb.plan_row(r, options, refiner.truncate) for r in rows]
    for plan in plans:
        for c in range(len(plan.chunks)):
            prompt, constraint = lb.stage1_request(plan, c, prompts, options)
            stage1.append((chat(prompt), params(constraint, cfg.stage1.max_tokens)))
    stored = {r["query_id"]: r for r in pq.read_table(out / "refined").to_pylist()}
    stage2 = []
    for plan in plans:
        calls = stored[plan.row["query_id"]]["llm"]
        snippets = [lb.read_stage1(plan, c, call["stage1_text"], options) for c, call in enumerate(calls)]
        for c, chunk in enumerate(snippets):
            req = lb.stage2_request(plan, c, chunk, prompts, options, lb.row_anchor(snippets, options))
            if req:
                stage2.append((chat(req.prompt), params(req.constraint, cfg.stage2.max_tokens)))
    kw = dict(use_tqdm=False, chat_template_kwargs=dict(e.chat_template_kwargs))
    t1 = time.perf_counter()
    outs1 = llm.chat([m for m, _ in stage1], [p for _, p in stage1], **kw)
    outs2 = llm.chat([m for m, _ in stage2], [p for _, p in stage2], **kw) if stage2 else []
    elapsed = time.perf_counter() - t1
    prompt_tokens = sum(len(o.prompt_token_ids) for o in outs1 + outs2)
    cached = sum(getattr(o, "num_cached_tokens", 0) or 0 for o in outs1 + outs2)
    output_tokens = sum(len(o.outputs[0].token_ids) for o in outs1 + outs2)
    engine.close()
    return {"start_s": start, "run_s": elapsed, "calls": len(stage1) + len(stage2), "prompt_tokens": prompt_tokens,
            "output_tokens": output_tokens, "prefix_cache_hit_rate": cached / max(prompt_tokens, 1)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4)
    args = ap.parse_args()
    rows = [json.loads(line) for line in open(ROOT / "arhn_ray" / "samples" / "rlhn_msmarco.jsonl")][: args.rows]
    tmp = Path(tempfile.mkdtemp(prefix="arhn-bench-"))
    (tmp / "in").mkdir()
    (tmp / "in" / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    fused, cfg = job(tmp / "fused", tmp / "in", "fused")
    staged, _ = job(tmp / "staged", tmp / "in", "staged")
    plain = plain_loop(cfg, tmp / "fused", rows)
    import ray

    ray.shutdown()

    b_in_actor = fused["replica_time"]["engine_s"]
    b_wall = fused["throughput"]["wall_s"] - fused["replica_time"]["engine_start_s"]
    c_wall = staged["throughput"]["wall_s"] - staged["replica_time"]["engine_start_s"] / 2
    print(
        f"rows: {args.rows} ({plain['calls']} LLM calls, {plain['prompt_tokens']} prompt + {plain['output_tokens']} output tokens)"
    )
    print(f"engine start: plain {plain['start_s']:.1f} s; fused replica {fused['replica_time']['engine_start_s']:.1f} s; "
          f"staged replicas {staged['replica_time']['engine_start_s']:.1f} s (two engines)")  # fmt: skip
    print(f"(a) plain vllm.LLM.chat loop:            {plain['run_s']:.1f} s  ->  {args.rows / plain['run_s']:.4f} queries/s")
    print(f"(b) arhn-ray fused, inside the replica:   {b_in_actor:.1f} s  ->  ratio b/a = {plain['run_s'] / b_in_actor:.3f}")
    print(f"(b) arhn-ray fused, job wall - start:     {b_wall:.1f} s  ->  ratio b/a = {plain['run_s'] / b_wall:.3f}")
    print(
        f"(c) arhn-ray staged, job wall - mean start of its 2 engines (they start side by side): {c_wall:.1f} s  ->  fused/staged throughput = {c_wall / b_wall:.3f}"
    )
    print(f"prefix-cache hit rate in (a): {plain['prefix_cache_hit_rate']:.1%}")
    same = fused["overall"] == staged["overall"]
    print(f"fused and staged gave the same counts: {same}")


if __name__ == "__main__":
    main()
