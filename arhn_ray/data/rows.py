"""A part's rows, read and validated the one way every reader takes them: the job's read stage,
``arhn-ray plan`` and the smoke check. Each row is decoded, mapped to the RLHN shape
(``input.format``), validated (a bad row names its field), checked for a query id already seen in
its part, and given its file's name as ``subset`` when it carries none (FlagEmbedding's ``type`` is
a task kind such as ``normal``, not a dataset)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from arhn_ray.data.parts import Part, read_part
from arhn_ray.data.readers import to_canonical
from arhn_ray.data.records import InvalidRow, validate_row


@dataclass
class Row:
    index: int  # parquet: the row's number in its file; JSONL: its line's first byte
    raw: Any  # as decoded (a rejected row is kept in this form)
    row: dict | None  # the valid canonical row, or None
    field: str | None = None  # why not: the field ...
    reason: str | None = None  # ... and what is wrong with it


def read_rows(part: Part, fmt: str, max_passage_chars: int, storage_options: dict | None = None) -> Iterator[Row]:
    first_seen: dict[str, int] = {}
    for index, raw, error in read_part(part, storage_options):
        if error:
            yield Row(index, raw, None, "row", error)
            continue
        try:
            row = validate_row(to_canonical(raw, fmt), max_passage_chars)
            qid = row["query_id"]
            if qid in first_seen:
                raise InvalidRow("query_id", f"duplicate query_id {qid!r} (first at row {first_seen[qid]})")
            first_seen[qid] = index
        except InvalidRow as e:
            yield Row(index, raw, None, e.field, f"invalid {e.field}: {e.message}")
            continue
        row["subset"] = row.get("subset") or part.shard
        yield Row(index, raw, row)


def dataset_rows(
    path: str, storage_options: dict | None = None, fmt: str = "auto", max_passage_chars: int = 200_000
) -> Iterator[dict]:
    """The valid rows of a dataset in any format refine reads (a file, folder, glob, ``s3://`` or
    ``hf://`` path), a part at a time; an ``hf://`` path is pinned to its commit first, as refine
    pins its input. Used for datasets that stand beside an output: ``evaluate --arm``, ``agreement
    --reference``."""
    from arhn_ray.data.hub import is_hub, pin
    from arhn_ray.data.parts import parts_to_run

    if is_hub(path):
        path, _ = pin(path, storage_options)
    parts, unreadable = parts_to_run(path, 2000, storage_options, None, done={})
    if unreadable:
        raise ValueError(f"{path}: unreadable: " + "; ".join(unreadable.values()))
    if not parts:
        raise ValueError(f"{path}: no parquet or JSONL file there")
    for p in parts:
        yield from (r.row for r in read_rows(p, fmt, max_passage_chars, storage_options) if r.row)
