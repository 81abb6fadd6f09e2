"""Writes the demo's input and its recorded LLM outputs (conf/demo.yaml) from RLHN's published
verdicts on 25 MS MARCO queries: labels a strong model gave, replayed through the real pipeline
without a GPU or network.

    python jobs/dev/rlhn_demo.py   # writes arhn_ray/demo/ (not under samples/: conf/local.yaml reads that folder)

Source (tests/data/SOURCES.md): castorini/rlhn, commit fa28a16, msmarco_passage.stage_1.gpt-4o-mini.jsonl
(25 queries, each negative judged by GPT-4o-mini) and msmarco_passage.stage_2.gpt-4o.jsonl (the 19 with a
flagged negative, judged again by GPT-4o). The last verdict of a query decides: documents under
``<better>`` ("preferred over or equally as ground truth") are ranked above the positive (relabel),
those under ``<worse>`` ("relevant but not preferred") below it (filter), the rest answer NO_ANSWER
(keep). ARHN's snippets are not in RLHN's data: a recorded snippet is the passage's first 60
characters, so the labels are RLHN's and the snippets placeholders.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from arhn_ray.method.labeling import plan_row
from arhn_ray.method.options import MethodOptions

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "tests" / "data"
FIELDS = ("query_id", "query", "positive_passages", "negative_passages", "subset")
_DOC = re.compile(r"Doc\s*\((\d+)\)", re.IGNORECASE)


def verdict(response: str, tag: str) -> set[int]:
    """1-based negatives under ``<tag>`` in an RLHN verdict."""
    m = re.search(rf"<{tag}>(.*?)</{tag}>", response or "", re.S | re.I)
    return {int(i) for i in _DOC.findall(m.group(1))} if m else set()


def blocks(snippets: list[str | None]) -> str:
    return "\n\n".join(f"[[[doc{i}]]]\n{s or 'NO_ANSWER'}\n[[[/doc{i}]]]" for i, s in enumerate(snippets, 1))


def snippet(passage: dict) -> str:
    return passage["text"][:60]


def recordings(row: dict, better: set[int], worse: set[int], options: MethodOptions) -> list[dict]:
    """Stage 1 and Stage 2 outputs for each chunk the pipeline will ask for."""
    rec = []
    for c, members in enumerate(plan_row(row, options).chunks):
        said = [i + 1 in better or i + 1 in worse for i in members]
        found = [snippet(row["negative_passages"][i]) if s else None for i, s in zip(members, said)]
        rec.append(
            {"query_id": row["query_id"], "stage": 1, "chunk": c, "text": blocks([snippet(row["positive_passages"][0]), *found])}
        )
        ranked = [i for i, s in zip(members, said) if s]  # Stage 2's [2], [3], ...: the negatives with a snippet
        if ranked:
            number = {i: k for k, i in enumerate(ranked, 2)}
            order = (
                [f"[{number[i]}]" for i in ranked if i + 1 in better]
                + ["[1]"]
                + [f"[{number[i]}]" for i in ranked if i + 1 not in better]
            )
            rec.append({"query_id": row["query_id"], "stage": 2, "chunk": c, "text": " > ".join(order)})
    return rec


def main(root: Path = ROOT) -> None:
    stage1 = [json.loads(line) for line in open(SOURCE / "rlhn_msmarco_passage.stage_1.gpt-4o-mini.jsonl")]
    final = {r["query_id"]: r["response"] for r in stage1}
    final.update({r["query_id"]: r["response"] for line in open(SOURCE / "rlhn_msmarco_passage.stage_2.gpt-4o.jsonl")
                  for r in [json.loads(line)]})  # fmt: skip
    rows = [{k: r[k] for k in FIELDS} for r in stage1]
    options = MethodOptions()  # the paper's N = 10, as conf/demo.yaml runs it
    (root / "arhn_ray" / "demo" / "rlhn_judged").mkdir(parents=True, exist_ok=True)
    with open(root / "arhn_ray" / "demo" / "rlhn_judged" / "msmarco_passage.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    with open(root / "arhn_ray" / "demo" / "recorded_rlhn_gpt4o.jsonl", "w") as f:
        for r in rows:
            f.writelines(json.dumps(x) + "\n" for x in recordings(r, verdict(final[r["query_id"]], "better"),
                                                                  verdict(final[r["query_id"]], "worse"), options))  # fmt: skip
    print(f"wrote {len(rows)} rows and their recorded outputs")


if __name__ == "__main__":
    main()
