"""The output folder as a dataset people load: its card (``README.md``), in Hugging Face's format.

Says what ran (model, prompts, variant, config), what it did (the statistics table), how to
load it, and, when the bundled 135M model labeled it, that the labels show the pipeline
working and are not fit for training.
"""

from __future__ import annotations

from typing import Any

from arhn_ray.data.layout import KINDS, data_files
from arhn_ray.stats import render_markdown

BUNDLED_PREFIX = "bundled:"


def demo_labels(stats: dict[str, Any]) -> str | None:
    """The warning a run of the bundled model carries, or None for a real model."""
    model = stats.get("model") or ""
    if not model.startswith(BUNDLED_PREFIX) or stats.get("method", "arhn") != "arhn":
        return None
    o = stats["overall"]
    return (
        f"These labels come from the bundled {model[len(BUNDLED_PREFIX):]} model (135M parameters), far too small to judge "
        f"answers: it filtered {o['filter']} of {o['negatives_in']} negatives. They show the pipeline working and are "
        "NOT fit for training. Refine with Qwen3-32B (conf/qwen3-32b-a100x16.yaml) for training data."
    )


def render_card(stats: dict[str, Any]) -> str:
    o = stats["overall"]
    warning = demo_labels(stats)
    lines = [
        "---",
        "configs:",
        *(line for kind in KINDS for line in (f"- config_name: {kind}", f"  data_files: {data_files(kind)}")),
        "tags: [retrieval, hard-negatives, arhn]",
        "---",
        "",
        "# Refined hard negatives (ARHN)",
        "",
    ]
    if warning:
        lines += [f"> **Warning:** {warning}", ""]
    lines += [
        f"{o['queries']} queries refined with ARHN (Answer-centric Relabeling of Hard Negatives), {o['rejected']} rejected: "
        f"of {o['negatives_in']} hard negatives, {o['relabel']} were relabeled as positives (false negatives), "
        f"{o['filter']} filtered out (they carry an answer but rank below the positive) and {o['keep']} kept.",
        "",
        "## How to load it",
        "",
        "```python",
        "from datasets import load_dataset",
        f'refined = load_dataset("parquet", data_files="{data_files("refined")}", split="train")',
        "```",
        "",
        "`positive_passages` and `negative_passages` are refined (a drop-in for training); `decisions` holds one entry",
        "per input negative (action, reason, snippet, grounding, rank); `llm` the raw LLM outputs, so that",
        "`arhn-ray relabel` can recompute labels under another variant. `arhn-ray export` writes",
        "sentence-transformers, FlagEmbedding and Tevatron training files.",
        "",
        "## Provenance",
        "",
        "| | |",
        "|---|---|",
    ]
    for key in ("model", "engine", "variant", "prompt_version", "prompt_sha256", "config_digest", "pipeline_mode"):
        lines.append(f"| {key} | `{stats.get(key)}` |")
    lines += ["", "The resolved configuration is `config.yaml`; secrets are left out.", "", "## Statistics", ""]
    body = render_markdown(stats).split("\n", 2)[-1]  # without the report's own title
    lines.append(body)
    return "\n".join(lines)
