"""Retrieval quality per query with pytrec_eval (trec_eval's own code: nDCG uses the qrels'
graded relevance as gains), and the paired bootstrap of a difference between two systems."""

from __future__ import annotations

import numpy as np

MEASURES = {"ndcg@10": "ndcg_cut_10", "recall@100": "recall_100"}


def per_query(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]]) -> dict[str, dict[str, float]]:
    """query id -> {"ndcg@10": x, "recall@100": y}; a query the run has no result for scores 0."""
    import pytrec_eval

    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"})
    scored = evaluator.evaluate({q: run.get(q, {}) or {"__none__": 0.0} for q in qrels})
    return {q: {name: float(scored[q][key]) for name, key in MEASURES.items()} for q in qrels}


def mean(scores: dict[str, dict[str, float]], measure: str) -> float:
    return float(np.mean([s[measure] for s in scores.values()]))


def paired_bootstrap(a: dict[str, float], b: dict[str, float], samples: int = 1000, seed: int = 0) -> dict:
    """Mean of a - b over the queries both have, with a 95% percentile interval from resampling
    queries; ``inconclusive`` when the interval holds 0."""
    queries = sorted(set(a) & set(b))
    diff = np.array([a[q] - b[q] for q in queries])
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(samples, len(diff)))].mean(axis=1)
    lo, hi = (float(x) for x in np.percentile(means, [2.5, 97.5]))
    return {"delta": round(float(diff.mean()), 4), "ci95": [round(lo, 4), round(hi, 4)], "queries": len(queries),
            "inconclusive": lo <= 0.0 <= hi}  # fmt: skip


def bootstrap_mean(values: list[float], samples: int = 1000, seed: int = 0) -> list[float]:
    """A 95% percentile interval of the mean, resampling queries."""
    x = np.array(values)
    means = x[np.random.default_rng(seed).integers(0, len(x), size=(samples, len(x)))].mean(axis=1)
    return [round(float(v), 4) for v in np.percentile(means, [2.5, 97.5])]
