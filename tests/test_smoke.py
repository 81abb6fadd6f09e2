"""Issue 11: the one-GPU smoke run's own file (jobs/smoke.py + conf/smoke-1gpu.yaml), run on CPU
with the bundled model through its one switch, so that it is exercised in CI and cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import ROOT, SAMPLES, load_jsonl

from arhn_ray.config import load_config


def test_smoke_config_is_one_small_qwen3_on_one_gpu():
    cfg = load_config(str(ROOT / "conf" / "smoke-1gpu.yaml"))
    assert (cfg.engine.kind, cfg.engine.device, cfg.engine.replicas, cfg.engine.tensor_parallel_size) == ("vllm", "gpu", 1, 1)
    assert cfg.engine.model.startswith("Qwen/Qwen3-") and cfg.stage1.constraint == "verbatim"
    assert cfg.input.path == "arhn_ray/samples"
    # the paper's run's engine path, tried here first: the async engine, overlapping batches, the bound
    full = load_config(str(ROOT / "conf" / "qwen3-32b-a100x16.yaml"))
    assert cfg.engine.async_engine and full.engine.async_engine and cfg.pipeline.max_concurrent_batches > 1
    assert cfg.engine.max_inflight is None and cfg.engine.max_num_seqs  # the bound: 1.1 x max_num_seqs, as the full run


@pytest.mark.vllm
@pytest.mark.ray
def test_smoke_run_passes_on_cpu(tmp_path):
    """The script and its config end to end, on one sample query cut to one Stage 1 call (the
    README's main command already runs the whole sample path; this one checks the smoke run)."""
    data = tmp_path / "in"
    data.mkdir()
    row = load_jsonl(SAMPLES / "rlhn_msmarco.jsonl")[0]
    (data / "one.jsonl").write_text(json.dumps({**row, "negative_passages": row["negative_passages"][:9]}) + "\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    res = subprocess.run(
        [sys.executable, "jobs/smoke.py", "--cpu", f"input.path={data}", f"output.path={tmp_path / 'smoke'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "smoke: PASS" in res.stdout and "1 refined, 0 rejected, 9 negatives" in res.stdout


def test_smoke_check_names_a_row_missing_from_the_output(tmp_path):
    """The check is real: an output holding the first sample query of one file but not of the
    other fails, naming the missing query; with both present that complaint goes away."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sys.path.insert(0, str(ROOT / "jobs"))
    try:
        import smoke
    finally:
        sys.path.pop(0)
    from arhn_ray.config import load_config as load
    from arhn_ray.data.layout import OutputLayout
    from arhn_ray.data.readers import from_flagembedding
    from arhn_ray.data.records import OUTPUT_SCHEMA

    cfg = load(str(ROOT / "conf" / "replay.yaml"), [f"output.path={tmp_path}", "input.limit=1", "engine.replay_path=x"])
    rlhn = load_jsonl(SAMPLES / "rlhn_msmarco.jsonl")[0]["query_id"]
    flag = from_flagembedding(load_jsonl(SAMPLES / "flagembedding_msmarco.jsonl")[0])["query_id"]
    out = OutputLayout(str(tmp_path))

    def write(shard: str, qid: str) -> None:
        (tmp_path / "refined" / shard).mkdir(parents=True, exist_ok=True)
        pq.write_table(
            pa.Table.from_pylist([{"query_id": qid, "decisions": [], "llm": []}], schema=OUTPUT_SCHEMA),
            out.part_file("refined", f"{shard}/p"),
        )

    stats = {"overall": {"rejected": 0}, "rejected_reasons": {}}
    write("rlhn_msmarco", rlhn)
    problems = smoke.check(cfg, stats)
    assert problems[0] == f"rows in and out differ: missing [{flag!r}], extra []"
    write("flagembedding_msmarco", flag)
    assert not [p for p in smoke.check(cfg, stats) if p.startswith("rows in and out differ")]
