"""``arhn-ray relabel``: labels again from the LLM outputs an output folder stores: a pure map over
its parts, with no Ray, no engine and no Hub.

Each refined row gives its input row back (``records.original_row``) and its stored Stage 1 and
Stage 2 texts answer the same prompts again, so the new labels are exactly what the run would
have given under the new options (``method.variant``, ``method.positive_no_answer``,
``method.max_relabeled``, ...). Stage 1 options (truncation, grounding, constraints) stay the run's:
the truncation tokenizer must be on this machine (it is read from the cache, never the Hub). The
rows the run rejected stay rejected. The new output has the same parts, manifests, statistics, card
and review page as a run, and keeps the demo note when the labels came from the bundled model.

Example:
    >>> label_again("out/local", "out/relabel", ["method.variant=relabel"])["overall"]["relabel"]
    0
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pyarrow.parquet as pq

from arhn_ray.config import Config, method_options, to_yaml
from arhn_ray.data import layout
from arhn_ray.data.layout import OutputLayout
from arhn_ray.data.parts import Part
from arhn_ray.data.records import original_row
from arhn_ray.engines.base import ChatRequest, ChatResult
from arhn_ray.method.labeling import NOT_JUDGED, SCREENED
from arhn_ray.outputs.saved import saved_config

log = logging.getLogger(__name__)
_REFINED_INDEX = 1 << 40  # refined rows keep no row number: they are counted apart from the rejected rows' own


class StoredOutputs:
    """An engine that answers each request with the text the run stored for it (query, stage, chunk)."""

    def __init__(self, rows: list[dict], model: str):
        self.model = model  # the model that wrote the outputs: the rows' provenance names it
        self.table: dict[tuple[str, int, int], ChatResult] = {}
        for row in rows:
            for call in row.get("llm") or []:
                for stage in (1, 2):
                    if call[f"stage{stage}_text"] is not None:
                        self.table[(row["query_id"], stage, call["chunk"])] = ChatResult(
                            call[f"stage{stage}_text"], call[f"stage{stage}_prompt_tokens"] or 0,
                            call[f"stage{stage}_output_tokens"] or 0, call[f"stage{stage}_finish_reason"] or "stop")  # fmt: skip

    def generate(self, requests: list[ChatRequest]) -> list[ChatResult]:
        return [self.table.get(r.key) or ChatResult.failed(f"no stored output for {r.key}") for r in requests]

    def close(self) -> None:
        pass


class _StoredScores:
    """The screen's scores travel in the rows (rebuilt from the decisions); nothing is scored again."""

    model = "stored-scores"

    def score(self, pairs):  # pragma: no cover - never asked: every row carries its scores
        raise RuntimeError("relabel scores nothing: the screen's scores come from the stored decisions")

    def close(self) -> None:
        pass


def _again(refined: dict) -> dict:
    """The input row with the run's stored outputs (and its screen's scores) attached."""
    row = original_row(refined)
    row["llm"] = refined.get("llm") or []
    scores = [d["score"] for d in refined["decisions"] if d["reason"] not in NOT_JUDGED or d["reason"] == SCREENED]
    if any(s is not None for s in scores):
        row["screen_scores"] = scores
    return row


def label_again(output: str, out: str, overrides: list[str] | None = None, storage_options: dict | None = None) -> dict[str, Any]:
    """``output``'s rows labeled again into ``out`` under ``overrides``; returns the new statistics."""
    from arhn_ray.data.truncation import make_truncator
    from arhn_ray.method.prompts import PromptSet
    from arhn_ray.outputs.report import write_report
    from arhn_ray.outputs.sink import PartSink
    from arhn_ray.pipeline.stages import envelope
    from arhn_ray.refiners.arhn import ArhnRefiner

    started = time.time()
    source = OutputLayout(output, storage_options)
    cfg: Config = saved_config(source, [f"output.path={out}", "output.overwrite=true", *(overrides or [])])
    if cfg.method.name != "arhn":
        raise ValueError(
            f"{output}: refined with method.name={cfg.method.name}: relabel recomputes ARHN's labels from LLM outputs"
        )
    try:
        truncate = make_truncator(cfg.truncation.tokenizer, cfg.truncation.max_seq_len, local_files_only=True)
    except OSError as e:
        raise FileNotFoundError(
            f"truncation.tokenizer {cfg.truncation.tokenizer!r} is not on this machine; relabel reads it from the cache "
            f"(arhn-ray stage {output}/config.yaml fetches it): {e}"
        ) from None
    target = OutputLayout(out, storage_options)
    target.fs.makedirs(target.root, exist_ok=True)
    target.clear_parts()
    target.write_text(layout.CONFIG, to_yaml(cfg))
    parts = [Part(**m["input"]) for m in source.manifests()]
    sink = PartSink(target, parts)
    prompts = PromptSet.load(cfg.prompts.version, cfg.prompts.dir)
    for part in parts:
        refined = _read(source, "refined", part.key)
        rows = [_again(r) for r in refined]
        screen = _StoredScores() if any("screen_scores" in r for r in rows) else None
        refiner = ArhnRefiner(
            StoredOutputs(refined, cfg.engine.model), method_options(cfg), prompts, truncate=truncate, retries=0, screen=screen
        )
        envelopes = []
        for n, outcome in enumerate(refiner.stage2(rows)):
            status = "rejected" if outcome.rejected else "ok"
            envelopes.append(envelope(part, _REFINED_INDEX + n, outcome.row, status, outcome.field, outcome.rejected))
        for kept in _read(source, "rejected", part.key):  # rejected by the run: they stay rejected, as they were
            envelopes.append(
                envelope(part, kept["row_index"], json.loads(kept["row"]), "rejected", kept["field"], kept["reason"])
            )
        envelopes.append(envelope(part, len(envelopes), None, "part_end"))
        sink.add(envelopes)
        log.info("relabel: part %s: %d rows", part.key, len(envelopes) - 1, extra={"notice": True})
    sink.close()
    from arhn_ray.refiners.arhn import METHOD

    return write_report(cfg, METHOD, target, time.time() - started, extra={"relabeled_from": output})


def _read(out: OutputLayout, kind: str, key: str) -> list[dict]:
    path = out.part_file(kind, key)
    if not out.fs.exists(path):
        return []
    with out.fs.open(path, "rb") as f:
        return pq.read_table(f).to_pylist()
