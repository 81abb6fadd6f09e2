"""A BEIR-format evaluation folder (the layout BEIR's downloads have): ``corpus.jsonl``
(``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``, ``text``) and ``qrels/test.tsv``
(``query-id``, ``corpus-id``, ``score``, with a header line). A malformed folder fails naming the
file and the line."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from arhn_ray.method.passages import passage_text


class BeirError(ValueError):
    pass


@dataclass
class BeirSet:
    corpus: dict[str, str]  # id -> "title text"
    queries: dict[str, str]  # only the queries the qrels judge
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: graded relevance}


def _jsonl(path: Path, required: tuple[str, ...]) -> list[dict]:
    if not path.is_file():
        raise BeirError(f"{path}: missing (a BEIR folder holds corpus.jsonl, queries.jsonl and qrels/test.tsv)")
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise BeirError(f"{path}: line {n}: invalid JSON ({e.msg})") from None
            missing = [k for k in required if k not in row]
            if missing:
                raise BeirError(f"{path}: line {n}: no {', '.join(missing)}")
            rows.append(row)
    return rows


def load_beir(folder: str | Path, split: str = "test") -> BeirSet:
    folder = Path(folder)
    corpus = {}
    for row in _jsonl(folder / "corpus.jsonl", ("_id", "text")):
        corpus[str(row["_id"])] = passage_text(row)
    queries = {str(r["_id"]): r["text"] for r in _jsonl(folder / "queries.jsonl", ("_id", "text"))}
    path = folder / "qrels" / f"{split}.tsv"
    if not path.is_file():
        raise BeirError(f"{path}: missing")
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8", newline="") as f:
        for n, row in enumerate(csv.reader(f, delimiter="\t"), 1):
            if n == 1 and row and not row[-1].lstrip("-").isdigit():
                continue  # the header
            if len(row) < 3:
                raise BeirError(f"{path}: line {n}: expected query-id, corpus-id, score")
            qid, doc, score = row[0], row[1], row[2]
            if qid not in queries:
                raise BeirError(f"{path}: line {n}: query-id {qid!r} is not in queries.jsonl")
            if doc not in corpus:
                raise BeirError(f"{path}: line {n}: corpus-id {doc!r} is not in corpus.jsonl")
            try:
                qrels.setdefault(qid, {})[doc] = int(score)
            except ValueError:
                raise BeirError(f"{path}: line {n}: score {score!r} is not an integer") from None
    if not qrels:
        raise BeirError(f"{path}: no judgments")
    return BeirSet(corpus, {q: queries[q] for q in qrels}, qrels)
