"""A BEIR-format evaluation folder (the layout BEIR's downloads have): ``corpus.jsonl``
(``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``, ``text``) and ``qrels/test.tsv``
(``query-id``, ``corpus-id``, ``score``, with a header line). A malformed folder fails naming the
file and the line. A set on the Hub, ``hf://datasets/BeIR/<name>`` (``corpus.jsonl[.gz]``,
``queries.jsonl[.gz]``, its judgments in ``BeIR/<name>-qrels`` as BEIR publishes them, or in a
``qrels/`` folder of its own), is fetched once per commit into the cache as such a folder. The corpus is checked a line at a time and not held: retrieve.py encodes it
from the file; the queries and judgments are small and are."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from arhn_ray.method.passages import passage_text

# the paper's out-of-domain sets (Table 1's *), by BEIR's names: their average is Avg. 7 (OOD)
OOD = frozenset({"bioasq", "robust04", "signal1m", "trec-news", "webis-touche2020", "trec-covid", "nfcorpus"})


class BeirError(ValueError):
    pass


@dataclass
class BeirSet:
    name: str  # the folder's name: BEIR's dataset name (scifact, nfcorpus, ...)
    corpus_path: str  # corpus.jsonl
    corpus_size: int
    queries: dict[str, str]  # only the queries the qrels judge
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: graded relevance}


def _jsonl(path: Path, required: tuple[str, ...]) -> Iterator[dict]:
    if not path.is_file():
        raise BeirError(f"{path}: missing (a BEIR folder holds corpus.jsonl, queries.jsonl and qrels/test.tsv)")
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
            yield row


def fetch_beir(uri: str, split: str = "test", cache: Path | None = None) -> Path:
    """The BEIR set at ``uri`` on the Hub as a local BEIR folder (``<cache>/beir/<commit>/<name>``),
    its files unpacked; fetched once per commit of the set."""
    import gzip
    import shutil

    from huggingface_hub import HfFileSystem
    from huggingface_hub.utils import parse_hf_uri

    from arhn_ray.bundled import cache_dir
    from arhn_ray.data.hub import pin

    at, sha = pin(uri)
    repo = parse_hf_uri(uri).id
    target = (cache or cache_dir() / "beir") / sha[:16] / repo.rsplit("/", 1)[-1]
    if (target / ".complete").exists():
        return target
    fs = HfFileSystem()
    root = fs._strip_protocol(at).rstrip("/")

    def fetch(candidates: list[str], dest: Path) -> None:
        found = next((c for c in candidates if fs.exists(c)), None)
        if found is None:
            raise BeirError(f"{uri}: no {' or '.join('hf://' + c for c in candidates)}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with fs.open(found, "rb") as raw, open(dest, "wb") as out:
            shutil.copyfileobj(gzip.GzipFile(fileobj=raw) if found.endswith(".gz") else raw, out, 1 << 20)

    fetch([f"{root}/corpus.jsonl", f"{root}/corpus.jsonl.gz"], target / "corpus.jsonl")
    fetch([f"{root}/queries.jsonl", f"{root}/queries.jsonl.gz"], target / "queries.jsonl")
    own = f"{root}/qrels/{split}.tsv"
    if fs.exists(own):
        fetch([own], target / "qrels" / f"{split}.tsv")
    else:
        try:
            qrels, _ = pin(f"hf://datasets/{repo}-qrels")
        except FileNotFoundError:
            raise BeirError(f"{uri}: no qrels/{split}.tsv in it and no judgments repository {repo}-qrels") from None
        fetch([f"{fs._strip_protocol(qrels).rstrip('/')}/{split}.tsv"], target / "qrels" / f"{split}.tsv")
    (target / ".complete").touch()
    return target


def load_beir(folder: str | Path, split: str = "test") -> BeirSet:
    folder = fetch_beir(folder, split) if str(folder).startswith("hf://") else Path(folder)
    queries = {str(r["_id"]): r["text"] for r in _jsonl(folder / "queries.jsonl", ("_id", "text"))}
    path = folder / "qrels" / f"{split}.tsv"
    if not path.is_file():
        raise BeirError(f"{path}: missing")
    qrels: dict[str, dict[str, int]] = {}
    first_line: dict[str, int] = {}  # a judged passage -> the qrels line naming it first
    with open(path, encoding="utf-8", newline="") as f:
        for n, row in enumerate(csv.reader(f, delimiter="\t"), 1):
            if n == 1 and row and not row[-1].lstrip("-").isdigit():
                continue  # the header
            if len(row) < 3:
                raise BeirError(f"{path}: line {n}: expected query-id, corpus-id, score")
            qid, doc, score = row[0], row[1], row[2]
            if qid not in queries:
                raise BeirError(f"{path}: line {n}: query-id {qid!r} is not in queries.jsonl")
            try:
                qrels.setdefault(qid, {})[doc] = int(score)
            except ValueError:
                raise BeirError(f"{path}: line {n}: score {score!r} is not an integer") from None
            first_line.setdefault(doc, n)
    if not qrels:
        raise BeirError(f"{path}: no judgments")
    size = 0
    for row in _jsonl(folder / "corpus.jsonl", ("_id", "text")):
        first_line.pop(str(row["_id"]), None)
        size += 1
    if first_line:
        doc, n = min(first_line.items(), key=lambda item: item[1])
        raise BeirError(f"{path}: line {n}: corpus-id {doc!r} is not in corpus.jsonl")
    return BeirSet(folder.name, str(folder / "corpus.jsonl"), size, {q: queries[q] for q in qrels}, qrels)


def read_corpus(beir: BeirSet) -> Iterator[tuple[str, str]]:
    """(id, the retriever's text) of each passage, streamed: for exact search in tests and benchmarks."""
    for row in _jsonl(Path(beir.corpus_path), ("_id", "text")):
        yield str(row["_id"]), passage_text(row)
