"""Drive the TopK-PercPos baseline through a teacher, batch by batch, with the Refiner's interface
(``refine(rows) -> outcomes``), so the same job, parts, outputs, statistics, card, export and
resume serve it. Each decision keeps the teacher's score, and the row the lowest positive's."""

from __future__ import annotations

import hashlib
import json

from arhn_ray import __version__
from arhn_ray.engines.teacher import Teacher
from arhn_ray.method.passages import passage_text
from arhn_ray.method.topk_percpos import anchor_score, decide, kept_order
from arhn_ray.refine import Outcome

VARIANT = "topk_percpos"


class TopKPercPos:
    def __init__(self, teacher: Teacher, relative_margin: float = 0.05, keep: int | None = None):
        self.engine = teacher  # what a replica closes when Ray Data drops it
        self.relative_margin, self.keep = relative_margin, keep
        digest = hashlib.sha256(json.dumps([VARIANT, relative_margin, keep, teacher.model, teacher.kind]).encode()).hexdigest()[
            :16
        ]
        self.provenance = {"model": teacher.model, "prompt_version": None, "prompt_sha256": None, "variant": VARIANT,
                           "method_hash": digest, "arhn_ray_version": __version__}  # fmt: skip

    def refine(self, rows: list[dict]) -> list[Outcome]:
        pairs = []
        for row in rows:
            pairs += [(row["query"], passage_text(p)) for p in [*row["positive_passages"], *row["negative_passages"]]]
        scores = iter(self.engine.score(pairs))
        out = []
        for row in rows:
            positive = anchor_score([next(scores) for _ in row["positive_passages"]])
            negatives = [next(scores) for _ in row["negative_passages"]]
            actions = decide(positive, negatives, self.relative_margin, self.keep)
            decisions = [
                {
                    "docid": neg["docid"],
                    "action": action,
                    "reason": reason,
                    "snippet": None,
                    "grounding": None,
                    "rank": None,
                    "score": score,
                }
                for neg, (action, reason), score in zip(row["negative_passages"], actions, negatives)
            ]
            kept = [row["negative_passages"][i] for i in kept_order(negatives, actions)]
            refined = {**row, "negative_passages": kept, "decisions": decisions, "positive_snippet": None, "positive_score": positive,
                       "llm": [], "provenance": self.provenance}  # fmt: skip
            out.append(Outcome(refined))
        return out
