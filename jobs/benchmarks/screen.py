"""Stage 1 prompt tokens with a teacher screen (``screen.top_k=4``) against none, side by side on
the shipped sample's 20 queries (the paper's N = 10 judged a query). The refiner runs for real
with the bundled MiniLM as the screen's teacher; the engine is a counter that tokenizes each
Stage 1 prompt with SmolLM2's tokenizer and chat template (what vLLM would count) and answers
NO_ANSWER, so only the prompts differ between the two arms.

    python jobs/benchmarks/screen.py [--top-k 4]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from arhn_ray import bundled
from arhn_ray.data.readers import from_flagembedding
from arhn_ray.data.records import validate_row
from arhn_ray.data.truncation import make_truncator
from arhn_ray.engines.base import ChatResult
from arhn_ray.method import labeling as lb
from arhn_ray.method.prompts import PromptSet
from arhn_ray.refiners.arhn import ArhnRefiner
from arhn_ray.refiners.teacher import Teacher

ROOT = Path(__file__).resolve().parents[2]


class Counter:
    model = "counter"

    def __init__(self):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(bundled.prepare_model(), local_files_only=True)
        self.stage1_tokens = self.stage1_calls = self.stage1_documents = 0

    def generate(self, requests):
        out = []
        for r in requests:
            ids = self.tok.apply_chat_template(r.messages, tokenize=True, add_generation_prompt=True)
            n = len(ids["input_ids"] if hasattr(ids, "keys") else ids)  # transformers 5 returns a BatchEncoding
            docs = r.messages[0]["content"].count("\ndoc") or 1
            if r.key[1] == 1:
                self.stage1_tokens += n
                self.stage1_calls += 1
                self.stage1_documents += docs
            out.append(
                ChatResult(
                    "\n\n".join(f"[[[doc{i}]]]\nNO_ANSWER\n[[[/doc{i}]]]" for i in range(1, docs + 1)), n, 3 * docs, "stop"
                )
            )
        return out

    def close(self):
        pass


def rows() -> list[dict]:
    lines = [json.loads(x) for x in (ROOT / "arhn_ray/samples/rlhn_msmarco.jsonl").read_text().splitlines() if x.strip()]
    flag = [json.loads(x) for x in (ROOT / "arhn_ray/samples/flagembedding_msmarco.jsonl").read_text().splitlines() if x.strip()]
    return [validate_row(r) for r in lines] + [validate_row(from_flagembedding(r)) for r in flag]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--top-k", type=int, default=4)
    args = ap.parse_args()
    truncate = make_truncator("bundled:minilm", 512)
    results = {}
    for name, top_k in (("no screen", None), (f"screen top {args.top_k}", args.top_k)):
        engine = Counter()
        screen = Teacher("bundled:minilm") if top_k else None
        refiner = ArhnRefiner(engine, lb.MethodOptions(screen_top_k=top_k), PromptSet.load(), truncate=truncate, screen=screen)
        began = time.perf_counter()
        outcomes = refiner.refine([dict(r) for r in rows()])
        seconds = time.perf_counter() - began
        screened = sum(d["reason"] == "screened" for o in outcomes for d in o.row["decisions"])
        results[name] = (engine.stage1_calls, engine.stage1_documents, engine.stage1_tokens, screened, seconds)
    print(f"{len(rows())} queries, N = 10; Stage 1 prompts tokenized with SmolLM2's tokenizer and chat template")
    print("| arm | Stage 1 calls | documents | prompt tokens | screened | seconds (CPU, teacher included) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (calls, docs, tokens, screened, seconds) in results.items():
        print(f"| {name} | {calls} | {docs} | {tokens:,} | {screened} | {seconds:.1f} |")
    (_, d0, t0, _, _), (_, d1, t1, _, _) = results.values()
    print(f"\nratio, screen / none: documents {d1 / d0:.3f}, Stage 1 prompt tokens {t1 / t0:.3f}")


if __name__ == "__main__":
    main()
