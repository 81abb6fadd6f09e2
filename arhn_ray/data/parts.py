"""Parts of input files: the unit of work, of memory and of resume.

At the paper's scale one file may hold 490K queries, so a file is split into parts of about
``input.part_rows`` rows, each read, refined and written on its own. Parquet files split along
their row groups (a row group larger than a part is read in slices); JSONL files split into byte
ranges, a line belonging to the part its first byte falls in. Planning reads only a parquet
file's footer or the first MiB of a JSONL file: no pass over the data before the work starts.

A part's id is derived from where it starts, so a rerun with the same ``part_rows`` plans the
same parts and can skip those already written.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow.parquet as pq

from arhn_ray.data.hub import open_pinned, revision
from arhn_ray.data.readers import filesystem, shard_name

SAMPLE_BYTES = 1 << 20  # what planning reads of a JSONL file to estimate its bytes per row
READ_BLOCK_BYTES = 4 << 20  # remote reads fetch this much at a time: a part over-reads at most one block
# no read-ahead cache: fsspec's default fetches a block past every read that misses it, and a
# JSONL part read line by line then moved ~2.8x its bytes from S3 (jobs/benchmarks/scale.py)
EXACT_READS = {"cache_type": "none"}


@dataclass(frozen=True)
class Part:
    """Rows ``[start, end)`` of a parquet file, or the lines starting in bytes ``[start, end)`` of a JSONL file."""

    uri: str
    kind: str  # parquet | jsonl
    start: int
    end: int
    rows: int | None  # exact for parquet; JSONL: known once read
    estimated_rows: int
    part_rows: int
    limit: int | None = None  # input.limit: stop after this many rows
    # the file's bytes, as planning saw them: a reader of a pinned hf:// file asks the Hub nothing else
    file_size: int | None = None

    @property
    def shard(self) -> str:
        return shard_name(self.uri)

    @property
    def id(self) -> str:
        return f"rows-{self.start:010d}" if self.kind == "parquet" else f"bytes-{self.start:013d}"

    @property
    def key(self) -> str:
        return f"{self.shard}/{self.id}"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Part:
        return cls(**json.loads(text))


def plan_parts(uri: str, part_rows: int, storage_options: dict | None = None, limit: int | None = None) -> list[Part]:
    """The parts of one input file, from its metadata (parquet) or its size and first MiB (JSONL)."""
    fs, path = filesystem(uri, storage_options)
    if path.endswith(".parquet"):
        with _open(fs, path, READ_BLOCK_BYTES) as f:
            meta, size = pq.ParquetFile(f).metadata, f.size
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        total = sum(sizes) if limit is None else min(sum(sizes), limit)
        return [
            Part(uri, "parquet", a, b, b - a, b - a, part_rows, file_size=size) for a, b in _row_ranges(sizes, part_rows, total)
        ]
    with _open(fs, path, SAMPLE_BYTES) as f:
        size, sample = f.size, f.read(SAMPLE_BYTES)
    lines = [line for line in sample.split(b"\n") if line.strip()]
    if len(sample) == size and not lines:
        return [Part(uri, "jsonl", 0, size, 0, 0, part_rows, limit, size)]
    # a sample ending mid-line still gives a fair mean; a JSONL row is never empty
    per_row = max(1, len(sample) // max(1, len(lines)))
    if limit is not None:
        return [Part(uri, "jsonl", 0, size, None, min(limit, max(1, size // per_row)), part_rows, limit, size)]
    step = max(per_row, per_row * part_rows)
    starts = list(range(0, size, step)) or [0]
    return [
        Part(uri, "jsonl", a, min(a + step, size), None, max(1, (min(a + step, size) - a) // per_row), part_rows, file_size=size)
        for a in starts
    ]


def _row_ranges(sizes: list[int], part_rows: int, total: int) -> Iterator[tuple[int, int]]:
    """Consecutive row groups up to ``part_rows`` rows; a larger row group in slices of ``part_rows``;
    nothing past row ``total``."""
    for a, b in _group_ranges(sizes, part_rows):
        if a >= total:
            return
        yield a, min(b, total)


def _group_ranges(sizes: list[int], part_rows: int) -> Iterator[tuple[int, int]]:
    start = end = 0
    for n in sizes:
        if end > start and end - start + n > part_rows:
            yield start, end
            start = end
        end += n
        while end - start > part_rows:
            yield start, start + part_rows
            start += part_rows
    if end > start:
        yield start, end


def read_part(part: Part, storage_options: dict | None = None) -> Iterator[tuple[int, Any, str | None]]:
    """``(row_index, row, error)`` for each row of the part; error names what could not be decoded.
    ``row_index`` is the row's number in a parquet file and its first byte's offset in a JSONL
    file: either names the row in its file, and neither needs the parts before it."""
    if revision(part.uri) and part.file_size is not None:

        def opener(block: int):
            return open_pinned(part.uri, part.file_size, block, storage_options)
    else:
        fs, path = filesystem(part.uri, storage_options)

        def opener(block: int):
            return _open(fs, path, block)

    if part.kind == "parquet":
        yield from _read_parquet(opener, part)
        return
    n = 0
    for offset, line in _lines(opener, part.start, part.end):
        if part.limit is not None and n >= part.limit:
            return
        if not line.strip():
            continue
        n += 1
        try:
            yield offset, json.loads(line.decode("utf-8")), None
        except UnicodeDecodeError as e:
            yield offset, line.decode("utf-8", errors="replace"), f"invalid UTF-8 at byte {e.start} of the line at byte {offset}"
        except json.JSONDecodeError as e:
            yield (
                offset,
                line.decode("utf-8", errors="replace"),
                f"invalid JSON: {e.msg.removesuffix(' at')} at column {e.colno} of the line at byte {offset}",
            )  # json's "Unterminated string starting at" would read "at at column"


def _open(fs, path: str, block: int):
    return fs.open(path, "rb", block_size=block, **EXACT_READS)


def _lines(opener: Callable[[int], Any], start: int, end: int) -> Iterator[tuple[int, bytes]]:
    """``(offset, line)`` for each line whose first byte is in ``[start, end)``, from sequential
    reads of a 32nd of the range (64 KiB to 4 MiB): the read passes ``end`` by one block at most."""
    block = min(READ_BLOCK_BYTES, max(1 << 16, (end - start) // 32))
    at = max(0, start - 1)  # the line holding byte start-1 belongs to the part before
    buffer, skip = b"", start > 0
    with opener(block) as f:
        f.seek(at)
        while True:
            chunk = f.read(block)
            pieces = (buffer + chunk).split(b"\n")
            buffer = pieces.pop() if chunk else b""  # a line not finished yet; at the end, the last one
            for line in pieces:
                if skip:
                    skip = False
                elif at >= end:
                    return
                else:
                    yield at, line
                at += len(line) + 1
            if not chunk:
                return


def _read_parquet(opener: Callable[[int], Any], part: Part) -> Iterator[tuple[int, Any, None]]:
    with opener(READ_BLOCK_BYTES) as f:
        parquet = pq.ParquetFile(f)
        groups, first, row = [], None, 0
        for i in range(parquet.metadata.num_row_groups):
            n = parquet.metadata.row_group(i).num_rows
            if row + n > part.start and row < part.end:
                groups.append(i)
                first = row if first is None else first
            row += n
        index = first or 0
        for batch in parquet.iter_batches(batch_size=256, row_groups=groups):
            if index + batch.num_rows <= part.start:
                index += batch.num_rows
                continue
            for row in batch.to_pylist():
                if index >= part.end:
                    return
                if index >= part.start:
                    yield index, row, None
                index += 1


def parts_to_run(
    input_path: str, part_rows: int, storage_options: dict | None, limit: int | None, done: dict[str, dict]
) -> tuple[list[Part], dict[str, str]]:
    """The parts of every input file that are not in ``done`` (part key -> manifest), and the files
    that cannot be read (shard -> reason). Reads parquet footers and the first MiB of JSONL files."""
    from arhn_ray.data.readers import list_shards

    by_name: dict[str, str] = {}
    for uri in list_shards(input_path, storage_options):
        name = shard_name(uri)
        if name in by_name:
            raise ValueError(f"input shards {by_name[name]} and {uri} would both write output {name!r}: rename one")
        by_name[name] = uri
    todo: list[Part] = []
    unreadable: dict[str, str] = {}
    for name, uri in by_name.items():
        try:
            parts = plan_parts(uri, part_rows, storage_options, limit)
        except Exception as e:
            unreadable[name] = f"{uri}: {type(e).__name__}: {e}"
            continue
        todo += [p for p in parts if p.key not in done]
    return todo, unreadable
