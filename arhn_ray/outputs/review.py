"""``review.html``: a page to look at the labels before training on them, and to judge them.

A sample of the output's queries, stratified by what happened to them (a negative relabeled, one
filtered, everything kept) and by subset, drawn from at most MAX_PARTS parts spread over the
shards: a 680K-row output gives a page of the same size, in about the same time, as a small one. For each query: the positive with its snippet marked inside the passage, each negative
with its decision, snippet, Stage 2 rank (or the teacher's score). The reviewer marks negatives
(false negative: yes / no / unsure) and downloads the verdicts as JSONL that ``arhn-ray agreement
--reference`` reads: the paper's Table 3 with the reviewer as the reference.

One self-contained file (no server, no network): the data is embedded as JSON and drawn with
``textContent``, so a passage is always text, never markup. It reads the output folder only: a
refined row keeps its filtered negatives (``removed_passages``), so the input may be gone.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq

from arhn_ray.data import layout
from arhn_ray.data.layout import OutputLayout
from arhn_ray.data.records import original_row

DEFAULT_SAMPLE = 200
MAX_PARTS = 20  # the sample comes from at most this many parts, spread over the shards: bounded work at any size
SHOWN = {"relabel": "relabeled", "filter": "filtered", "keep": "kept"}


@dataclass
class Written:
    path: str
    queries: int
    negatives: int
    bytes: int
    seconds: float


def decision_of(d: dict) -> str:
    """A negative's decision as the page shows it; a duplicate of the positive is its own kind."""
    return "duplicate" if d["reason"] == "duplicate_of_positive" else SHOWN[d["action"]]


def stratum(decisions: list[dict]) -> str:
    """What happened to a query, its most telling decision first."""
    shown = {decision_of(d) for d in decisions if d["action"] in SHOWN}
    return next((s for s in ("relabeled", "filtered", "duplicate") if s in shown), "kept")


def some_parts(out: OutputLayout, rng: random.Random, most: int = MAX_PARTS) -> list[str]:
    """At most ``most`` refined part files, picked at random a shard at a time in turn, so that every
    shard (most often one subset each) has parts in the sample while there are fewer shards than ``most``."""
    by_shard: dict[str, list[str]] = defaultdict(list)
    for path in out.files("refined"):
        by_shard[path.rsplit("/", 2)[-2]].append(path)
    for paths in by_shard.values():
        rng.shuffle(paths)
    picked: list[str] = []
    while len(picked) < most and any(by_shard.values()):
        for shard in sorted(by_shard):
            if by_shard[shard] and len(picked) < most:
                picked.append(by_shard[shard].pop())
    return sorted(picked)


def choose(out: OutputLayout, sample: int, seed: int, subsets: list[str] | None = None) -> dict[str, set[str]]:
    """``sample`` query ids by refined part file, drawn evenly from each (subset, stratum) of a
    few parts (``some_parts``): a reservoir per stratum in one pass over three columns, then one
    from each stratum in turn."""
    rng = random.Random(seed)
    reservoirs: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    seen: dict[tuple[str, str], int] = defaultdict(int)
    for path in some_parts(out, rng):
        with out.fs.open(path, "rb") as f:
            table = pq.read_table(f, columns=["query_id", "subset", "decisions"])
        for qid, subset, decisions in zip(*(table.column(c).to_pylist() for c in ("query_id", "subset", "decisions"))):
            if subsets and subset not in subsets:
                continue
            key = (subset or "default", stratum(decisions))
            seen[key] += 1
            pool = reservoirs[key]
            if len(pool) < sample:
                pool.append((path, qid))
            elif (j := rng.randrange(seen[key])) < sample:
                pool[j] = (path, qid)
    for pool in reservoirs.values():
        rng.shuffle(pool)
    chosen: dict[str, set[str]] = defaultdict(set)
    order = sorted(reservoirs)
    taken = 0
    while taken < sample and any(reservoirs[k] for k in order):
        for key in order:
            if reservoirs[key] and taken < sample:
                path, qid = reservoirs[key].pop()
                chosen[path].add(qid)
                taken += 1
    return dict(chosen)


def query_view(row: dict) -> dict[str, Any]:
    """One query as the page draws it, from the refined row alone (its removed passages included)."""
    original = original_row(row, missing_ok=True)  # an older output keeps no removed passages
    positives = original["positive_passages"]
    negatives = []
    for d, p in zip(row["decisions"], original["negative_passages"]):
        if d["action"] == "unjudged":  # past the first N: no LLM judged it, nothing to review
            continue
        negatives.append({"docid": d["docid"], "title": p.get("title") or "", "text": p.get("text"),
                          "decision": decision_of(d), "reason": d["reason"], "snippet": d["snippet"],
                          "grounding": d["grounding"], "rank": d["rank"], "score": d.get("score")})  # fmt: skip
    return {
        "query_id": row["query_id"],
        "query": row["query"],
        "subset": row.get("subset") or "default",
        "stratum": stratum(row["decisions"]),
        "positives": [{"docid": p["docid"], "title": p.get("title") or "", "text": p["text"]} for p in positives],
        "positive_snippet": row["positive_snippet"],
        "positive_score": row.get("positive_score"),
        "negatives": negatives,
    }


def review_data(out: OutputLayout, sample: int = DEFAULT_SAMPLE, seed: int = 0,
                subsets: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """The page's data: the sampled queries, and the counts of the whole output for its header."""
    import json

    chosen = choose(out, sample, seed, subsets)
    queries = []
    for path, ids in sorted(chosen.items()):
        with out.fs.open(path, "rb") as f:
            rows = pq.read_table(f).to_pylist()
        queries += [query_view(r) for r in rows if r["query_id"] in ids]
    try:
        stats = json.loads(out.read_text(layout.STATS))
    except FileNotFoundError:
        stats = {}
    return {"output": out.path, "sample": sample, "seed": seed, "queries": queries,
            "overall": stats.get("overall", {}), "labels_from": stats.get("labels_from") or stats.get("model") or "",
            "method": stats.get("method", "arhn")}  # fmt: skip


def render(data: dict[str, Any]) -> str:
    from importlib.resources import files

    import jinja2

    template = (files("arhn_ray") / "templates" / "review.html.j2").read_text(encoding="utf-8")
    return jinja2.Environment(autoescape=True).from_string(template).render(data=data, title=f"arhn-ray review: {data['output']}")


def write_review(out: OutputLayout, sample: int = DEFAULT_SAMPLE, seed: int = 0,
                 subsets: list[str] | None = None) -> Written:  # fmt: skip
    """``review.html`` into the output folder, local or remote, from the output alone.

    Example:
        >>> write_review(OutputLayout("out/local"), sample=100).queries
        8
    """
    started = time.perf_counter()
    data = review_data(out, sample, seed, subsets)
    html = render(data)
    out.write_text(layout.REVIEW, html)
    negatives = sum(len(q["negatives"]) for q in data["queries"])
    return Written(out.file(layout.REVIEW), len(data["queries"]), negatives, len(html.encode()), time.perf_counter() - started)
