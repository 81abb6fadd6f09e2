"""The Ray Data job on a real local Ray cluster with the replay engine: exact decisions,
every row in exactly one output, resume, the paper's 16-GPU placement, s3:// in and out."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import create_bucket
from helpers import ROOT, blocks, make_row

from arhn_ray.cli import summary
from arhn_ray.config import load_config
from arhn_ray.pipeline.job import run

pytestmark = pytest.mark.ray

ANCHOR = "X is a letter."


def write_jsonl(path: Path, rows: list) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")


def snippet(i: int) -> str:
    return f"Negative passage number {i}."


def dataset(tmp_path: Path) -> tuple[Path, Path, dict]:
    """Two shards, hand-made recordings, and the decisions they must give."""
    data = tmp_path / "in"
    data.mkdir()
    a = make_row(3, qid="a")  # n0 above the positive, n1 below, n2 NO_ANSWER
    b = make_row(12, qid="b")  # two chunks; chunk 1 has no snippet, so no Stage 2 call
    c = make_row(2, qid="c")
    bad = {"query_id": "bad", "positive_passages": [], "negative_passages": []}
    write_jsonl(data / "part-0.jsonl", [a, bad, b])
    write_jsonl(data / "part-1.jsonl", [c])
    rec = [
        {"query_id": "a", "stage": 1, "chunk": 0, "text": blocks([ANCHOR, snippet(0), snippet(1), None])},
        {"query_id": "a", "stage": 2, "chunk": 0, "text": "[2] > [1] > [3]"},
        {"query_id": "b", "stage": 1, "chunk": 0, "text": blocks([ANCHOR, snippet(0)] + [None] * 9)},
        {"query_id": "b", "stage": 2, "chunk": 0, "text": "[1] > [2]"},
        {"query_id": "b", "stage": 1, "chunk": 1, "text": blocks([ANCHOR, None, None])},
        {"query_id": "c", "stage": 1, "chunk": 0, "text": blocks([ANCHOR, snippet(0), snippet(1)])},
        {"query_id": "c", "stage": 2, "chunk": 0, "text": "<think>hmm</think>[3] > [2] > [1]"},
    ]
    recordings = tmp_path / "rec.jsonl"
    write_jsonl(recordings, rec)
    expected = {
        "a": [("n0", "relabel"), ("n1", "filter"), ("n2", "keep")],
        "b": [("n0", "filter")] + [(f"n{i}", "keep") for i in range(1, 12)],
        "c": [("n0", "relabel"), ("n1", "relabel")],
    }
    return data, recordings, expected


FIRST_PART = "bytes-0000000000000.parquet"  # a small JSONL file is one part, starting at byte 0


def read_dir(path: Path) -> list[dict]:
    rows = []
    for f in sorted(path.glob("*/*.parquet")):
        rows.extend(pq.read_table(f).to_pylist())
    return rows


def replay_config(data, recordings, out, *extra):
    return load_config(
        str(ROOT / "conf" / "replay.yaml"),
        # every negative judged: row b's 12 make two chunks (the paper's N = 10 is tests/test_screen.py's)
        [
            f"input.path={data}",
            f"output.path={out}",
            f"engine.replay_path={recordings}",
            "pipeline.batch_size=2",
            "method.negatives_per_query=null",
            *extra,
        ],  # fmt: skip
    )


def test_replay_job_gives_exact_decisions_and_every_row_once(ray_cluster, tmp_path):
    data, recordings, expected = dataset(tmp_path)
    out = tmp_path / "out"
    stats = run(replay_config(data, recordings, out))
    import ray.data

    # the run's small blocks do not outlive it: evaluate's embeddings, in the same process, write Ray's default blocks
    assert ray.data.DataContext.get_current().target_max_block_size == ray.data.DataContext().target_max_block_size
    refined = read_dir(out / "refined")
    rejected = read_dir(out / "rejected")
    assert sorted(p.relative_to(out / "refined").as_posix() for p in (out / "refined").glob("*/*.parquet")) == [
        f"part-0/{FIRST_PART}",
        f"part-1/{FIRST_PART}",
    ]
    assert sorted(r["query_id"] for r in refined) == ["a", "b", "c"]
    for row in refined:
        assert [(d["docid"], d["action"]) for d in row["decisions"]] == expected[row["query_id"]]
        assert row["provenance"]["prompt_version"] == "paper-v2"
    a = next(r for r in refined if r["query_id"] == "a")
    assert [p["docid"] for p in a["positive_passages"]] == ["p0", "n0"]
    assert [p["docid"] for p in a["negative_passages"]] == ["n2"]
    b = next(r for r in refined if r["query_id"] == "b")
    assert [c["stage2_text"] is None for c in b["llm"]] == [False, True]
    # a JSONL row is named by the offset of its first byte: the bad row is the second line
    second_line = len((data / "part-0.jsonl").read_bytes().split(b"\n")[0]) + 1
    assert [(r["source"], r["row_index"], r["field"]) for r in rejected] == [("part-0", second_line, "query")]
    assert "query" in rejected[0]["reason"] and json.loads(rejected[0]["row"])["query_id"] == "bad"
    o = stats["overall"]
    assert (o["queries"], o["rejected"], o["relabel"], o["filter"], o["keep"]) == (3, 1, 3, 2, 12)
    assert stats["replica_time"]["engine_s"] > 0 and stats["replica_time"]["engine_start_s"] > 0
    assert o["stage2_calls"] == 3 and o["stage2_skipped"] == 1
    for name in ("stats.json", "report.md", "report.png", "config.yaml"):
        assert (out / name).stat().st_size > 0


def test_staged_mode_gives_the_same_rows(ray_cluster, tmp_path):
    data, recordings, expected = dataset(tmp_path)
    fused, staged = tmp_path / "fused", tmp_path / "staged"
    run(replay_config(data, recordings, fused))
    run(replay_config(data, recordings, staged, "pipeline.mode=staged"))
    key = lambda r: r["query_id"]  # noqa: E731
    assert sorted(read_dir(fused / "refined"), key=key) == sorted(read_dir(staged / "refined"), key=key)


def test_rerun_skips_complete_parts_and_never_takes_a_partial_one(ray_cluster, tmp_path):
    data, recordings, _ = dataset(tmp_path)
    out = tmp_path / "out"
    run(replay_config(data, recordings, out))
    first = (out / "refined" / "part-0" / FIRST_PART).stat().st_mtime_ns
    # a crashed run leaves a temp file and no manifest for part-1's only part
    (out / "_parts" / "part-1" / FIRST_PART.replace(".parquet", ".json")).unlink()
    (out / "refined" / "part-1" / ".bytes-0000000000000.deadbeef.tmp").write_bytes(b"half")
    stats = run(replay_config(data, recordings, out))
    assert (out / "refined" / "part-0" / FIRST_PART).stat().st_mtime_ns == first
    assert stats["overall"]["queries"] == 3 and stats["overall"]["rejected"] == 1
    assert sorted(r["query_id"] for r in read_dir(out / "refined")) == ["a", "b", "c"]


def test_paper_config_runs_8_replicas_of_2_gpus(ray_cluster, tmp_path, monkeypatch):
    from ray.util import placement_group_table

    from arhn_ray.pipeline import job

    data, recordings, expected = dataset(tmp_path)
    before = set(placement_group_table())
    seen = {}
    remove = job.remove_placement_groups

    def snapshot_then_remove():
        seen.update(placement_group_table())
        remove()

    monkeypatch.setattr(job, "remove_placement_groups", snapshot_then_remove)
    cfg = load_config(
        str(ROOT / "conf" / "qwen3-32b-a100x16.yaml"),
        [
            f"input.path={data}",
            f"output.path={tmp_path / 'out'}",
            "engine.kind=replay",
            f"engine.replay_path={recordings}",
            "truncation.tokenizer=null",
            "pipeline.batch_size=1",
        ],
    )
    assert (cfg.engine.replicas, cfg.engine.tensor_parallel_size, cfg.engine.device) == (8, 2, "gpu")
    stats = run(cfg)
    groups = [g for pid, g in seen.items() if pid not in before]
    # every replica got its own 2-GPU group on one node; Ray Data may ask for one group more
    # than it starts replicas, and the job removes all of its groups when it ends
    assert len([g for g in groups if g["stats"]["scheduling_state"] == "FINISHED"]) == 8
    for g in groups:
        assert g["strategy"] == "STRICT_PACK"
        assert [b.get("GPU") for b in g["bundles"].values()] == [1.0, 1.0]
    assert not [
        pid for pid in placement_group_table() if pid not in before and placement_group_table()[pid]["state"] != "REMOVED"
    ]
    assert stats["overall"]["queries"] == 3 and stats["overall"]["rejected"] == 1


def test_s3_in_and_out(ray_cluster, tmp_path, s3_server):
    import s3fs

    data, recordings, expected = dataset(tmp_path)
    create_bucket(s3_server, "arhn-test")
    fs = s3fs.S3FileSystem(**s3_server)
    fs.put(str(data / "part-0.jsonl"), "arhn-test/in/part-0.jsonl")
    fs.put(str(data / "part-1.jsonl"), "arhn-test/in/part-1.jsonl")
    so = json.dumps(s3_server)
    cfg = replay_config(
        "s3://arhn-test/in/", recordings, "s3://arhn-test/out", f"input.storage_options={so}", f"output.storage_options={so}"
    )
    stats = run(cfg)
    assert stats["overall"]["queries"] == 3
    assert sorted(fs.find("arhn-test/out/refined")) == [f"arhn-test/out/refined/part-{i}/{FIRST_PART}" for i in (0, 1)]
    with fs.open(f"arhn-test/out/refined/part-0/{FIRST_PART}", "rb") as f:
        assert sorted(r["query_id"] for r in pq.read_table(f).to_pylist()) == ["a", "b"]
    saved = fs.cat("arhn-test/out/config.yaml").decode()
    assert "testing-secret-value" not in saved and "testing-key-id" not in saved
    assert fs.exists("arhn-test/out/report.png")

    # every command that reads an output reads this one, with the same storage options (the S3
    # server's endpoint and credentials: without them s3fs would ask AWS itself)
    from arhn_ray.cli import main

    opts = ["--storage-options", so]
    assert main(["relabel", "s3://arhn-test/out", "--variant", "relabel", "--out", "s3://arhn-test/relabeled", *opts]) == 0
    relabeled = json.loads(fs.cat("arhn-test/relabeled/stats.json"))["overall"]
    assert (relabeled["queries"], relabeled["relabel"], relabeled["filter"]) == (3, 3, 0)  # the relabel variant filters nothing
    assert main(["export", "s3://arhn-test/out", "--format", "flagembedding", "--out", str(tmp_path / "train.jsonl"), *opts]) == 0
    assert len((tmp_path / "train.jsonl").read_text().splitlines()) == 2  # c has no negative left (both relabeled)
    reference = tmp_path / "ref.csv"
    reference.write_text("query_id,docid,label\n" + "".join(f"{q},{d},{'false_negative' if a == 'relabel' else 'negative'}\n"
                                                            for q, decisions in expected.items() for d, a in decisions))  # fmt: skip
    assert (
        main(["agreement", "s3://arhn-test/out", "--reference", str(reference), "--json", str(tmp_path / "k.json"), *opts]) == 0
    )
    assert json.loads((tmp_path / "k.json").read_text())["overall"]["kappa"] == 1.0
    fs.rm("arhn-test/out/report.png")
    assert main(["stats", "s3://arhn-test/out", *opts]) == 0 and fs.exists("arhn-test/out/report.png")


def test_staged_pools_leave_room_to_read_on_a_two_cpu_machine(tmp_path):
    """Two replicas of one CPU each fill a 2-core laptop; reading must still get scheduled."""
    import os
    import subprocess
    import sys

    data, recordings, _ = dataset(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [sys.executable, "-m", "arhn_ray", "refine", str(ROOT / "conf" / "replay.yaml"), f"input.path={data}",
           f"output.path={tmp_path / 'out'}", f"engine.replay_path={recordings}", "pipeline.mode=staged",
           "engine.num_cpus=1", "pipeline.progress=false"]  # fmt: skip
    script = "import ray, runpy, sys; ray.init(address='local', num_cpus=2); sys.argv = sys.argv[1:]; runpy.run_module('arhn_ray', run_name='__main__')"
    res = subprocess.run([sys.executable, "-c", script, *cmd[2:]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["overall"]["queries"] == 3


def test_parts_are_written_while_the_run_goes_on(ray_cluster, tmp_path):
    """Output flows: a part is durable as soon as its last row is in, long before the file is done."""
    import threading

    data = tmp_path / "in"
    data.mkdir()
    rows = [make_row(2, qid=f"f{i}") for i in range(24)]
    write_jsonl(data / "one.jsonl", rows)
    rec = [{"query_id": r["query_id"], "stage": 1, "chunk": 0, "text": blocks([ANCHOR, None, None])} for r in rows]
    write_jsonl(tmp_path / "rec.jsonl", rec)
    out = tmp_path / "out"
    seen: list[int] = []
    running = threading.Event()
    running.set()

    def watch() -> None:
        while running.is_set():
            seen.append(len(list((out / "_parts").glob("*/*.json"))) if (out / "_parts").exists() else 0)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    cfg = replay_config(data, tmp_path / "rec.jsonl", out, "input.part_rows=4", "engine.replay_delay_s=0.3", "engine.replicas=1")
    try:
        stats = run(cfg)
    finally:
        running.clear()
        watcher.join()
    total = len(list((out / "_parts").glob("*/*.json")))
    assert total >= 6 and stats["overall"]["queries"] == 24
    # while the run was still going, some parts were already written and others not yet
    assert any(0 < n < total for n in seen), seen


def test_the_runs_counters_reach_rays_metrics_endpoint(ray_cluster, tmp_path):
    """Rows, labels, tokens and engine errors go out through ray.util.metrics: what the Ray
    dashboard and a Prometheus scrape of the node's metrics endpoint read."""
    import re
    import urllib.request

    data, recordings, _ = dataset(tmp_path)
    counted = [{**json.loads(line), "prompt_tokens": 100, "output_tokens": 10} for line in recordings.read_text().splitlines()]
    for rec in counted:  # two calls that ran into max_tokens, one per stage
        if (rec["query_id"], rec["stage"], rec["chunk"]) in (("b", 1, 0), ("c", 2, 0)):
            rec["finish_reason"] = "length"
    write_jsonl(recordings, counted)
    out = tmp_path / "out"
    stats = run(replay_config(data, recordings, out))
    assert (stats["overall"]["stage1_cut"], stats["overall"]["stage2_cut"]) == (1, 1)
    assert "| Stage 1 | 400 | 40 | 4 | 1 |" in (out / "README.md").read_text()  # the card's token table: cut by max_tokens
    assert "(1 cut by max_tokens)" in summary(stats, str(out))
    port = ray_cluster._private.worker.global_worker.node.metrics_export_port
    want = {("arhn_rows", "outcome", "refined"): 3, ("arhn_rows", "outcome", "rejected"): 1,
            ("arhn_negatives", "action", "relabel"): 3, ("arhn_negatives", "action", "filter"): 2,
            ("arhn_negatives", "action", "keep"): 12, ("arhn_llm_cut_calls", "stage", "stage1"): 1,
            ("arhn_llm_cut_calls", "stage", "stage2"): 1}  # fmt: skip
    got: dict = {}
    deadline = time.time() + 90  # Ray exports metrics every few seconds
    while time.time() < deadline:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        got = {}
        for line in text.splitlines():
            m = re.match(r"^\w*?(arhn_\w+?)(?:_total)?\{(.*)\} ([0-9.e+]+)$", line)
            if m and f'output="{out}"' in m.group(2):
                for (name, tag, value), _ in want.items():
                    if m.group(1) == name and f'{tag}="{value}"' in m.group(2):
                        got[(name, tag, value)] = float(m.group(3))
                if m.group(1) == "arhn_llm_tokens" and 'stage="stage1"' in m.group(2) and 'kind="output"' in m.group(2):
                    got["tokens"] = float(m.group(3))
        if all(got.get(k) == v for k, v in want.items()) and got.get("tokens") == 40:
            break
        time.sleep(2)
    assert {k: got.get(k) for k in want} == want
    assert got.get("tokens") == 40  # 4 Stage 1 calls (a: 1 chunk, b: 2, c: 1) of 10 output tokens


