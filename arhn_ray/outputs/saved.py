"""An output folder opened again: its own ``config.yaml`` (saved with its secrets redacted, so the
storage options given now stand in for them). relabel and evaluate open an output this one way;
its input rows come back from its refined rows (records.original_row), never from the input."""

from __future__ import annotations

import tempfile

from omegaconf import DictConfig, OmegaConf

from arhn_ray.config import Config, load_config
from arhn_ray.data import layout
from arhn_ray.data.layout import OutputLayout

REDACTED = ("input.storage_options", "output.storage_options", "engine.replay_storage_options")


def saved_yaml(out: OutputLayout) -> DictConfig | None:
    """``out``'s ``config.yaml`` as written (None: the output has none yet)."""
    return OmegaConf.create(out.read_text(layout.CONFIG)) if out.exists(layout.CONFIG) else None  # type: ignore[return-value]


def saved_config(out: OutputLayout, overrides: list[str] | None = None) -> Config:
    """The config ``out`` was refined with, ``overrides`` applied; its storage options are ``out``'s."""
    saved = saved_yaml(out)
    if saved is None:
        raise FileNotFoundError(f"{out.file(layout.CONFIG)}: not an arhn-ray output (it has no {layout.CONFIG})")
    for key in REDACTED:
        OmegaConf.update(saved, key, OmegaConf.create(out.storage_options), merge=False)
    with tempfile.TemporaryDirectory() as tmp:
        OmegaConf.save(saved, f"{tmp}/config.yaml")
        return load_config(f"{tmp}/config.yaml", overrides or [])
