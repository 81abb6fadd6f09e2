"""What a run leaves besides its rows: ``stats.json``, ``report.md`` and ``report.png`` (the
paper's Table 4, as numbers and a picture) and the dataset card, over every complete part of the
output (this run's and earlier ones'), wherever the output is."""

from __future__ import annotations

import tempfile
from typing import Any

from arhn_ray.card import render_card
from arhn_ray.config import Config, config_digest, uses_llm
from arhn_ray.data.layout import OutputLayout
from arhn_ray.method.prompts import PromptSet
from arhn_ray.stats import RunStats, render_files, to_json


def write_report(cfg: Config, out: OutputLayout, wall_s: float, unreadable: dict[str, str] | None = None) -> dict[str, Any]:
    """The run's statistics from the parts' manifests, written with the card and the report; returned."""
    stats = RunStats()
    for manifest in out.manifests():
        stats.merge(RunStats.from_dict(manifest["stats"]))
    prompts = PromptSet.load(cfg.prompts.version, cfg.prompts.dir)
    llm = uses_llm(cfg)
    stats.meta = {
        "method": cfg.method.name,
        "model": cfg.engine.model if llm else cfg.baseline.model,
        "engine": cfg.engine.kind if llm else "teacher",
        "variant": cfg.method.variant if llm else cfg.method.name,
        "prompt_version": prompts.version,
        "prompt_sha256": prompts.sha256,
        "config_digest": config_digest(cfg),
        "pipeline_mode": cfg.pipeline.mode,
        "unreadable_shards": unreadable or {},
    }
    data = stats.to_dict()
    data["throughput"] = {"wall_s": round(wall_s, 2), "queries_per_s": data["overall"]["queries"] / wall_s if wall_s else 0.0}
    out.write_text("stats.json", to_json(data))
    out.write_text("README.md", render_card(data))
    render_report(out, data)
    return data


def render_report(out: OutputLayout, data: dict[str, Any]) -> None:
    """``report.md`` and ``report.png`` into the output, local or remote."""
    if out.local:
        render_files(data, out.root)
        return
    with tempfile.TemporaryDirectory() as tmp:
        for path in render_files(data, tmp):
            out.put(str(path), path.name)
