"""``arhn-ray relabel``: labels again from the LLM outputs an output folder stores, with no LLM.

The input is read again from the ``input.path`` saved in the output's ``config.yaml``; Stage 1
options (truncation, grounding, constraints) stay those of the original run, so the stored
Stage 2 outputs answer the same prompts. The replay engine serves the stored outputs.
"""

from __future__ import annotations

from typing import Any

from arhn_ray.data.layout import OutputLayout
from arhn_ray.saved import saved_config


def label_again(output: str, out: str, overrides: list[str] | None = None, storage_options: dict | None = None) -> dict[str, Any]:
    """``output``'s rows relabeled into ``out``; ``storage_options`` reach the input, both outputs and the replay."""
    from arhn_ray.pipeline.job import run

    cfg = saved_config(
        OutputLayout(output, storage_options),
        ["engine.kind=replay", f"engine.replay_path={output}", f"output.path={out}", "output.overwrite=true", "stage2.engine=null",
         *(overrides or [])],
    )  # fmt: skip
    return run(cfg)
