"""``arhn-ray calibrate``: what a teacher screen of top k would have saved on a calibration run, and
how far its labels would have moved, for k = 1..N, so that nobody sets ``screen.top_k`` blind.

A calibration run is a refine with ``screen.model`` set and ``screen.top_k: null``: every judged
negative went to the LLM and every decision keeps its teacher score. A screen of top k would
have sent only the k best-scored negatives of a query; the rest would have been kept unjudged.
Assumed: the k it sends get the labels they got with all N in the prompt (Stage 2 ranks each
against the positive, so fewer items beside it should not move it; only a run with
``screen.top_k=k`` can confirm it). Per k: Cohen's kappa of changed (relabel or filter) vs keep
between the screened and the full labels, the recall of the relabels and of the filters, and the
Stage 1 documents and prompt tokens saved (a call's prompt tokens shared out evenly over its
documents, so the rules' tokens count as saved too: an upper bound by about the rules' share).

Example:
    >>> result = calibrate("out/calib")          # a run with screen.model=... screen.top_k=null
    >>> result["smallest_k"]                     # the smallest k whose kappa is at least 0.9
    4
"""

from __future__ import annotations

from typing import Any

from arhn_ray.data import layout
from arhn_ray.data.layout import OutputLayout
from arhn_ray.method.labeling import FILTER, KEEP, NOT_JUDGED, RELABEL


class NotACalibrationRun(ValueError):
    """The output's decisions carry no teacher scores: it was not refined with a screen."""


def screened_labels(decisions: list[dict], k: int) -> list[str]:
    """The actions of a query's judged negatives had only the ``k`` best-scored gone to the LLM
    (ties: the miner's order, as the screen breaks them); the others are kept."""
    order = sorted(range(len(decisions)), key=lambda i: (-decisions[i]["score"], i))
    sent = set(order[:k])
    return [d["action"] if i in sent else KEEP for i, d in enumerate(decisions)]


def judged_queries(rows: list[dict]) -> list[tuple[list[dict], list[int]]]:
    """Per query, its judged decisions (in order) and its Stage 1 calls' prompt tokens."""
    out = []
    for row in rows:
        judged = [d for d in row["decisions"] if d["reason"] not in NOT_JUDGED]
        if not judged:
            continue
        if any(d.get("score") is None for d in judged):
            raise NotACalibrationRun(
                f"query {row['query_id']}: a judged negative has no teacher score; calibrate reads a run refined with "
                "screen.model=... screen.top_k=null"
            )
        out.append((judged, [c.get("stage1_prompt_tokens") or 0 for c in row.get("llm") or []]))
    return out


def kappa(full: list[bool], screened: list[bool]) -> float | None:
    """Cohen's kappa of two binary labelings; 1.0 when they are identical, None when undefined otherwise."""
    from sklearn.metrics import cohen_kappa_score

    if full == screened:
        return 1.0
    if len(set(full) | set(screened)) < 2:
        return None
    return float(cohen_kappa_score(full, screened))


def sweep(queries: list[tuple[list[dict], list[int]]], threshold: float = 0.9) -> dict[str, Any]:
    """Per k, the savings and the distance of the screened labels from the full ones."""
    n = max((len(j) for j, _ in queries), default=0)
    full = [d["action"] for j, _ in queries for d in j]
    docs_full = sum(len(j) + len(calls) for j, calls in queries)  # the anchor is in every call
    tokens_full = sum(sum(calls) for _, calls in queries)
    rows = []
    for k in range(1, n + 1):
        screened = [a for j, _ in queries for a in screened_labels(j, k)]
        docs = sum(min(k, len(j)) + len(calls) for j, calls in queries)
        tokens = sum(sum(calls) * (min(k, len(j)) + 1) / (len(j) + 1) for j, calls in queries)
        rows.append(
            {
                "k": k,
                "stage1_documents": docs,
                "documents_saved": round(1 - docs / docs_full, 4) if docs_full else 0.0,
                "prompt_tokens_saved": round(1 - tokens / tokens_full, 4) if tokens_full else 0.0,
                "kappa": kappa([a != KEEP for a in full], [a != KEEP for a in screened]),
                "relabel_recall": _recall(full, screened, RELABEL),
                "filter_recall": _recall(full, screened, FILTER),
            }
        )
    good = [r["k"] for r in rows if r["kappa"] is not None and r["kappa"] >= threshold]
    return {
        "queries": len(queries),
        "judged": len(full),
        "stage1_documents_full": docs_full,
        "stage1_prompt_tokens_full": tokens_full,
        "threshold": threshold,
        "smallest_k": good[0] if good else None,
        "sweep": rows,
    }


def _recall(full: list[str], screened: list[str], action: str) -> float | None:
    had = [i for i, a in enumerate(full) if a == action]
    return round(sum(screened[i] == action for i in had) / len(had), 4) if had else None


def calibrate(output: str, threshold: float = 0.9, storage_options: dict | None = None) -> dict[str, Any]:
    """The sweep over an output folder's refined rows; writes ``calibrate.json`` and ``calibrate.png`` beside them."""
    import json

    out = OutputLayout(output, storage_options)
    rows = list(out.read_rows("refined", columns=["query_id", "decisions", "llm"]))
    result = {"output": output, **sweep(judged_queries(rows), threshold)}
    out.write_text(layout.CALIBRATE_JSON, json.dumps(result, indent=2))
    _picture(out, result)
    return result


def render(result: dict[str, Any]) -> str:
    """The table, within 80 columns."""
    na = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [
        f"calibrate: {result['queries']} queries, {result['judged']} judged negatives, "
        f"{result['stage1_documents_full']} Stage 1 documents",
        "",
        "   k  docs saved  tokens saved  kappa  relabel recall  filter recall",
    ]
    for r in result["sweep"]:
        lines.append(f"{r['k']:>4}  {r['documents_saved']:>10.1%}  {r['prompt_tokens_saved']:>12.1%}  {na(r['kappa']):>5}  "
                     f"{na(r['relabel_recall']):>14}  {na(r['filter_recall']):>13}")  # fmt: skip
    k = result["smallest_k"]
    lines += [
        "",
        f"smallest k with kappa >= {result['threshold']:g}: {k}"
        + (f" (screen.top_k={k})" if k else " (none: keep the screen off)"),
        "tokens saved: prompt tokens shared evenly over documents (an upper bound)",
    ]
    return "\n".join(lines)


def _picture(out: OutputLayout, result: dict[str, Any]) -> None:
    import tempfile
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["sweep"]
    ks = [r["k"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for key, label, style in (("kappa", "kappa vs full labels", "-o"), ("relabel_recall", "relabel recall", "--s"),
                              ("filter_recall", "filter recall", "--^"), ("prompt_tokens_saved", "Stage 1 prompt tokens saved", ":d")):  # fmt: skip
        ax.plot(ks, [r[key] if r[key] is not None else float("nan") for r in rows], style, label=label)
    ax.axhline(result["threshold"], color="grey", lw=0.8)
    if result["smallest_k"]:
        ax.axvline(result["smallest_k"], color="#2a9d8f", lw=0.8)
    ax.set_xlabel("screen.top_k (negatives a query sent to Stage 1)")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(f"Teacher screen calibration: {result['queries']} queries, {result['judged']} judged negatives")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / layout.CALIBRATE_PNG
        fig.savefig(path, dpi=100)
        out.put(str(path), layout.CALIBRATE_PNG)
    plt.close(fig)
