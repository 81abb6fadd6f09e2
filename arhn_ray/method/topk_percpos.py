"""TopK-PercPos (NV-Retriever), the cheap baseline ARHN is compared with: a teacher scores the
query against the anchor positive and each negative, and a negative scored above
``pos - |pos| * relative_margin`` (95% of the positive's score by default, computed as
sentence-transformers' ``mine_hard_negatives`` does) is filtered as a likely false negative; the
others are kept. Nothing is relabeled. Pure: the scores come from elsewhere."""

from __future__ import annotations

from arhn_ray.method.labeling import FILTER, KEEP

ABOVE, BELOW = "above_relative_margin", "below_relative_margin"


def threshold(positive_score: float, relative_margin: float) -> float:
    return positive_score - abs(positive_score) * relative_margin


def decide(positive_score: float, negative_scores: list[float], relative_margin: float = 0.05) -> list[tuple[str, str]]:
    """(action, reason) per negative, in order."""
    bound = threshold(positive_score, relative_margin)
    return [(FILTER, ABOVE) if score > bound else (KEEP, BELOW) for score in negative_scores]
