"""Each arm's training examples, written once beside the output (``evaluate/examples/<arm>/``) a
bounded chunk at a time, so that the driver's memory does not grow with the training set; the
trainer's workers read them back as a Ray Dataset. The example is export's
(:func:`arhn_ray.data.export.training_examples`, ``per-query``): users train on what evaluate
measures. The paper's protocol: each query gives one instance an epoch (its positive drawn among
its positives, its negatives drawn again), so every arm of the same queries trains the same
number of steps whatever its labels; the ``epochs`` instances are written together and the
trainer takes them in one shuffled pass (its no-duplicates sampler keeps a query's instances out
of one batch): the examples and steps of ``epochs`` epochs."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from arhn_ray.data import layout
from arhn_ray.data.export import training_examples
from arhn_ray.data.layout import OutputLayout

ORDER = "example"  # the example's number: every worker puts its copy in this order (Ray Data may not)
CHUNK = 20_000  # examples a file: ~ 20K x 9 passages of text, tens of MB


def write_examples(rows: Iterable[dict], out: OutputLayout, arm: str, negatives: int, seed: int, query_prefix: str = "",
                   passage_prefix: str = "", chunk: int = CHUNK, epochs: int = 1) -> tuple[str, int, int, int]:  # fmt: skip
    """Writes ``rows``' examples under ``evaluate/examples/<arm>/``; returns the folder (in the
    layout's filesystem), the examples written, the rows that gave some and the rows that gave
    none (no positive, or no kept negative)."""
    folder = f"examples/{arm}"
    if out.exists(layout.evaluate_file(folder)):
        out.fs.rm(out.file(layout.evaluate_file(folder)), recursive=True)
    out.fs.makedirs(out.file(layout.evaluate_file(folder)), exist_ok=True)
    written = skipped = queries = 0
    for n, batch in enumerate(_chunks(rows, negatives, seed, query_prefix, passage_prefix, chunk, epochs)):
        examples, some, none = batch
        skipped += none
        queries += some
        if examples:
            with out.fs.open(out.file(layout.evaluate_file(f"{folder}/part-{n:05d}.parquet")), "wb") as f:
                table = pa.Table.from_pylist(examples)
                pq.write_table(table.append_column(ORDER, pa.array(range(written, written + len(examples)), pa.int64())), f)
            written += len(examples)
    return out.file(layout.evaluate_file(folder)), written, queries, skipped


def _chunks(
    rows: Iterable[dict], negatives: int, seed: int, qp: str, pp: str, chunk: int, epochs: int
) -> Iterator[tuple[list[dict], int, int]]:
    examples: list[dict] = []
    some = none = 0
    for row in rows:
        made = [
            e for epoch in range(epochs) for e in training_examples(row, negatives, seed, "repeat", qp, pp, "per-query", epoch)
        ]
        some, none = some + bool(made), none + (not made)
        examples += made
        if len(examples) >= chunk:
            yield examples, some, none
            examples, some, none = [], 0, 0
    yield examples, some, none
