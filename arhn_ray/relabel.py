"""``arhn-ray relabel``: labels again from the LLM outputs an output folder stores, with no LLM.

The input is read again from the ``input.path`` saved in the output's ``config.yaml``; Stage 1
options (truncation, grounding, constraints) stay those of the original run, so the stored
Stage 2 outputs answer the same prompts. The replay engine serves the stored outputs.
"""

from __future__ import annotations

import tempfile
from typing import Any

from omegaconf import OmegaConf

from arhn_ray.config import load_config
from arhn_ray.data.layout import OutputLayout


def relabel(output: str, out: str, overrides: list[str] | None = None, storage_options: dict | None = None) -> dict[str, Any]:
    """``output``'s rows relabeled into ``out``; ``storage_options`` reach the input, both outputs and the replay."""
    from arhn_ray.pipeline.job import run

    saved = OmegaConf.create(OutputLayout(output, storage_options).read_text("config.yaml"))
    options = OmegaConf.create(dict(storage_options or {}))
    for secret_path in ("input.storage_options", "output.storage_options", "engine.replay_storage_options"):
        OmegaConf.update(saved, secret_path, options, merge=False)  # the saved config holds none: they were redacted
    with tempfile.TemporaryDirectory() as tmp:
        saved_path = f"{tmp}/config.yaml"
        OmegaConf.save(saved, saved_path)
        cfg = load_config(
            saved_path,
            [
                "engine.kind=replay",
                f"engine.replay_path={output}",
                f"output.path={out}",
                "output.overwrite=true",
                "stage2.engine=null",
                *(overrides or []),
            ],
        )
    return run(cfg)
