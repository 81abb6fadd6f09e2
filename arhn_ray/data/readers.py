"""Input shards: find them (file, folder, glob, s3://) and map their rows to the RLHN shape.

RLHN / Tevatron rows pass through; FlagEmbedding rows (``query``, ``pos``, ``neg``) get stable
generated ids. Reading a shard, a part at a time, is arhn_ray/data/parts.py.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import fsspec

from arhn_ray.data.records import InvalidRow

FORMATS = ("auto", "rlhn", "flagembedding")
SHARD_SUFFIXES = (".parquet", ".jsonl", ".json")


def filesystem(path: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    if path.startswith("hf://"):
        from arhn_ray.data.hub import be_patient

        be_patient()
    fs, root = fsspec.core.url_to_fs(path, **(storage_options or {}))
    return fs, root


def _unstrip(fs: fsspec.AbstractFileSystem, path: str, original: str) -> str:
    return fs.unstrip_protocol(path) if "://" in original else path


def list_shards(path: str, storage_options: dict | None = None) -> list[str]:
    """Input shards under ``path`` (a file, a folder, or a glob), sorted, as full URIs."""
    fs, root = filesystem(path, storage_options)
    if any(c in root for c in "*?["):
        found = fs.glob(root)
    elif fs.isdir(root):
        found = [p for p in fs.find(root) if p.endswith(SHARD_SUFFIXES)]
    elif fs.exists(root):
        found = [root]
    else:
        raise FileNotFoundError(f"input.path {path!r}: no such file or folder")
    shards = sorted(_unstrip(fs, p, path) for p in found if p.endswith(SHARD_SUFFIXES))
    if not shards:
        raise FileNotFoundError(f"input.path {path!r}: no .parquet, .jsonl or .json files")
    return shards


def shard_name(uri: str) -> str:
    """The output name of a shard: its file name without the suffix."""
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    for suffix in SHARD_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _stable_id(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


def from_flagembedding(row: dict) -> dict:
    """A FlagEmbedding row as an RLHN row; ids are derived from the content, so they are stable."""
    query, pos, neg = row.get("query"), row.get("pos"), row.get("neg")
    for name, value in (("pos", pos), ("neg", neg)):
        if value is not None and not isinstance(value, list):
            raise InvalidRow(name, f"expected a list of strings, got {type(value).__name__}")
    qid = _stable_id(query, pos, neg)
    out = {
        "query_id": qid,
        "query": query,
        "positive_passages": None
        if pos is None
        else [{"docid": f"{qid}:pos:{i}", "title": "", "text": t} for i, t in enumerate(pos)],
        "negative_passages": [{"docid": f"{qid}:neg:{i}", "title": "", "text": t} for i, t in enumerate(neg or [])],
        "subset": row.get("subset") or "",  # else the file's name (data/rows.py); "type" is a task kind, not a dataset
    }
    return out


def to_canonical(row: Any, fmt: str) -> Any:
    """Map a decoded row to the RLHN shape according to ``input.format``."""
    if fmt == "flagembedding" or (fmt == "auto" and isinstance(row, dict) and "pos" in row and "positive_passages" not in row):
        if not isinstance(row, dict):
            raise InvalidRow("row", f"expected an object, got {type(row).__name__}")
        return from_flagembedding(row)
    return row
