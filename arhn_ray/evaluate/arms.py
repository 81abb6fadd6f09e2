"""Evaluate's arms and the rows each trains on, so that arms differ only in their labels: every
arm is restricted to the queries the refined output holds (a row the refine rejected trains in
no arm), and any refined dataset can stand beside them as an extra arm (``--arm NAME=PATH``:
RLHN's published ``rlhn/rlhn-680K``, another tool's output, another run), read as refine reads
input (parquet or JSONL, local, ``s3://`` or ``hf://``, Tevatron/RLHN or FlagEmbedding rows).

Example:
    >>> extra_arms(["rlhn=hf://datasets/rlhn/rlhn-680K@<commit>"])
    {'rlhn': 'hf://datasets/rlhn/rlhn-680K@<commit>'}
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from arhn_ray.data.layout import OutputLayout
from arhn_ray.data.rows import dataset_rows

__all__ = ["BUILT_IN", "dataset_rows", "extra_arms", "only", "output_queries"]

BUILT_IN = ("zero_shot", "original", "refined", "topk_percpos")


def extra_arms(specs: list[str] | None) -> dict[str, str]:
    """``NAME=PATH`` pairs as a mapping; a bad name or a repeated one is an error naming it."""
    arms: dict[str, str] = {}
    for spec in specs or []:
        name, sep, path = spec.partition("=")
        name = name.strip()
        if not sep or not name or not path:
            raise ValueError(f"--arm {spec!r}: expected NAME=PATH, e.g. rlhn=hf://datasets/rlhn/rlhn-680K")
        if name in BUILT_IN or name in arms or not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"--arm {spec!r}: {name!r} is taken or not a plain name (the built-in arms: {', '.join(BUILT_IN)})")
        arms[name] = path
    return arms


def output_queries(out: OutputLayout) -> set[str]:
    """The query ids of the output's refined rows: the queries every arm trains on."""
    return {r["query_id"] for r in out.read_rows("refined", columns=["query_id"])}


def only(rows: Iterable[dict], queries: set[str]) -> Iterator[dict]:
    return (r for r in rows if r["query_id"] in queries)
