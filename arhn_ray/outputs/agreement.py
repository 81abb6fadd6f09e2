"""Agreement of ARHN's labels with reference judgments: Cohen's kappa (the paper's Table 3).

Reference formats:
- JSONL or CSV rows ``{query_id, docid, label}``, label ``false_negative`` or ``negative``;
- RLHN verdict JSONL (``response`` with ``<better>[Doc (i), ...]</better>``, ``Doc (i)`` being the
  1-based index into ``negative_passages``): documents under ``<better>`` are false negatives,
  the others negatives. A stage-2 verdict file decides the queries it holds.

- another output folder (``arhn-ray agreement OUT_A --reference OUT_B``, e.g. ARHN against the
  TopK-PercPos baseline): the decisions themselves are compared, relabel / filter / keep.
- a refined dataset in Tevatron / RLHN rows (parquet or JSONL, local, ``s3://`` or ``hf://``, such
  as RLHN's published ``rlhn/rlhn-680K``): for each negative the output judged, its docid among the
  reference row's positives is a relabel, among its negatives a keep, absent a removal; ARHN's
  filter is a removal. Queries the reference lacks are counted, not compared.

A negative filtered as ``duplicate_of_positive`` *is* the positive, so it counts as a false
negative whichever actions ``positive_actions`` names: it was removed only to avoid listing the
positive twice.
"""

from __future__ import annotations

import csv
import json
import re
from collections import defaultdict
from typing import Any

from arhn_ray.data import layout
from arhn_ray.data.layout import OutputLayout
from arhn_ray.method.labeling import UNJUDGED

FALSE_NEGATIVE, NEGATIVE = "false_negative", "negative"
ACTIONS = ["relabel", "filter", "keep"]
COUNT_AS = {"relabel": {"relabel"}, "relabel+filter": {"relabel", "filter"}}  # ARHN actions that mean "false negative"
LABELS = [FALSE_NEGATIVE, NEGATIVE]
_BETTER = re.compile(r"<better>(.*?)</better>", re.DOTALL | re.IGNORECASE)
_DOC = re.compile(r"Doc\s*\((\d+)\)", re.IGNORECASE)


def _rlhn_labels(row: dict) -> dict[tuple[str, str], str]:
    match = _BETTER.search(row.get("response") or "")
    better = {int(i) for i in _DOC.findall(match.group(1))} if match else set()
    return {
        (row["query_id"], neg["docid"]): FALSE_NEGATIVE if i in better else NEGATIVE
        for i, neg in enumerate(row["negative_passages"], 1)
    }


def load_reference(path: str) -> tuple[dict[tuple[str, str], str], dict[str, str]]:
    """(query_id, docid) -> label, and query_id -> subset where the file says."""
    labels: dict[tuple[str, str], str] = {}
    subsets: dict[str, str] = {}
    if path.endswith(".csv"):
        with open(path, newline="", encoding="utf-8") as f:
            rows: list[dict[str, Any]] = list(csv.DictReader(f))
    else:
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    for n, row in enumerate(rows, 1):
        if "response" in row and "negative_passages" in row:
            labels.update(_rlhn_labels(row))
            subsets[row["query_id"]] = row.get("subset") or "default"
            continue
        label = str(row.get("label", "")).strip()
        if label not in LABELS:
            raise ValueError(f"{path}: row {n}: label {label!r} is not one of {', '.join(LABELS)}")
        labels[(str(row["query_id"]), str(row["docid"]))] = label
    return labels, subsets


