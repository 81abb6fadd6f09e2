"""The refiner contract: a method is declared once (refiners/base.py's Method) and the pipeline
uses the declaration. A third method here is one class, one ``Method`` and one registry line."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from helpers import SAMPLES

from arhn_ray.config import ConfigError, load_config
from arhn_ray.data.parts import plan_parts
from arhn_ray.method.decisions import Decision
from arhn_ray.pipeline.stages import RefineStage, read_parts
from arhn_ray.refiners import METHODS, Method, Metrics, Outcome, method_for, provenance


class KeepAll:
    """A third method: every negative kept, with no model."""

    def __init__(self):
        self.provenance = provenance("keep_all", "none", {})
        self.closed = False

    def refine(self, rows: list[dict]) -> list[Outcome]:
        return [Outcome({**r, "decisions": [Decision(n["docid"], "keep", "no_answer").to_dict() for n in r["negative_passages"]],
                         "removed_passages": [], "llm": [], "provenance": self.provenance}) for r in rows]  # fmt: skip

    def steps(self):
        return {"fused": self.refine, "stage1": self.tag, "stage2": self.refine}

    def tag(self, rows: list[dict]) -> list[Outcome]:  # its Stage 1: the rows, marked
        return [Outcome({**r, "tagged_by": "stage1"}) for r in rows]

    def async_steps(self):
        return {}

    def metrics(self) -> Metrics:
        return Metrics(preemptions=3)

    def close(self) -> None:
        self.closed = True


KEEP_ALL = Method("keep_all", modes=("fused", "staged"), replica="teacher", has_async=False, build=lambda cfg, engine=None: KeepAll(),
                  describe=lambda cfg: {"model": "none", "labels_from": "no model: every negative kept"})  # fmt: skip


def config(*overrides: str):
    return load_config(overrides=[f"input.path={SAMPLES}", "output.path=unused", *overrides])


@pytest.fixture
def keep_all(monkeypatch):
    monkeypatch.setitem(METHODS, "keep_all", KEEP_ALL)  # the one registry line
    return config("method.name=keep_all")


def test_a_replica_runs_the_step_its_method_declares(keep_all):
    (part,) = plan_parts(str(SAMPLES / "rlhn_msmarco.jsonl"), 1000, {})[:1]
    envelopes = pa.concat_tables(list(read_parts({"part": [part.to_json()]}, "jsonl", 100_000, {})))
    stage = RefineStage(keep_all, "fused")
    out = stage(envelopes).to_pylist()
    rows = [e for e in out if e["status"] == "ok"]
    assert rows and len(out) == envelopes.num_rows  # every row and the part's end marker come back
    for e in rows:
        row = json.loads(e["record"])
        assert {d["action"] for d in row["decisions"]} == {"keep"} and row["provenance"]["variant"] == "keep_all"
    assert rows[0]["preemptions"] == 0  # the refiner's metrics, as a change over the batch
    stage.__del__()
    assert stage.refiner.closed
    staged = RefineStage(config("method.name=keep_all", "pipeline.mode=staged"), "stage1")  # the declared Stage 1 step runs
    assert {json.loads(e["record"]).get("tagged_by") for e in staged(envelopes).to_pylist() if e["status"] == "ok"} == {"stage1"}


def test_the_declared_modes_are_the_config_check(keep_all):
    assert method_for(keep_all) is KEEP_ALL
    fused_only = Method(
        "fused_only", ("fused",), "teacher", False, build=lambda cfg, engine=None: KeepAll(), describe=lambda cfg: {}
    )
    METHODS["fused_only"] = fused_only
    try:
        with pytest.raises(ConfigError, match="'pipeline.mode': method.name=fused_only runs in pipeline.mode=fused"):
            method_for(config("method.name=fused_only", "pipeline.mode=staged"))
    finally:
        del METHODS["fused_only"]
    with pytest.raises(ConfigError, match="'method.name': 'nope' is not one of arhn, topk_percpos, keep_all"):
        method_for(config("method.name=nope"))


def test_arhn_declares_a_step_for_each_step_of_its_modes(tmp_path):
    from arhn_ray.engines.replay import ReplayEngine
    from arhn_ray.refiners.base import STEPS

    (tmp_path / "none.jsonl").write_text("")
    method = METHODS["arhn"]
    refiner = method.build(config(), ReplayEngine(str(tmp_path / "none.jsonl")))
    wanted = {step for mode in method.modes for step in STEPS[mode]}
    assert set(refiner.steps()) == wanted and set(refiner.async_steps()) == wanted and method.has_async
    assert refiner.metrics().preemptions is None  # the replay engine counts none
