"""The TopK-PercPos baseline's refiner: the method driven through a teacher, batch by batch, with
the same interface as ARHN's, so the same job, parts, outputs, statistics, card, export and
resume serve it. Each decision keeps the teacher's score, and the row the lowest positive's."""

from __future__ import annotations

from typing import Any

from arhn_ray.config import Config
from arhn_ray.method.decisions import Decision
from arhn_ray.method.labeling import KEEP
from arhn_ray.method.passages import passage_text
from arhn_ray.method.topk_percpos import anchor_score, decide, kept_order
from arhn_ray.refiners.base import AsyncStep, Method, Metrics, Outcome, Step, provenance
from arhn_ray.refiners.teacher import Teacher

VARIANT = "topk_percpos"


class TopKPercPosRefiner:
    def __init__(self, teacher: Teacher, relative_margin: float = 0.05, keep: int | None = None):
        self.teacher = teacher
        self.relative_margin, self.keep = relative_margin, keep
        settings = {"relative_margin": relative_margin, "keep": keep, "kind": teacher.kind}
        self.provenance = provenance(VARIANT, teacher.model, settings)

    def close(self) -> None:
        self.teacher.close()

    def steps(self) -> dict[str, Step]:
        return {"fused": self.refine}

    def async_steps(self) -> dict[str, AsyncStep]:
        return {}  # a teacher scores batch by batch

    def metrics(self) -> Metrics:
        return Metrics()

    def refine(self, rows: list[dict]) -> list[Outcome]:
        pairs = []
        for row in rows:
            pairs += [(row["query"], passage_text(p)) for p in [*row["positive_passages"], *row["negative_passages"]]]
        scores = iter(self.teacher.score(pairs))
        out = []
        for row in rows:
            positive = anchor_score([next(scores) for _ in row["positive_passages"]])
            negatives = [next(scores) for _ in row["negative_passages"]]
            actions = decide(positive, negatives, self.relative_margin, self.keep)
            decisions = [Decision(neg["docid"], action, reason, score=score).to_dict()
                         for neg, (action, reason), score in zip(row["negative_passages"], actions, negatives)]  # fmt: skip
            kept = [row["negative_passages"][i] for i in kept_order(negatives, actions)]
            removed = [neg for neg, (action, _) in zip(row["negative_passages"], actions) if action != KEEP]
            refined = {**row, "negative_passages": kept, "removed_passages": removed, "decisions": decisions, "positive_snippet": None,
                       "positive_score": positive, "llm": [], "provenance": self.provenance}  # fmt: skip
            out.append(Outcome(refined))
        return out


def _build(cfg: Config, engine: Any = None) -> TopKPercPosRefiner:
    b = cfg.baseline
    teacher = Teacher(b.model, b.kind, b.batch_size, b.query_prefix, b.passage_prefix, max_length=cfg.truncation.max_seq_len)
    return TopKPercPosRefiner(teacher, b.relative_margin, b.keep)


def _describe(cfg: Config) -> dict[str, Any]:
    return {"model": cfg.baseline.model, "engine": "teacher", "variant": VARIANT, "prompt_version": None,
            "prompt_sha256": None, "labels_from": f"the TopK-PercPos teacher {cfg.baseline.model}"}  # fmt: skip


METHOD = Method(VARIANT, modes=("fused",), replica="teacher", has_async=False, build=_build, describe=_describe,
                repos=lambda cfg: [(cfg.baseline.model, "baseline.model", False)])  # fmt: skip
