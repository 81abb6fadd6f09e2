"""What a run leaves besides its rows: ``stats.json``, ``report.md`` and ``report.png`` (the
paper's Table 4, as numbers and a picture), the dataset card and ``review.html`` (a sample to look at), over every complete part of the
output (this run's and earlier ones'), wherever the output is."""

from __future__ import annotations

import hashlib
import logging
import tempfile
from typing import Any

from arhn_ray.config import Config
from arhn_ray.data import layout
from arhn_ray.data.hub import revision as hub_revision
from arhn_ray.data.layout import OutputLayout
from arhn_ray.outputs.card import render_card
from arhn_ray.outputs.review import write_review
from arhn_ray.outputs.stats import RunStats, render_files, to_json
from arhn_ray.refiners import Method

log = logging.getLogger(__name__)


def write_report(cfg: Config, method: Method, out: OutputLayout, wall_s: float, unreadable: dict[str, str] | None = None,
                 refined_now: bool = True, extra: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """The run's statistics from the parts' manifests, written with the card and the report; returned.

    Throughput adds up the runs that refined rows: a rerun that only skipped finished parts keeps
    the figures of the runs that did the work (its own wall time is ``this_run``)."""
    stats = RunStats()
    for manifest in out.manifests():
        stats.merge(RunStats.from_dict(manifest["stats"]))
    described = method.describe(cfg)
    stats.meta = {
        "method": cfg.method.name,
        **{k: described[k] for k in ("model", "engine", "variant", "prompt_version", "prompt_sha256")},
        # which config wrote the output: a hash of the config.yaml it keeps (secrets already left out)
        "config_digest": hashlib.sha256(out.read_text(layout.CONFIG).encode()).hexdigest()[:16],
        "pipeline_mode": cfg.pipeline.mode,
        "unreadable_shards": unreadable or {},
        "labels_from": described["labels_from"],
        "negatives_per_query": described.get("negatives_per_query"),  # the paper's N (None: all judged)
        "screen": described.get("screen"),
        "input": cfg.input.hub_path or cfg.input.path,
        "input_revision": hub_revision(cfg.input.path),
        **(extra or {}),  # e.g. relabel's relabeled_from
    }
    data = stats.to_dict()
    before = _previous_throughput(out) if not cfg.output.overwrite else {}
    worked = round(before.get("wall_s", 0.0) + (wall_s if refined_now else 0.0), 2)
    runs = before.get("runs", 1 if before else 0) + (1 if refined_now else 0)
    data["throughput"] = {"wall_s": worked, "runs": runs,
                          "queries_per_s": data["overall"]["queries"] / worked if worked else 0.0}  # fmt: skip
    data["this_run"] = {"wall_s": round(wall_s, 2), "refined": refined_now}
    out.write_text(layout.STATS, to_json(data))
    out.write_text(layout.CARD, render_card(data))
    render_report(out, data)
    if write_page(out, cfg.output.review_sample):
        data["review"] = f"{out.path.rstrip('/')}/review.html"  # for the summary; not in stats.json
    return data


def write_page(out: OutputLayout, sample: int) -> bool:
    """``review.html``; a page that cannot be written is a warning, not a failed run (``arhn-ray review`` writes it again)."""
    try:
        write_review(out, sample)
        return True
    except Exception as e:
        log.warning("review.html not written (%s: %s); arhn-ray review %s writes it", type(e).__name__, e, out.path)
        return False


def _previous_throughput(out: OutputLayout) -> dict[str, Any]:
    import json

    try:
        return json.loads(out.read_text(layout.STATS)).get("throughput") or {}
    except Exception:  # a first run, or an unreadable file: nothing to add to
        return {}


def render_report(out: OutputLayout, data: dict[str, Any]) -> None:
    """``report.md`` and ``report.png`` into the output, local or remote."""
    if out.local:
        render_files(data, out.root)
        return
    with tempfile.TemporaryDirectory() as tmp:
        for path in render_files(data, tmp):
            out.put(str(path), path.name)
