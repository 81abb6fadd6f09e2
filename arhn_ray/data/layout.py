"""The output folder's layout, in one place: every command that writes or reads an output goes
through :class:`OutputLayout`, on the local disk or ``s3://`` alike, with the storage options
(credentials, endpoint) it was given.

```
refined/<shard>/<part>.parquet    refined rows          rejected/<shard>/<part>.parquet  rejected rows
_parts/<shard>/<part>.json        a part's manifest, written last: the part is complete
stats.json  report.md  report.png  README.md (the card)  config.yaml  review.html (a sample to judge)  logs/
calibrate.json  calibrate.png     arhn-ray calibrate: a teacher screen's savings and kappa for each k
evaluate/examples/<arm>/          training examples, written once, streamed to Ray Train's workers
evaluate/train/                   Ray Train's runs and checkpoints (shared storage, not a driver temp dir)
evaluate/embeddings/<set>/        corpus embeddings of every arm, encoded by a Ray Data pool, searched a block at a time
evaluate/evaluate.json  evaluate.md  evaluate.png   the Table 1 of this output
```
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from arhn_ray.data.readers import filesystem

KINDS = ("refined", "rejected")
# every name in the output folder, here once (the tree above)
CONFIG, STATS, CARD, REVIEW = "config.yaml", "stats.json", "README.md", "review.html"
REPORT_MD, REPORT_PNG = "report.md", "report.png"
CALIBRATE_JSON, CALIBRATE_PNG = "calibrate.json", "calibrate.png"  # arhn-ray calibrate: what a teacher screen would save
PARTS, LOGS, EVALUATE = "_parts", "logs", "evaluate"


def evaluate_file(name: str) -> str:
    """``evaluate/<name>``: what ``arhn-ray evaluate`` writes into an output."""
    return f"{EVALUATE}/{name}"


def log_file(name: str) -> str:
    return f"{LOGS}/{name}"


def data_files(kind: str) -> str:
    """Where a kind's rows are, relative to the output folder (the card's ``data_files``)."""
    return f"{kind}/*/*.parquet"


class OutputLayout:
    def __init__(self, path: str, storage_options: dict | None = None):
        self.path = path
        self.storage_options = dict(storage_options or {})
        self.fs, root = filesystem(path, self.storage_options)
        self.root = root.rstrip("/")
        self.local = "file" in self.fs.protocol  # a str or a tuple of names, ("file", "local") for the local disk

    def arrow_filesystem(self):
        """The layout's storage as a pyarrow filesystem, for what reads and writes through pyarrow
        (Ray Data, Ray Train's runs and checkpoints), with the layout's paths (``file``)."""
        from pyarrow.fs import FSSpecHandler, LocalFileSystem, PyFileSystem

        return LocalFileSystem() if self.local else PyFileSystem(FSSpecHandler(self.fs))

    def file(self, name: str) -> str:
        """A name of the folder (``STATS``, ``CARD``, ``evaluate_file(...)``, ...) as a path on its store."""
        return f"{self.root}/{name}"

    def shard_dir(self, kind: str, shard: str) -> str:
        return f"{self.root}/{kind}/{shard}"

    def part_file(self, kind: str, part_key: str) -> str:
        """``part_key`` is ``<shard>/<part id>``."""
        return f"{self.root}/{kind}/{part_key}.parquet"

    def manifest_file(self, part_key: str) -> str:
        return f"{self.root}/{PARTS}/{part_key}.json"

    def files(self, kind: str) -> list[str]:
        return sorted(self.fs.glob(f"{self.root}/{data_files(kind)}"))

    def read_rows(self, kind: str = "refined", columns: list[str] | None = None) -> Iterator[dict]:
        import pyarrow.parquet as pq

        for path in self.files(kind):
            with self.fs.open(path, "rb") as f:
                yield from pq.read_table(f, columns=columns).to_pylist()

    def manifests(self) -> list[dict[str, Any]]:
        out = []
        for path in sorted(self.fs.glob(f"{self.root}/{PARTS}/*/*.json")):
            with self.fs.open(path, "rt") as f:
                out.append(json.load(f))
        return out

    def complete_parts(self) -> dict[str, dict[str, Any]]:
        """Manifests of the parts already written, by part key."""
        return {f"{m['shard']}/{m['part']}": m for m in self.manifests()}

    def read_text(self, name: str) -> str:
        with self.fs.open(self.file(name), "rt", encoding="utf-8") as f:
            return f.read()

    def write_text(self, name: str, text: str) -> None:
        if "/" in name:
            self.fs.makedirs(self.file(name.rsplit("/", 1)[0]), exist_ok=True)
        with self.fs.open(self.file(name), "wt", encoding="utf-8") as f:
            f.write(text)

    def put(self, local_path: str, name: str) -> None:
        if "/" in name:
            self.fs.makedirs(self.file(name.rsplit("/", 1)[0]), exist_ok=True)
        self.fs.put(local_path, self.file(name))

    def exists(self, name: str) -> bool:
        return self.fs.exists(self.file(name))

    def clear_parts(self) -> None:
        """What ``output.overwrite`` removes: every part and its manifest."""
        for sub in (PARTS, *KINDS):
            if self.fs.exists(f"{self.root}/{sub}"):
                self.fs.rm(f"{self.root}/{sub}", recursive=True)