def agreement(
    output: str, reference: str, stage2: str | None = None, positive_actions: str = "relabel", storage_options: dict | None = None
) -> dict[str, Any]:
    """Kappa per subset and overall over the negatives present in both, with confusion matrices."""
    ref, ref_subsets = load_reference(reference)
    if stage2:
        override, more = load_reference(stage2)
        decided = {q for q, _ in override}
        ref = {k: v for k, v in ref.items() if k[0] not in decided}
        ref.update(override)
        ref_subsets.update(more)
    positive = COUNT_AS[positive_actions]
    pairs: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for row in OutputLayout(output, storage_options).read_rows("refined"):
        subset = row.get("subset") or ref_subsets.get(row["query_id"], "default")
        for d in row["decisions"]:
            key = (row["query_id"], d["docid"])
            if key in ref and d["action"] != UNJUDGED:  # past N: no label of ARHN's to compare
                is_fn = d["action"] in positive or d["reason"] == "duplicate_of_positive"
                ours = FALSE_NEGATIVE if is_fn else NEGATIVE
                pairs[subset].append((ref[key], ours))
    result: dict[str, Any] = {"count_as_false_negative": sorted(positive), "subsets": {}}
    everything = [p for ps in pairs.values() for p in ps]
    for name, ps in sorted(pairs.items()):
        result["subsets"][name] = _kappa(ps)
    result["overall"] = _kappa(everything)
    return result


def decision_agreement(output: str, reference: str, storage_options: dict | None = None) -> dict[str, Any]:
    """Kappa of two outputs' decisions (relabel / filter / keep) over the negatives both decided."""
    ref = {(row["query_id"], d["docid"]): d["action"] for row in OutputLayout(reference, storage_options).read_rows("refined")
           for d in row["decisions"]}  # fmt: skip
    pairs: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for row in OutputLayout(output, storage_options).read_rows("refined"):
        for d in row["decisions"]:
            if (row["query_id"], d["docid"]) in ref and UNJUDGED not in (d["action"], ref[(row["query_id"], d["docid"])]):
                pairs[row.get("subset") or "default"].append((ref[(row["query_id"], d["docid"])], d["action"]))
    everything = [p for ps in pairs.values() for p in ps]
    return {"compared": "decisions", "reference": reference, "subsets": {n: _kappa(ps, ACTIONS) for n, ps in sorted(pairs.items())},
            "overall": _kappa(everything, ACTIONS)}  # fmt: skip


ROW_LABELS = ["relabel", "keep", "removed"]  # a refined dataset's verdict on a negative, by where its docid went


def is_row_dataset(path: str, storage_options: dict | None = None) -> bool:
    """A refined dataset in Tevatron/RLHN rows, not a label or verdict file: parquet, a folder, an
    ``hf://`` path, or JSONL whose first row has ``positive_passages`` and no ``response``."""
    from arhn_ray.data.readers import filesystem

    if path.startswith("hf://") or path.endswith(".parquet"):
        return True
    if path.endswith(".csv"):
        return False
    fs, root = filesystem(path, storage_options)
    if fs.isdir(root):
        return True
    with fs.open(root, "rt", encoding="utf-8") as f:
        first = next((line for line in f if line.strip()), "{}")
    row = json.loads(first)
    return "positive_passages" in row and "response" not in row


def rows_agreement(output: str, reference: str, storage_options: dict | None = None) -> dict[str, Any]:
    """Kappa of the output's labels (relabel / keep / filter as removed) against where a refined
    dataset put each judged negative, per subset and overall, with the confusion table."""
    from arhn_ray.data.rows import dataset_rows
    from arhn_ray.method.labeling import NOT_JUDGED, SCREENED

    out = OutputLayout(output, storage_options)
    ours = {r["query_id"] for r in out.read_rows("refined", columns=["query_id"])}
    ref: dict[str, tuple[set[str], set[str]]] = {}
    for row in dataset_rows(reference, storage_options):
        if row["query_id"] in ours:
            ref[row["query_id"]] = (
                {p["docid"] for p in row["positive_passages"]},
                {p["docid"] for p in row["negative_passages"]},
            )
    pairs: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for row in out.read_rows("refined", columns=["query_id", "subset", "decisions"]):
        if row["query_id"] not in ref:
            continue
        positives, negatives = ref[row["query_id"]]
        for d in row["decisions"]:
            if d["reason"] in NOT_JUDGED and d["reason"] != SCREENED:  # past N or a duplicate of the positive: not a judgment
                continue
            theirs = "relabel" if d["docid"] in positives else "keep" if d["docid"] in negatives else "removed"
            pairs[row.get("subset") or "default"].append((theirs, "removed" if d["action"] == "filter" else d["action"]))
    everything = [p for ps in pairs.values() for p in ps]
    return {"compared": "rows", "reference": reference, "queries": len(ref), "queries_missing": len(ours) - len(ref),
            "subsets": {n: _kappa(ps, ROW_LABELS) for n, ps in sorted(pairs.items())},
            "overall": _kappa(everything, ROW_LABELS)}  # fmt: skip


