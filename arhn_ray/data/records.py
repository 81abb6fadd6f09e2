"""Row schemas (input, refined output, rejected output) and validation that names the bad field.

Input rows follow the RLHN / Tevatron schema. ``validate_row`` turns a raw mapping into a
canonical row, or says which field is wrong; it never raises.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import pyarrow as pa

from arhn_ray.method.decisions import Decision, LlmCall

PASSAGE = pa.struct([("docid", pa.string()), ("title", pa.string()), ("text", pa.string())])
_ARROW = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}


def arrow_struct(cls: type) -> pa.StructType:
    """The Arrow struct of a record dataclass (method/decisions.py): its fields in order, each of its
    type (a field's ``metadata["arrow"]`` names a narrower one), all nullable."""
    import typing

    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        hint = hints[f.name]
        base = next((t for t in typing.get_args(hint) if t is not type(None)), hint)
        out.append((f.name, pa.type_for_alias(f.metadata["arrow"]) if "arrow" in f.metadata else _ARROW[base]))
    return pa.struct(out)


DECISION = arrow_struct(Decision)
LLM_CALL = arrow_struct(LlmCall)
REMOVED = "removed_passages"
PROVENANCE = pa.struct(
    [
        ("model", pa.string()),
        ("prompt_version", pa.string()),
        ("prompt_sha256", pa.string()),
        ("variant", pa.string()),  # arhn's rf / relabel / filter, or topk_percpos
        ("method_hash", pa.string()),  # the method options, prompts and model a row was refined with
        ("arhn_ray_version", pa.string()),
    ]
)
INPUT_SCHEMA = pa.schema(
    [
        ("query_id", pa.string()),
        ("query", pa.string()),
        ("positive_passages", pa.list_(PASSAGE)),
        ("negative_passages", pa.list_(PASSAGE)),
        ("subset", pa.string()),
    ]
)
OUTPUT_SCHEMA = pa.schema(
    list(INPUT_SCHEMA)
    + [
        pa.field("decisions", pa.list_(DECISION)),
        # every input negative the row no longer lists (filtered, duplicates, past N): the output is self-contained
        pa.field(REMOVED, pa.list_(PASSAGE)),
        pa.field("positive_snippet", pa.string()),
        pa.field("positive_grounding", pa.string()),  # the anchor snippet's grounding (ungrounded: ranked as the model wrote it)
        pa.field("positive_score", pa.float64()),  # the TopK-PercPos teacher's score of the anchor positive; null for ARHN
        pa.field("llm", pa.list_(LLM_CALL)),
        pa.field("provenance", PROVENANCE),
    ]
)


def original_row(refined: dict, missing_ok: bool = False) -> dict:
    """The input row a refined row came from, from the refined row alone (method/decisions.py's rules):
    what ``review``, ``relabel`` and evaluate's original arm read instead of the input.

    Args:
        refined: a row of ``refined/``.
        missing_ok: a negative the row does not keep (an output written before ``removed_passages``)
            comes back with ``text`` None instead of raising: the review page shows it unread.

    Example:
        >>> original_row(refined)["negative_passages"] == input_row["negative_passages"]
        True
    """
    decisions = refined.get("decisions") or []
    relabeled = {d["docid"] for d in decisions if d["action"] == "relabel"}
    pool = {p["docid"]: p for p in [*refined["positive_passages"], *refined["negative_passages"], *(refined.get(REMOVED) or [])]}
    missing = [d["docid"] for d in decisions if d["docid"] not in pool]
    if missing and missing_ok:
        pool.update({docid: {"docid": docid, "title": "", "text": None} for docid in missing})
    elif missing:
        raise ValueError(
            f"query {refined['query_id']}: negative {missing[0]} is not in the row (an output written before "
            f"{REMOVED} existed keeps no removed passages: refine it again)"
        )
    return {
        "query_id": refined["query_id"],
        "query": refined["query"],
        "positive_passages": [p for p in refined["positive_passages"] if p["docid"] not in relabeled],
        "negative_passages": [pool[d["docid"]] for d in decisions],
        "subset": refined.get("subset") or "",
    }


REJECTED_SCHEMA = pa.schema(
    [
        ("query_id", pa.string()),
        ("source", pa.string()),
        ("row_index", pa.int64()),
        ("field", pa.string()),
        ("reason", pa.string()),
        ("row", pa.string()),  # the input row as JSON, so nothing is lost
    ]
)


class InvalidRow(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _string(row: dict, name: str, required: bool = True) -> str | None:
    value = row.get(name)
    if value is None:
        if required:
            raise InvalidRow(name, "missing or null")
        return None
    if not isinstance(value, str):
        raise InvalidRow(name, f"expected a string, got {type(value).__name__}")
    if required and not value.strip():
        raise InvalidRow(name, "empty")
    return value


def _passages(row: dict, name: str, required: bool) -> list[dict]:
    """``required``: a non-empty list; otherwise the key must still be there (null or [] for none):
    a file without the column is a wrong input, not rows with nothing to clean."""
    if name not in row:
        raise InvalidRow(name, "missing (a row with no negatives holds an empty list)")
    value = row.get(name)
    if value is None:
        if required:
            raise InvalidRow(name, "missing or null")
        return []
    if not isinstance(value, (list, tuple)):
        raise InvalidRow(name, f"expected a list of passages, got {type(value).__name__}")
    out = []
    for i, p in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(p, dict):
            raise InvalidRow(where, f"expected a passage object, got {type(p).__name__}")
        docid = p.get("docid")
        if docid is None or (isinstance(docid, str) and not docid.strip()):
            raise InvalidRow(f"{where}.docid", "missing or empty")
        if not isinstance(docid, (str, int)) or isinstance(docid, bool):
            raise InvalidRow(f"{where}.docid", f"expected a string, got {type(docid).__name__}")
        text = p.get("text")
        if text is None:
            raise InvalidRow(f"{where}.text", "missing or null")
        if not isinstance(text, str):
            raise InvalidRow(f"{where}.text", f"expected a string, got {type(text).__name__}")
        if not text.strip():
            raise InvalidRow(f"{where}.text", "empty")
        title = p.get("title")
        if title is not None and not isinstance(title, str):
            raise InvalidRow(f"{where}.title", f"expected a string, got {type(title).__name__}")
        out.append({"docid": str(docid), "title": title or "", "text": text})
    if required and not out:
        raise InvalidRow(name, "empty list: a query needs at least one positive")
    return out


def validate_row(row: Any, max_passage_chars: int = 200_000) -> dict:
    """The canonical input row, or ``InvalidRow`` naming the field."""
    if not isinstance(row, dict):
        raise InvalidRow("row", f"expected an object, got {type(row).__name__}")
    canonical = {
        "query_id": _string(row, "query_id"),
        "query": _string(row, "query"),
        "positive_passages": _passages(row, "positive_passages", required=True),
        "negative_passages": _passages(row, "negative_passages", required=False),
        "subset": _string(row, "subset", required=False) or "",
    }
    seen: dict[str, str] = {}
    for name in ("positive_passages", "negative_passages"):
        for i, p in enumerate(canonical[name]):
            where = f"{name}[{i}]"
            if p["docid"] in seen:
                raise InvalidRow(f"{where}.docid", f"duplicate docid {p['docid']!r} (also {seen[p['docid']]})")
            seen[p["docid"]] = where
            if len(p["text"]) > max_passage_chars:
                raise InvalidRow(f"{where}.text", f"{len(p['text'])} characters, over the limit of {max_passage_chars}")
    return canonical
