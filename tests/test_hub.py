"""``hf://`` input as a user runs it: ``arhn-ray refine ... input.path=hf://datasets/OWNER/NAME/data``
against a Hub on loopback (tests/fake_hub.py, which answers as huggingface_hub expects, 429s
included), compared with the same files read from the local disk; a rerun after the branch moved
reads the commit the first run pinned; a missing repository, revision or file and a refused token
stop before any work, naming what is wrong."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fake_hub import FakeHub
from helpers import ROOT, SAMPLES, load_jsonl

REPO = "rlhn/sample-12"
TOKEN = "hf_test_token_do_not_leak_0451"


def shards() -> dict[str, bytes]:
    """The shipped sample's first 12 RLHN rows as two parquet files of row groups of 3, as the Hub holds rlhn/default-680K."""
    rows = load_jsonl(SAMPLES / "rlhn_msmarco.jsonl")[:12]
    files = {}
    for i, chunk in enumerate((rows[:6], rows[6:])):
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(chunk), buf, row_group_size=3)
        files[f"data/train-{i:05d}-of-00002.parquet"] = buf.getvalue()
    return files


def refine(hub: FakeHub, out: Path, rec: Path, path: str, token: str = TOKEN) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "HF_HUB_OFFLINE")}
    env |= {"HF_ENDPOINT": hub.url, "HF_TOKEN": token}
    cmd = [sys.executable, "-m", "arhn_ray", "refine", "conf/replay.yaml", f"input.path={path}", "input.part_rows=3",
           f"engine.replay_path={rec}", f"output.path={out}", "pipeline.batch_size=3"]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def refined(out: Path) -> list[dict]:
    rows = [r for f in sorted((out / "refined").glob("*/*.parquet")) for r in pq.read_table(f).to_pylist()]
    for r in rows:
        r.pop("provenance")
    return sorted(rows, key=lambda r: r["query_id"])


@pytest.mark.ray
def test_refine_over_hf_equals_the_local_files_pins_the_commit_and_a_rerun_reads_it_again(tmp_path):
    from test_deploy import _recordings

    rec, _ = _recordings(tmp_path)
    files = shards()
    local = tmp_path / "local" / "data"
    local.mkdir(parents=True)
    for name, data in files.items():
        (tmp_path / "local" / name).write_bytes(data)
    hub = FakeHub({REPO: files}, token=TOKEN, throttle_every=7)  # every 7th request is answered 429
    try:
        first = hub.main[REPO]
        out = tmp_path / "hf"
        done = refine(hub, out, rec, f"hf://datasets/{REPO}/data")
        assert done.returncode == 0, done.stderr[-3000:]
        here = refine(hub, tmp_path / "here", rec, str(local))
        assert here.returncode == 0, here.stderr[-3000:]
        assert refined(out) == refined(tmp_path / "here") and len(refined(out)) == 12  # the same rows, whichever the store
        assert hub.throttled > 0, "the throttling never happened"
        requests, parts = sum(hub.requests.values()), len(list((out / "_parts").glob("*/*.json")))
        # the readers ask the Hub's API nothing: the repository lookups and listings are the driver's planning alone
        api = sum(n for route, n in hub.requests.items() if route != "resolve")
        assert api <= 8, hub.requests
        saved = (out / "config.yaml").read_text()
        assert f"hf://datasets/{REPO}@{first}/data" in saved and f"hub_path: hf://datasets/{REPO}/data" in saved
        assert f"commit `{first}`" in (out / "README.md").read_text()
        for f in out.rglob("*"):  # the token is in no output file and no log
            assert not f.is_file() or TOKEN not in f.read_text(errors="replace"), f

        # a killed run: one part lost; meanwhile main moves on. The rerun reads the pinned commit, only the lost part.
        manifest = sorted((out / "_parts").glob("*/*.json"))[-1]
        manifest.unlink()
        hub.advance(REPO, {name: b"not parquet" for name in files})
        again = refine(hub, out, rec, f"hf://datasets/{REPO}/data")
        assert again.returncode == 0, again.stderr[-3000:]
        assert refined(out) == refined(tmp_path / "here")
        assert f"@{first}/data" in (out / "config.yaml").read_text()
        log = "".join(p.read_text() for p in (out / "logs").glob("refine-*.log"))
        assert "the commit this output's earlier run read" in log and "1 parts to refine" in again.stdout + again.stderr + log
        print(f"hub requests: {requests} for {parts} parts ({hub.requests}); 429s answered: {hub.throttled}")
    finally:
        hub.close()


