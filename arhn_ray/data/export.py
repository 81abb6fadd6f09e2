"""Training files from a refined output, in the paper's shape: one positive, k hard negatives.

Policy, the same for every format, and the one ``arhn-ray evaluate`` trains on
(:func:`training_examples`):
- ``per-query`` (default, the paper's Section 4.3 and Tevatron's): one training instance a query
  an epoch, its positive drawn among the query's positives (the original ones and the relabeled
  ones) and its negatives drawn again for each epoch. A query ARHN gave three positives trains as
  often as one with a single positive, so two datasets of the same queries train the same number
  of steps and differ only in their labels; ``per-positive`` (one row per positive, all sharing
  the query's negatives: a query with three positives is seen three times an epoch) trains the
  relabeled data more than the original and mixes more training into any comparison;
- draws are without replacement from the kept negatives, with generators seeded by ``seed``,
  the epoch and the query id, so an export is reproducible row by row;
- a query with fewer kept negatives than asked: ``repeat`` (default) cycles through the ones it
  has; ``drop`` leaves the query out; ``keep`` writes the fewer negatives (not for
  sentence-transformers, whose columns are fixed). A query with no negative at all is left out
  under ``repeat`` and ``drop``.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from arhn_ray.data.layout import OutputLayout
from arhn_ray.method.passages import passage_text

FORMATS = ("sentence-transformers", "flagembedding", "tevatron")
SHORT_POLICIES = ("repeat", "drop", "keep")  # a query with fewer kept negatives than asked
EXAMPLE_RULES = ("per-query", "per-positive")  # training instances a query an epoch: one, or one a positive


def _rng(*key: object) -> random.Random:
    return random.Random(int(hashlib.sha1(":".join(map(str, key)).encode()).hexdigest()[:12], 16))


def sample_negatives(row: dict, k: int, seed: int, short: str, epoch: int = 0) -> tuple[list[dict] | None, str | None]:
    """The query's ``k`` negatives under the policy (drawn again each ``epoch``); or None and why
    the query gives no training row."""
    if not row["positive_passages"]:
        return None, "no positive"
    negatives = list(row["negative_passages"] or [])
    if not negatives and short != "keep":
        return None, "no kept negative"
    rng = _rng(seed, row["query_id"]) if epoch == 0 else _rng(seed, epoch, row["query_id"])
    rng.shuffle(negatives)
    if len(negatives) >= k or short == "keep":
        return negatives[:k], None
    if short == "drop":
        return None, f"fewer than {k} kept negatives (--short drop)"
    return [negatives[i % len(negatives)] for i in range(k)], None


def training_examples(row: dict, negatives: int, seed: int = 0, short: str = "repeat", query_prefix: str = "",
                      passage_prefix: str = "", rule: str = "per-query", epoch: int = 0) -> list[dict]:  # fmt: skip
    """A refined row's training examples for one epoch in sentence-transformers' shape (``anchor``,
    ``positive``, ``negative_1..k``): ``per-query`` one, its positive drawn among the row's (again
    each epoch); ``per-positive`` one per positive, all with the query's sampled negatives; none
    when the row has no positive or (``repeat``/``drop``) too few negatives.

    Example:
        >>> [e["positive"] for e in training_examples(row, 7, epoch=e)[:1] for e in range(3)]  # 3 positives
        ['second positive', 'first positive', 'second positive']
    """
    negs, _ = sample_negatives(row, negatives, seed, short, epoch)
    if not negs:
        return []
    shared = {f"negative_{i}": passage_prefix + passage_text(n) for i, n in enumerate(negs, 1)}
    positives = row["positive_passages"]
    if rule == "per-query":
        positives = [_rng("positive", seed, epoch, row["query_id"]).choice(positives)]
    elif rule != "per-positive":
        raise ValueError(f"examples rule {rule!r}: expected one of {', '.join(EXAMPLE_RULES)}")
    return [{"anchor": query_prefix + row["query"], "positive": passage_prefix + passage_text(pos), **shared}
            for pos in positives]  # fmt: skip


@dataclass
class Written:
    """What an export wrote, and which queries it left out and why (the terminal says so)."""

    rows: int = 0
    queries: int = 0
    dropped: Counter = field(default_factory=Counter)


def export(
    output: str,
    fmt: str,
    out: str,
    negatives: int = 7,
    seed: int = 0,
    prefixes: bool = False,
    short: str = "repeat",
    storage_options: dict | None = None,
    rule: str = "per-query",
) -> Written:
    """Write ``out`` (parquet or JSONL, by its extension); returns what it wrote and left out."""
    file_type(out)
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if fmt == "sentence-transformers" and short == "keep":
        raise ValueError("--short keep gives rows of different widths; sentence-transformers needs repeat or drop")
    qp, pp = ("query: ", "passage: ") if prefixes else ("", "")
    records: list[dict] = []
    written = Written()
    for row in OutputLayout(output, storage_options).read_rows("refined"):
        written.queries += 1
        negs, reason = sample_negatives(row, negatives, seed, short)
        if negs is None:
            written.dropped[reason] += 1  # type: ignore[index]
            continue
        if fmt == "sentence-transformers":
            records += training_examples(row, negatives, seed, short, qp, pp, rule)
            continue
        if fmt == "flagembedding":
            records.append(
                {
                    "query": qp + row["query"],
                    "pos": [pp + passage_text(p) for p in row["positive_passages"]],
                    "neg": [pp + passage_text(n) for n in negs],
                }
            )
        else:
            strip = lambda p: {"docid": p["docid"], "title": p.get("title") or "", "text": pp + p["text"]}  # noqa: E731
            records.append(
                {
                    "query_id": row["query_id"],
                    "query": qp + row["query"],
                    "positive_passages": [strip(p) for p in row["positive_passages"]],
                    "negative_passages": [strip(n) for n in negs],
                    "subset": row.get("subset") or "",
                }
            )
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    if file_type(out) == "parquet":
        pq.write_table(pa.Table.from_pylist(records), out)
    else:
        with open(out, "w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    written.rows = len(records)
    return written


def file_type(out: str) -> str:
    """``parquet`` or ``jsonl``, from ``--out``'s extension."""
    if out.endswith(".parquet"):
        return "parquet"
    if out.endswith((".jsonl", ".json")):
        return "jsonl"
    raise ValueError(f"--out {out!r}: name a .parquet or a .jsonl file")
