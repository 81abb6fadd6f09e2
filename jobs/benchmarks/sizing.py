"""The paper's run priced by the code's own counts: 680K queries on 16 A100s (8 replicas x TP 2),
for copied text vs sentence ids, N = 10 vs every negative, with and without a teacher screen,
and the compute floor. No GPU ran: each figure is `arhn-ray plan`'s arithmetic (arhn_ray/plan.py,
arhn_ray/gpu_rates.py) over the shipped sample's 20 MS MARCO queries (25 negatives each; BGE rows
carry 15-30), scaled per query. Prompts are tokenized with SmolLM2's tokenizer and chat template
(a BPE like Qwen3's; Qwen3's is not on this machine) and passages truncated to 512 tokens with the
BERT-uncased WordPiece tokenizer that E5-base and MiniLM share.

    python jobs/benchmarks/sizing.py [--queries 680000] [--screen-k 4] [--markdown]
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from arhn_ray.config import load_config
from arhn_ray.plan import Assumptions, RunEstimate, _price_llm, make_plan

ROOT = Path(__file__).resolve().parents[2]
COUNTS = ("stage1_calls", "stage2_calls_at_most", "stage1_prompt_tokens", "stage1_output_tokens", "stage2_prompt_tokens_at_most",
          "stage2_output_tokens_at_most", "screen_pairs")  # fmt: skip


def at_scale(p: RunEstimate, queries: int, assume: Assumptions, screen: bool, replicas: int = 8, gpus: int = 16) -> RunEstimate:
    """The sample's counts per query times ``queries``; every call after a replica's first finds its stage's shared head cached."""
    scale = queries / p.rows
    big = RunEstimate(rows=queries, gpus=gpus, assumptions=p.assumptions)
    for key in COUNTS:
        setattr(big, key, round(getattr(p, key) * scale))
    block = assume.prefix_block_tokens
    big.cached_prompt_tokens = (p.stage1_shared_prefix_tokens // block * block) * (big.stage1_calls - replicas) + (
        p.stage2_shared_prefix_tokens // block * block
    ) * (big.stage2_calls_at_most - replicas)
    _price_llm(big, load_config(str(ROOT / "conf" / "qwen3-32b-a100x16.yaml")), assume.rates, replicas)
    if screen:
        big.screen_hours = big.screen_pairs / assume.teacher_pairs_per_gpu_s / replicas / 3600
        big.hours += big.screen_hours
        big.gpu_hours = big.hours * gpus
    return big


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=680_000)
    ap.add_argument(
        "--screen-k", type=int, default=4, help="the screen's top k (Table 4: Qwen3-32B finds an answer in 3.8 of 10)"
    )
    args = ap.parse_args()
    assume = Assumptions()
    base = [f"input.path={ROOT / 'arhn_ray' / 'samples'}", "input.limit=null", "output.path=/nonexistent/sizing",
            "engine.tokenizer=bundled:smollm2", "truncation.tokenizer=bundled:minilm"]  # fmt: skip
    print(f"{args.queries:,} queries, Qwen3-32B on 16 A100-80GB (8 replicas x TP 2); screen = a teacher's top {args.screen_k}")
    print(
        "| Stage 1 | N | screen | Stage 1 calls / query | prompt tokens prefilled / query | output tokens / query "
        "| hours | GPU-hours | floor (100% of peak), hours |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for mode in ("text", "sentence_ids"):
        for n in ("10", "null"):
            for screen in (False, True):
                over = [*base, f"stage1.output={mode}", f"method.negatives_per_query={n}"]
                if screen:
                    over += ["screen.model=bundled:minilm", f"screen.top_k={args.screen_k}"]
                cfg = load_config(str(ROOT / "conf" / "qwen3-32b-a100x16.yaml"), over)
                p = make_plan(cfg, replace(assume))
                big = at_scale(p, args.queries, assume, screen)
                q = args.queries
                prefilled = big.stage1_prompt_tokens + big.stage2_prompt_tokens_at_most - big.cached_prompt_tokens
                output = big.stage1_output_tokens + big.stage2_output_tokens_at_most
                print(f"| {mode} | {'all' if n == 'null' else n} | {'top ' + str(args.screen_k) if screen else 'off'} "
                      f"| {big.stage1_calls / q:.2f} | {prefilled / q:,.0f} | {output / q:,.0f} | **{big.hours:.1f}** "
                      f"| {big.gpu_hours:,.0f} | {big.floor_hours:.1f} |")  # fmt: skip
    r = assume.rates
    modelled, measured, source = r.check()
    print(f"\nrates: {r.prefill_tokens_per_gpu_s():,.0f} prompt tokens/s a GPU; output {r.decode_tokens_per_gpu_s(1500):,.0f}/s "
          f"at a 1,500-token context ({r.fraction_of_peak:g} of {r.peak_tflops:g} TFLOP/s, {r.fraction_of_bandwidth:g} of "
          f"{r.hbm_tb_s:g} TB/s, {r.kv_bytes_per_token // 1024} KiB of KV a token); checked: {modelled:,.0f} tokens/s modelled "
          f"vs {measured:,.0f} measured, {source}")  # fmt: skip


if __name__ == "__main__":
    main()
