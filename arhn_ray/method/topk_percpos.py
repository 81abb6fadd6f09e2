"""TopK-PercPos (NV-Retriever), the cheap baseline ARHN is compared with: a teacher scores the
query against each positive and each negative; a negative scored above ``pos - |pos| *
relative_margin``, where ``pos`` is the lowest positive score (95% of it by default, as
sentence-transformers' ``mine_hard_negatives`` computes it), is filtered as a likely false
negative; of the others, the top ``keep`` by score are kept, as NV-Retriever selects its k
negatives (all of them when ``keep`` is None), best first. Nothing is relabeled. Pure: the
scores come from elsewhere."""

from __future__ import annotations

from arhn_ray.method.labeling import FILTER, KEEP

ABOVE, BELOW, BEYOND = "above_relative_margin", "below_relative_margin", "beyond_top_k"


def threshold(positive_score: float, relative_margin: float) -> float:
    return positive_score - abs(positive_score) * relative_margin


def anchor_score(positive_scores: list[float]) -> float:
    """The score the margin is taken from: the lowest positive's."""
    return min(positive_scores)


def decide(
    positive_score: float, negative_scores: list[float], relative_margin: float = 0.05, keep: int | None = None
) -> list[tuple[str, str]]:
    """(action, reason) per negative, in order."""
    bound = threshold(positive_score, relative_margin)
    under = sorted((i for i, s in enumerate(negative_scores) if s <= bound), key=lambda i: -negative_scores[i])
    kept = set(under if keep is None else under[:keep])
    return [(KEEP, BELOW) if i in kept else (FILTER, ABOVE if s > bound else BEYOND) for i, s in enumerate(negative_scores)]


def kept_order(negative_scores: list[float], actions: list[tuple[str, str]]) -> list[int]:
    """The kept negatives' positions, best-scored first (NV-Retriever's top-k order)."""
    return sorted((i for i, (a, _) in enumerate(actions) if a == KEEP), key=lambda i: -negative_scores[i])
