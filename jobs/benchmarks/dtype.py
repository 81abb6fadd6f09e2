"""float32 against bfloat16 for the bundled model on this CPU, side by side in one run.

``engine.dtype: auto`` becomes float32 on vLLM's CPU build when the CPU has no bf16 units
(``arhn_ray.engines.vllm_engine.cpu_dtype``). This runs the same Stage 1 prompts of the shipped
sample through ``vllm.LLM.chat`` once per dtype (greedy, the local config's max_tokens and
constraint) and prints each one's time, output tokens and tokens a second.

    python jobs/benchmarks/dtype.py [--rows 1]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(cfg, dtype: str, requests: list) -> dict:
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    from arhn_ray.engines.vllm_engine import VLLMEngine

    t = time.perf_counter()
    engine = VLLMEngine(replace(cfg.engine, dtype=dtype))
    start = time.perf_counter() - t
    params = [SamplingParams(temperature=0.0, max_tokens=cfg.stage1.max_tokens, seed=cfg.engine.seed,
                             structured_outputs=StructuredOutputsParams(regex=c) if c else None) for _, c in requests]  # fmt: skip
    t = time.perf_counter()
    outs = engine.llm.chat(
        [m for m, _ in requests], params, use_tqdm=False, chat_template_kwargs=dict(cfg.engine.chat_template_kwargs)
    )
    elapsed = time.perf_counter() - t
    engine.close()
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"start_s": start, "run_s": elapsed, "output_tokens": tokens, "texts": [o.outputs[0].text for o in outs]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1)
    args = ap.parse_args()
    from arhn_ray.config import load_config, method_options
    from arhn_ray.data.truncation import make_truncator
    from arhn_ray.method import labeling as lb
    from arhn_ray.method.prompts import PromptSet, chat

    cfg = load_config(str(ROOT / "conf" / "local.yaml"))
    options, prompts = method_options(cfg), PromptSet.load(cfg.prompts.version, cfg.prompts.dir)
    truncate = make_truncator(cfg.truncation.tokenizer, cfg.truncation.max_seq_len)
    rows = [json.loads(line) for line in open(ROOT / "arhn_ray" / "samples" / "rlhn_msmarco.jsonl")][: args.rows]
    requests = []
    for row in rows:
        plan = lb.plan_row(row, options, truncate)
        for c in range(len(plan.chunks)):
            prompt, constraint = lb.stage1_request(plan, c, prompts, options)
            requests.append((chat(prompt), constraint))
    results = {dtype: run(cfg, dtype, requests) for dtype in ("float32", "bfloat16")}
    for dtype, r in results.items():
        print(f"{dtype:9s} engine start {r['start_s']:.1f} s; {len(requests)} Stage 1 calls in {r['run_s']:.1f} s, "
              f"{r['output_tokens']} output tokens = {r['output_tokens'] / r['run_s']:.1f} tokens/s")  # fmt: skip
    f, b = results["float32"], results["bfloat16"]
    print(f"float32 / bfloat16 output tokens a second: {(f['output_tokens'] / f['run_s']) / (b['output_tokens'] / b['run_s']):.2f}; "
          f"same texts: {sum(x == y for x, y in zip(f['texts'], b['texts']))} of {len(requests)}")  # fmt: skip


if __name__ == "__main__":
    main()
