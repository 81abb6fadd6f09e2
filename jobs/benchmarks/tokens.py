"""Token cost per query over both stages: the defaults vs ``paper_literal``, same rows, same recordings.

The defaults send Stage 2 only the snippets that can change a label and skip Stage 2 where no
negative has a snippet (or the positive has none); ``paper_literal`` sends all N+1 snippets and
never skips. Prompt tokens are counted with the bundled model's tokenizer and chat template;
Stage 2 outputs that the recordings lack (calls the defaults skipped) are counted as the full
ranking string a model would write. Two recordings: the bundled model's real run (an OUTPUT
folder, e.g. from `arhn-ray refine conf/local.yaml`), and a synthetic one at the NO_ANSWER rate
that Table 4 implies for Qwen3-32B (1.6 relabeled + 2.2 filtered of 10, so 6.2 NO_ANSWER).

    python jobs/benchmarks/tokens.py OUTPUT
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from arhn_ray.bundled import prepare_model
from arhn_ray.data.readers import from_flagembedding
from arhn_ray.data.records import validate_row
from arhn_ray.engines.base import ChatRequest, ChatResult
from arhn_ray.engines.replay import load_recordings
from arhn_ray.method import labeling as lb
from arhn_ray.method.prompts import PromptSet
from arhn_ray.refiners.arhn import ArhnRefiner

ROOT = Path(__file__).resolve().parents[2]


class CountingReplay:
    """Recorded outputs; counts tokens the way the engine would."""

    model = "counting-replay"

    def __init__(self, recordings: dict, tokenizer):
        self.recordings = recordings
        self.tok = tokenizer
        self.prompt = self.output = 0

    def generate(self, requests: list[ChatRequest]) -> list[ChatResult]:
        out = []
        for r in requests:
            rec = self.recordings.get(r.key)
            if rec is None:
                n = len(r.messages[0]["content"].split("\n[")) - 1
                text = " > ".join(f"[{i}]" for i in range(1, n + 1))
            else:
                text = rec["text"]
            ids = self.tok.apply_chat_template(r.messages, tokenize=True, add_generation_prompt=True)
            p = len(ids["input_ids"] if hasattr(ids, "keys") else ids)
            o = len(self.tok(text, add_special_tokens=False)["input_ids"])
            self.prompt += p
            self.output += o
            out.append(ChatResult(text, p, o, "stop"))
        return out

    def close(self) -> None:
        pass


def sample_rows() -> list[dict]:
    rows = [json.loads(line) for line in open(ROOT / "arhn_ray" / "samples" / "rlhn_msmarco.jsonl")]
    rows += [from_flagembedding(json.loads(line)) for line in open(ROOT / "arhn_ray" / "samples" / "flagembedding_msmarco.jsonl")]
    return [validate_row(r) for r in rows]


def synthetic_recordings(rows: list[dict], truncate) -> dict:
    """Stage 1 at Table 4's Qwen3-32B rates: 3.8 of 10 negatives with a snippet, the rest NO_ANSWER."""
    rng = random.Random(0)
    rec = {}
    for row in rows:
        plan = lb.plan_row(row, lb.MethodOptions(), truncate)
        for c, members in enumerate(plan.chunks):
            texts = [plan.anchor_text] + [plan.negative_texts[i] for i in members]
            snippets = [t.split(". ")[0] if (k == 0 or rng.random() < 0.38) else None for k, t in enumerate(texts)]
            body = "\n\n".join(f"[[[doc{i}]]]\n{s or 'NO_ANSWER'}\n[[[/doc{i}]]]" for i, s in enumerate(snippets, 1))
            rec[(row["query_id"], 1, c)] = {"text": body}
            n = 1 + sum(s is not None for s in snippets[1:])
            rec[(row["query_id"], 2, c)] = {"text": " > ".join(f"[{i}]" for i in range(n, 0, -1))}
    return rec


def count(recordings: dict, rows: list[dict], literal: bool, tokenizer, truncate) -> dict:
    engine = CountingReplay(recordings, tokenizer)
    options = lb.MethodOptions(paper_literal=literal, stage1_constraint="verbatim", stage2_constraint="format")
    outs = ArhnRefiner(engine, options, PromptSet.load(), truncate).refine([dict(r) for r in rows])
    stage2_calls = sum(1 for o in outs for c in o.row.get("llm", []) if c["stage2_text"] is not None)
    s1p = sum(c["stage1_prompt_tokens"] for o in outs for c in o.row["llm"])
    s1o = sum(c["stage1_output_tokens"] for o in outs for c in o.row["llm"])
    n = len(rows)
    return {"per_query": engine.prompt / n + engine.output / n, "prompt": engine.prompt / n, "output": engine.output / n,
            "stage1": (s1p + s1o) / n, "stage2": (engine.prompt + engine.output - s1p - s1o) / n, "stage2_calls": stage2_calls}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("output", help="a run's output folder (its stored LLM outputs are the recordings)")
    args = ap.parse_args()
    from transformers import AutoTokenizer

    from arhn_ray.bundled import minilm_path
    from arhn_ray.data.truncation import Truncator

    tokenizer = AutoTokenizer.from_pretrained(str(prepare_model()))
    truncate = Truncator(minilm_path(), 512)
    rows = sample_rows()
    for name, rec in (
        ("bundled model's run", load_recordings(args.output)),
        ("Table 4 rates (synthetic)", synthetic_recordings(rows, truncate)),
    ):
        d = count(rec, rows, False, tokenizer, truncate)
        p = count(rec, rows, True, tokenizer, truncate)
        print(f"{name}: {len(rows)} queries, tokens per query (prompt + output)")
        print(
            f"  defaults:      {d['per_query']:8.0f}  (Stage 1 {d['stage1']:.0f}, Stage 2 {d['stage2']:.0f}; {d['stage2_calls']} Stage 2 calls)"
        )
        print(
            f"  paper_literal: {p['per_query']:8.0f}  (Stage 1 {p['stage1']:.0f}, Stage 2 {p['stage2']:.0f}; {p['stage2_calls']} Stage 2 calls)"
        )
        print(
            f"  defaults / paper_literal = {d['per_query'] / p['per_query']:.3f} overall, {d['stage2'] / p['stage2']:.3f} for Stage 2 (goal overall: <= 0.8)"
        )


if __name__ == "__main__":
    main()
