"""The README's path to labels that mean something without a GPU or network (conf/demo.yaml):
RLHN's published GPT-4o verdicts on 25 MS MARCO queries, recorded as LLM outputs and replayed
through the real pipeline. The shipped recordings are what jobs/dev/rlhn_demo.py makes from the
verdict files; the run's labels agree with those verdicts; export writes a row a query."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from helpers import RLHN_STAGE1, RLHN_STAGE2, ROOT

SHIPPED = ("arhn_ray/demo/rlhn_judged/msmarco_passage.jsonl", "arhn_ray/demo/recorded_rlhn_gpt4o.jsonl")


def test_the_shipped_recordings_are_made_from_rlhns_verdicts(tmp_path):
    spec = importlib.util.spec_from_file_location("rlhn_demo", ROOT / "jobs" / "dev" / "rlhn_demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    demo.main(tmp_path)
    for path in SHIPPED:
        assert (tmp_path / path).read_bytes() == (ROOT / path).read_bytes(), f"{path}: run python jobs/dev/rlhn_demo.py"
    # a verdict read by hand: the stage-2 query's Doc (9) and Doc (18) are better, Doc (12) worse
    response = "<better> Preferred: [Doc (9), Doc (18)] </better>, <worse> Relevant: [Doc (12)] </worse>"
    assert (demo.verdict(response, "better"), demo.verdict(response, "worse")) == ({9, 18}, {12})


@pytest.mark.ray
def test_the_demo_path_ends_in_training_rows_with_rlhns_labels(tmp_path):
    from arhn_ray.outputs.agreement import agreement

    out = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-m", "arhn_ray", "refine", "conf/demo.yaml", f"output.path={out}"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "NOT fit for training" not in done.stdout + done.stderr  # a strong model's labels: no demo note
    o = json.loads((out / "stats.json").read_text())["overall"]
    assert (o["queries"], o["rejected"]) == (25, 0) and o["relabel"] > 0 and o["filter"] > 0 and o["keep"] > 0
    # every judged negative as RLHN's last verdict says: relabel = <better>, anything else a negative
    result = agreement(str(out), str(RLHN_STAGE1), stage2=str(RLHN_STAGE2))["overall"]
    judged = sum(d["action"] != "unjudged" for r in pq.read_table(out / "refined").to_pylist() for d in r["decisions"])
    assert result["kappa"] == 1.0 and result["n"] == judged

    train = tmp_path / "train.parquet"
    done = subprocess.run([sys.executable, "-m", "arhn_ray", "export", str(out), "--format", "sentence-transformers",
                           "--out", str(train)], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    table = pq.read_table(train)
    assert table.num_rows == 25 and table.column_names == ["anchor", "positive"] + [f"negative_{i}" for i in range(1, 8)]
