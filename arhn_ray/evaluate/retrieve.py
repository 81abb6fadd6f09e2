"""Dense retrieval for evaluation at BEIR's scale, as Tevatron does it: encode, then search, as
separate streamed steps. A Ray Data actor pool (GPU actors with ``evaluate.use_gpu``) encodes the
corpus once with every arm's model and writes the embeddings beside the output
(``evaluate/embeddings/<set>/``); FAISS then takes each query's exact top ``k`` (inner product
of normalized embeddings: cosine) a block of passages at a time, so the driver's memory is a
block and the queries' heaps, not the corpus (MS MARCO's 8.8M passages are 27 GB of fp32
embeddings, and their scores against 7K queries 246 GB)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from arhn_ray.method.passages import passage_text

BLOCK = 65_536  # passages a search step holds: 65K x 768 x 4 bytes = 201 MB for E5-base


class Encoder:
    """A Ray Data actor holding every arm's model: each passage is read once and encoded by each."""

    def __init__(self, models: dict[str, Any], prefix: str, max_seq_len: int, batch_size: int, use_gpu: bool):
        import torch
        from sentence_transformers import SentenceTransformer

        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.models, self.prefix, self.batch_size = {}, prefix, batch_size
        for arm, ref in models.items():
            if hasattr(ref, "as_directory"):  # a Ray Train checkpoint, on the output's storage
                with ref.as_directory() as folder:
                    model = SentenceTransformer(folder, device=device)
            else:
                model = SentenceTransformer(ref, device=device)
            model.max_seq_length = max_seq_len
            self.models[arm] = model.half() if device == "cuda" else model

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = [self.prefix + t for t in batch.column("text").to_pylist()]
        columns: dict[str, pa.Array] = {"_id": batch.column("_id")}
        for arm, model in self.models.items():
            emb = np.asarray(model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=False),
                             dtype=np.float32)  # fmt: skip
            columns[arm] = pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), emb.shape[1])
        return pa.table(columns)


def corpus_rows(batch: dict[str, np.ndarray]) -> dict[str, list[str]]:
    """A BEIR corpus.jsonl's lines (already checked by beir.py) as ``_id`` and the retriever's text."""
    rows = [json.loads(line) for line in batch["text"] if line.strip()]
    return {"_id": [str(r["_id"]) for r in rows], "text": [passage_text(r) for r in rows]}


EMBEDDING_FILE_ROWS = 100_000  # rows an embedding file holds at least


def encoder_pool(models: dict[str, Any], prefix: str, ev, encoders: int) -> dict[str, Any]:
    """``map_batches`` arguments of the encoder pool: ``encoders`` actors, a GPU (or a CPU) each."""
    import ray.data

    return {"fn_constructor_kwargs": {"models": models, "prefix": prefix, "max_seq_len": ev.max_seq_len, "batch_size": 64,
                                      "use_gpu": ev.use_gpu},
            "compute": ray.data.ActorPoolStrategy(min_size=1, max_size=encoders), "batch_size": ev.encode_batch_size,
            "batch_format": "pyarrow", **({"num_gpus": 1} if ev.use_gpu else {"num_cpus": 1})}  # fmt: skip


def encode_corpus(corpus_path: str, models: dict[str, Any], ev, encoders: int, target: str, fs) -> None:
    """Every arm's embeddings of the corpus, written as parquet under ``target`` (``_id`` and one
    fixed-size list column per arm)."""
    import ray.data

    ds = ray.data.read_text(corpus_path).map_batches(corpus_rows, batch_format="numpy")
    write_embeddings(ds.map_batches(Encoder, **encoder_pool(models, ev.passage_prefix, ev, encoders)), target, fs)


def write_embeddings(ds, target: str, fs, min_rows: int | None = None) -> None:
    """``ds`` as parquet files of at least ``min_rows`` rows (``EMBEDDING_FILE_ROWS``; the last may hold fewer): ``search``
    opens them one at a time, twice an arm, so a file a block (~85 passages at 1 MiB) would cost
    MS MARCO ~100K files and ~800K requests on S3. A write task buffers its rows up to the bound:
    ~1.2 GB at 100K rows of four 768-dimension fp32 embeddings."""
    ds.write_parquet(target, filesystem=fs, min_rows_per_file=min_rows or EMBEDDING_FILE_ROWS)


def encode_queries(queries: dict[str, str], models: dict[str, Any], ev, encoders: int) -> dict[str, tuple[list[str], np.ndarray]]:
    """Each arm's query embeddings (queries are few: they come back to the driver)."""
    import ray.data

    ds = ray.data.from_items([{"_id": q, "text": t} for q, t in queries.items()])
    tables = list(
        ds.map_batches(Encoder, **encoder_pool(models, ev.query_prefix, ev, encoders)).iter_batches(batch_format="pyarrow")
    )
    table = pa.concat_tables(tables)
    ids = table.column("_id").to_pylist()
    return {arm: (ids, _matrix(table.column(arm))) for arm in models}


def _matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return column.values.to_numpy(zero_copy_only=False).reshape(len(column), column.type.list_size)


def _files(target: str, fs) -> list[str]:
    return sorted(f.path for f in fs.get_file_info(pa.fs.FileSelector(target)) if f.path.endswith(".parquet"))


def _blocks(files: list[str], fs, column: str, rows: int) -> Iterator[np.ndarray]:
    """``column`` of the files in order, ``rows`` at a time (across file boundaries)."""
    held: list[np.ndarray] = []
    count = 0
    for path in files:
        for batch in pq.ParquetFile(fs.open_input_file(path)).iter_batches(batch_size=rows, columns=[column]):
            held.append(_matrix(batch.column(0)))
            count += len(held[-1])
            if count >= rows:
                block = np.concatenate(held)
                yield block[:rows]
                held, count = [block[rows:]], count - rows
    if count:
        yield np.concatenate(held)


def _ids_at(files: list[str], fs, wanted: np.ndarray) -> dict[int, str]:
    """The ``_id`` of each global row number in ``wanted`` (sorted), one file's ids at a time."""
    found, offset = {}, 0
    for path in files:
        ids = pq.read_table(fs.open_input_file(path), columns=["_id"]).column(0)
        lo, hi = np.searchsorted(wanted, [offset, offset + len(ids)])
        for n in wanted[lo:hi]:
            found[int(n)] = ids[int(n) - offset].as_py()
        offset += len(ids)
    return found


def search(target: str, fs, arm: str, query_ids: list[str], queries: np.ndarray, k: int, corpus: int,
           block_rows: int = BLOCK) -> dict[str, dict[str, float]]:  # fmt: skip
    """Each query's exact top ``k`` passages by inner product, FAISS block by block over the
    embeddings under ``target``: query id -> {doc id: score}."""
    import faiss
    from faiss.contrib.exhaustive_search import knn_ground_truth

    files = _files(target, fs)
    k = min(k, corpus)
    scores, rows = knn_ground_truth(np.ascontiguousarray(queries), _blocks(files, fs, arm, max(block_rows, k)), k,
                                    metric_type=faiss.METRIC_INNER_PRODUCT)  # fmt: skip
    ids = _ids_at(files, fs, np.unique(rows[rows >= 0]))
    return {q: {ids[int(j)]: float(s) for j, s in zip(rows[i], scores[i]) if j >= 0} for i, q in enumerate(query_ids)}
