"""Parse-and-label throughput of the method core, in queries per second on one core.

Recorded outputs for 10 negatives per query (real MS MARCO passages from the shipped sample;
Stage 1 snippets copied from the passages as the verbatim constraint makes them, a third of
them NO_ANSWER; a Stage 2 ranking per query), pushed through what runs after the LLM: plan the
row, parse + ground Stage 1, parse Stage 2, label. Goal: 20,000 queries/s (680K queries in
under a minute of one core).

    python jobs/benchmarks/parse_label.py [--queries 20000]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from arhn_ray.data.readers import from_flagembedding
from arhn_ray.data.records import validate_row
from arhn_ray.method import labeling as lb
from arhn_ray.method.constraints import sentences
from arhn_ray.method.prompts import PromptSet, neutralize
from arhn_ray.method.ranking import parse_ranking

SAMPLES = Path(__file__).resolve().parents[2] / "arhn_ray" / "samples"


def load_rows() -> list[dict]:
    rows = [json.loads(line) for line in open(SAMPLES / "rlhn_msmarco.jsonl")]
    rows += [from_flagembedding(json.loads(line)) for line in open(SAMPLES / "flagembedding_msmarco.jsonl")]
    out = []
    for r in rows:
        r = validate_row(r)
        r["negative_passages"] = r["negative_passages"][:10]
        out.append(r)
    return out


def recorded(row: dict, rng: random.Random, options: lb.MethodOptions) -> tuple[str, str]:
    # the model copies from the passages as the prompt shows them (neutralised)
    docs = [neutralize(row["positive_passages"][0]["text"])] + [neutralize(n["text"]) for n in row["negative_passages"]]
    snippets = [sentences(docs[0])[0]]
    for text in docs[1:]:
        snippets.append(None if rng.random() < 0.33 else rng.choice(sentences(text)))
    stage1 = "\n\n".join(f"[[[doc{i}]]]\n{s or 'NO_ANSWER'}\n[[[/doc{i}]]]" for i, s in enumerate(snippets, 1))
    n_items = 1 + sum(s is not None for s in snippets[1:])
    order = list(range(1, n_items + 1))
    rng.shuffle(order)
    return stage1, " > ".join(f"[{i}]" for i in order)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=20_000)
    args = ap.parse_args()
    options = lb.MethodOptions()
    prompts = PromptSet.load()
    rng = random.Random(0)
    base = load_rows()
    work = []
    for q in range(args.queries):
        row = dict(base[q % len(base)], query_id=f"q{q}")
        work.append((row, *recorded(row, rng, options)))

    def parse_and_label(with_prompts: bool) -> float:
        start = time.process_time()
        for row, stage1, stage2 in work:
            plan = lb.plan_row(row, options)
            snippets = [lb.read_stage1(plan, 0, stage1, options)]
            if with_prompts:
                request = lb.stage2_request(plan, 0, snippets[0], prompts, options, lb.row_anchor(snippets, options))
                positions = request.positions if request else None
            else:
                positions = [0] + [p for p in range(1, len(plan.chunks[0]) + 1) if snippets[0].snippet(p, options)]
            ranked = [None]
            if positions and lb.row_anchor(snippets, options).snippet is not None and len(positions) > 1:
                req = lb.Stage2Request("", None, positions)
                ranked = [(req, parse_ranking(stage2, len(positions)))]
            lb.label_row(plan, snippets, ranked, options)
        return time.process_time() - start

    parse_and_label(False)  # warm-up
    t_core = parse_and_label(False)
    t_full = parse_and_label(True)
    n = len(work)
    print(f"queries: {n} (10 negatives each), CPU time on one core")
    print(f"parse + ground + rank + label:            {n / t_core:10,.0f} queries/s  ({t_core:.2f} s)")
    print(f"  ... and building the Stage 2 prompt:     {n / t_full:10,.0f} queries/s  ({t_full:.2f} s)")
    print(f"680K queries: {680_000 / (n / t_core):.1f} s of one core (goal: under 60 s, i.e. >= 20,000 queries/s)")


if __name__ == "__main__":
    main()