@pytest.mark.ray
def test_a_rerun_that_refines_nothing_keeps_the_statistics_and_the_card_names_who_made_the_labels(ray_cluster, tmp_path):
    data, recordings, _ = dataset(tmp_path)
    out = tmp_path / "out"
    first = run(replay_config(data, recordings, out))
    again = run(replay_config(data, recordings, out))  # every part already written: a no-op
    kept = json.loads((out / "stats.json").read_text())
    assert again["this_run"]["refined"] is False and first["this_run"]["refined"] is True
    assert kept["throughput"] == first["throughput"] and kept["throughput"]["runs"] == 1
    assert kept["overall"] == first["overall"]
    from arhn_ray.cli import summary

    assert "nothing refined" in summary(again, str(out)) and "nothing refined" not in summary(first, str(out))
    card = (out / "README.md").read_text()
    assert f"recorded LLM outputs ({recordings}); no model ran" in card
    assert "NOT fit for training" not in card and "NOT fit" not in summary(first, str(out))  # no SmolLM2 ran


def test_the_not_fit_for_training_note_is_where_the_bundled_model_made_the_labels(tmp_path):
    from arhn_ray.outputs.stats import RunStats, demo_labels, render_png

    base = RunStats().to_dict() | {"method": "arhn", "model": "bundled:smollm2"}
    assert demo_labels(base | {"engine": "vllm"})
    for other in ({"engine": "replay"}, {"engine": "openai"}, {"engine": "vllm", "model": "Qwen/Qwen3-32B"},
                  {"engine": "teacher", "method": "topk_percpos"}):  # fmt: skip
        assert demo_labels(base | other) is None, other
    # the picture carries it too: the same figure with the note is taller in ink at its foot
    import numpy as np
    from PIL import Image

    render_png(base | {"engine": "vllm", "subsets": {}}, tmp_path / "demo.png")
    render_png(base | {"engine": "replay", "subsets": {}}, tmp_path / "real.png")
    foot = lambda p: np.asarray(Image.open(p).convert("RGB"))[-30:].astype(int)  # noqa: E731
    red = lambda a: int(((a[..., 0] > 150) & (a[..., 1] < 80) & (a[..., 2] < 80)).sum())  # noqa: E731
    assert red(foot(tmp_path / "demo.png")) > 200 and red(foot(tmp_path / "real.png")) == 0