def is_output(path: str, storage_options: dict | None = None) -> bool:
    out = OutputLayout(path, storage_options)
    return out.fs.isdir(out.root) and out.exists(layout.PARTS)


def _kappa(pairs: list[tuple[str, str]], labels: list[str] = LABELS) -> dict[str, Any]:
    from sklearn.metrics import cohen_kappa_score, confusion_matrix

    if not pairs:
        return {"n": 0, "kappa": None, "confusion": None}
    ref, ours = zip(*pairs)
    # one class on both sides leaves kappa undefined (0/0): reported as n/a, not as a number
    kappa = None if len(set(ref) | set(ours)) < 2 else round(float(cohen_kappa_score(ref, ours, labels=labels)), 4)
    cm = confusion_matrix(ref, ours, labels=labels).tolist()
    return {"n": len(pairs), "kappa": kappa, "confusion": {"rows_reference_cols_arhn": labels, "matrix": cm}}


def render(result: dict[str, Any]) -> str:
    if result.get("compared") == "decisions":
        return _render_decisions(result)
    if result.get("compared") == "rows":
        return _render_rows(result)
    lines = [f"Cohen's kappa (ARHN false negative = {' or '.join(result['count_as_false_negative'])})", ""]
    lines.append("| subset | pairs | kappa | ref FN & ARHN FN | ref FN & ARHN neg | ref neg & ARHN FN | ref neg & ARHN neg |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in [*result["subsets"].items(), ("**overall**", result["overall"])]:
        m = r["confusion"]["matrix"] if r["confusion"] else [[0, 0], [0, 0]]
        kappa = "n/a" if r["kappa"] is None else f"{r['kappa']:.4f}"
        lines.append(f"| {name} | {r['n']} | {kappa} | {m[0][0]} | {m[0][1]} | {m[1][0]} | {m[1][1]} |")
    return "\n".join(lines)


def _render_decisions(result: dict[str, Any]) -> str:
    lines = [
        f"Cohen's kappa of the decisions against {result['reference']} (rows: the reference's action, columns: this output's)",
        "",
    ]
    lines.append("| subset | pairs | kappa | " + " | ".join(f"{a} / {b}" for a in ACTIONS for b in ACTIONS) + " |")
    lines.append("|---|---:|---:|" + "---:|" * len(ACTIONS) ** 2)
    for name, r in [*result["subsets"].items(), ("**overall**", result["overall"])]:
        cells = [c for row in (r["confusion"]["matrix"] if r["confusion"] else [[0] * 3] * 3) for c in row]
        kappa = "n/a" if r["kappa"] is None else f"{r['kappa']:.4f}"
        lines.append(f"| {name} | {r['n']} | {kappa} | " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def _render_rows(result: dict[str, Any]) -> str:
    """Kappa per subset, then the overall confusion table (reference rows, ARHN columns): 80 columns."""
    lines = [f"Cohen's kappa against {result['reference']}", f"({result['queries']} queries compared; "
             f"{result['queries_missing']} of the output's are not in the reference)", "", "| subset | pairs | kappa |", "|---|---:|---:|"]  # fmt: skip
    for name, r in [*result["subsets"].items(), ("**overall**", result["overall"])]:
        kappa = "n/a" if r["kappa"] is None else f"{r['kappa']:.4f}"
        lines.append(f"| {name} | {r['n']} | {kappa} |")
    matrix = (result["overall"]["confusion"] or {}).get("matrix") or [[0] * 3] * 3
    lines += ["", "| reference \\ ARHN | " + " | ".join(ROW_LABELS) + " |", "|---|---:|---:|---:|"]
    lines += [f"| {label} | " + " | ".join(map(str, row)) + " |" for label, row in zip(ROW_LABELS, matrix)]
    return "\n".join(lines)