@pytest.mark.parametrize(
    "path, token, message",
    [
        ("hf://datasets/rlhn/missing/data", TOKEN, "no dataset repository rlhn/missing"),
        (f"hf://datasets/{REPO}@v9/data", TOKEN, "has no revision 'v9'"),
        (f"hf://datasets/{REPO}/nothing-here", TOKEN, "no such file or folder"),
        (f"hf://datasets/{REPO}/data", "hf_wrong", "the Hub refused the token in HF_TOKEN"),
    ],
    ids=["repository", "revision", "file", "token"],
)
def test_a_bad_hub_input_stops_before_any_work_naming_what_is_wrong(tmp_path, path, token, message):
    hub = FakeHub({REPO: shards()}, token=TOKEN)
    try:
        done = refine(hub, tmp_path / "out", tmp_path / "rec.jsonl", path, token)
    finally:
        hub.close()
    assert done.returncode == 2, done.stderr[-2000:]
    assert message in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert token not in done.stdout + done.stderr
    assert not (tmp_path / "out" / "_parts").exists()  # nothing started


BEIR_CHECK = """
import json, sys
from arhn_ray.evaluate.beir import BeirError, load_beir, read_corpus
try:
    s = load_beir(sys.argv[1])
except BeirError as e:
    print(json.dumps({"error": str(e)}))
    raise SystemExit(0)
print(json.dumps({"name": s.name, "corpus": s.corpus_size, "queries": s.queries, "qrels": s.qrels, "first": next(read_corpus(s))}))
"""


def test_a_beir_set_on_the_hub_reads_as_the_same_folder_on_disk(tmp_path):
    """``evaluate --eval hf://datasets/BeIR/<name>``: the set's gzipped corpus and queries and its
    ``<name>-qrels`` repository, as BEIR publishes them, read as the shipped folder reads."""
    import gzip
    import sys

    from helpers import ROOT as root

    from arhn_ray.evaluate.beir import load_beir, read_corpus

    local = root / "arhn_ray" / "evaluate" / "msmarco_beir"
    hub = FakeHub({"BeIR/msmarco_beir": {"corpus.jsonl.gz": gzip.compress((local / "corpus.jsonl").read_bytes()),
                                         "queries.jsonl.gz": gzip.compress((local / "queries.jsonl").read_bytes())},
                   "BeIR/msmarco_beir-qrels": {"test.tsv": (local / "qrels" / "test.tsv").read_bytes()},
                   "BeIR/lonely": {"corpus.jsonl": b"", "queries.jsonl": b""}})  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"} | {
        "HF_ENDPOINT": hub.url,
        "ARHN_RAY_CACHE": str(tmp_path),
    }
    try:
        got = [json.loads(subprocess.run([sys.executable, "-c", BEIR_CHECK, f"hf://datasets/BeIR/{name}"], env=env, capture_output=True,
                                         text=True, timeout=120, check=True).stdout) for name in ("msmarco_beir", "lonely")]  # fmt: skip
    finally:
        hub.close()
    want = load_beir(local)
    assert (got[0]["name"], got[0]["corpus"], got[0]["queries"], got[0]["qrels"]) == (
        want.name,
        want.corpus_size,
        want.queries,
        want.qrels,
    )
    assert tuple(got[0]["first"]) == next(read_corpus(want))
    assert got[1] == {"error": "hf://datasets/BeIR/lonely: no qrels/test.tsv in it and no judgments repository BeIR/lonely-qrels"}
