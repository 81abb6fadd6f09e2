"""review.html at two output sizes side by side: the page stays the sample's size, its time grows with the rows.

Builds two synthetic refined outputs (N and 4 x N queries in parts of 500 rows, 25 negatives of
~60 words each, decisions mixed as a real run's are, two subsets), writes review.html over each
with the default sample, and prints for each: the time to write it, the page's size, the queries
and negatives on it, and the time to read the whole refined output once (every column) for
comparison. Neither the page's size nor its time may grow with the output (ratios ~1.0): the
sample comes from at most MAX_PARTS parts (20; N=10,000 is 20 parts, 4 x N 80), so a 680K-row
output (340 parts of the default 2,000 rows) costs what these do.

    python jobs/benchmarks/review.py [--queries 10000]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from arhn_ray.data.layout import OutputLayout  # noqa: E402
from arhn_ray.data.records import OUTPUT_SCHEMA  # noqa: E402
from arhn_ray.outputs.review import DEFAULT_SAMPLE, MAX_PARTS, write_review  # noqa: E402

WORDS = [f"w{i}" for i in range(3000)]
PART_ROWS = 500
ACTIONS = [("keep", "no_answer")] * 6 + [("filter", "answer_below_positive")] * 3 + [("relabel", "ranked_above_positive")]


def make_output(root: Path, queries: int, seed: int = 0) -> None:
    rng = random.Random(seed)

    def text() -> str:
        return " ".join(rng.choices(WORDS, k=60))

    for start in range(0, queries, PART_ROWS):
        rows = []
        for q in range(start, min(queries, start + PART_ROWS)):
            positive = {"docid": f"p{q}", "title": "", "text": text()}
            decisions, relabeled, kept = [], [], []
            for i in range(25):
                action, reason = rng.choice(ACTIONS)
                neg = {"docid": f"n{q}-{i}", "title": "", "text": text()}
                snippet = " ".join(neg["text"].split()[:8]) if action != "keep" else None
                decisions.append({"docid": neg["docid"], "action": action, "reason": reason, "snippet": snippet,
                                  "grounding": "exact" if snippet else None, "rank": 1 if action == "relabel" else None, "score": None})  # fmt: skip
                (relabeled if action == "relabel" else kept if action == "keep" else []).append(neg)
            rows.append({"query_id": f"q{q}", "query": "what is " + " ".join(rng.choices(WORDS, k=5)),
                         "positive_passages": [positive, *relabeled], "negative_passages": kept, "subset": f"s{q % 2}",
                         "decisions": decisions, "positive_snippet": " ".join(positive["text"].split()[:8]),
                         "positive_grounding": "exact", "positive_score": None, "llm": [], "provenance": None})  # fmt: skip
        folder = root / "refined" / "synthetic"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA), folder / f"rows-{start:010d}.parquet")


def measure(root: Path, queries: int) -> dict:
    make_output(root, queries)
    out = OutputLayout(str(root))
    written = write_review(out)
    started = time.perf_counter()
    rows = sum(1 for _ in out.read_rows("refined"))
    full_read = time.perf_counter() - started
    assert rows == queries
    return {"queries_in": queries, "seconds": written.seconds, "bytes": written.bytes, "on_page": written.queries,
            "negatives_on_page": written.negatives, "full_read_s": full_read}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=10_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        small = measure(Path(tmp) / "small", args.queries)
        big = measure(Path(tmp) / "big", 4 * args.queries)
    for r in (small, big):
        print(f"{r['queries_in']:>7,} queries: review.html {r['bytes'] / 1e6:.2f} MB ({r['on_page']} queries, {r['negatives_on_page']} "
              f"negatives) in {r['seconds']:.1f} s; reading every column once: {r['full_read_s']:.1f} s")  # fmt: skip
    print(f"page size, 4x the rows: x{big['bytes'] / small['bytes']:.2f} (goal ~1.0: bounded by the sample of {DEFAULT_SAMPLE})")
    print(
        f"time, 4x the rows: x{big['seconds'] / small['seconds']:.2f}; review / full read: x{big['seconds'] / big['full_read_s']:.2f}"
    )
    print(f"680K rows: at most {MAX_PARTS} parts are read, so about {big['seconds']:.1f} s here (one core, the local disk)")


if __name__ == "__main__":
    main()
