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


def _resampled_means(sets: list[np.ndarray], samples: int, seed: int) -> np.ndarray:
    """``samples`` resampled values of the average over sets of each set's mean: queries are
    drawn with replacement within each set, every set weighing the same (as BEIR's Avg.)."""
    rng = np.random.default_rng(seed)
    return np.mean([x[rng.integers(0, len(x), size=(samples, len(x)))].mean(axis=1) for x in sets], axis=0)


def paired_bootstrap_sets(pairs: list[tuple[dict[str, float], dict[str, float]]], samples: int = 1000, seed: int = 0) -> dict:
    """The average over sets of the mean of a - b over the queries both have, with a 95%
    percentile interval from resampling each set's queries (the pair kept together: paired);
    ``inconclusive`` when the interval holds 0."""
    diffs = []
    for a, b in pairs:
        queries = sorted(set(a) & set(b))
        diffs.append(np.array([a[q] - b[q] for q in queries]))
    lo, hi = (float(x) for x in np.percentile(_resampled_means(diffs, samples, seed), [2.5, 97.5]))
    delta = float(np.mean([d.mean() for d in diffs]))
    return {"delta": round(delta, 4), "ci95": [round(lo, 4), round(hi, 4)], "queries": int(sum(len(d) for d in diffs)),
            "inconclusive": lo <= 0.0 <= hi}  # fmt: skip


def paired_bootstrap(a: dict[str, float], b: dict[str, float], samples: int = 1000, seed: int = 0) -> dict:
    """Mean of a - b over the queries both have, with a 95% percentile interval from resampling
    queries; ``inconclusive`` when the interval holds 0."""
    return paired_bootstrap_sets([(a, b)], samples, seed)


def bootstrap_mean(values: list[float] | list[list[float]], samples: int = 1000, seed: int = 0) -> list[float]:
    """A 95% percentile interval of the mean (of one set's values), or of the average of the
    sets' means (a list of sets), resampling queries."""
    sets = [np.array(v) for v in values] if values and isinstance(values[0], list) else [np.array(values)]
    return [round(float(v), 4) for v in np.percentile(_resampled_means(sets, samples, seed), [2.5, 97.5])]
