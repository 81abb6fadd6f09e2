"""How a batch of rows becomes outcomes, one module per method, side by side.

``arhn`` drives the two LLM stages through an engine (arhn_ray/engines); ``topk_percpos``, the
paper's baseline, scores pairs with a teacher. Each module declares its ``METHOD`` (refiners/base.py:
modes, replica, async support, build, card words, models to stage); the pipeline, the report, the
plan and staging ask ``method_for(cfg)`` instead of branching on a name. A third method is one
module and one line of ``METHODS``.
"""

from __future__ import annotations

from arhn_ray.config import Config, ConfigError
from arhn_ray.refiners import arhn, topk_percpos
from arhn_ray.refiners.base import STEPS, Method, Metrics, Outcome, Refiner, provenance

__all__ = ["METHODS", "STEPS", "Method", "Metrics", "Outcome", "Refiner", "method_for", "provenance"]

METHODS: dict[str, Method] = {m.name: m for m in (arhn.METHOD, topk_percpos.METHOD)}


def method_for(cfg: Config) -> Method:
    """The config's method, checked against its declaration (``method.name``, ``pipeline.mode``).

    Example:
        >>> from arhn_ray.config import load_config
        >>> method_for(load_config(overrides=["input.path=in", "output.path=out", "method.name=topk_percpos"])).replica
        'teacher'
    """
    method = METHODS.get(cfg.method.name)
    if method is None:
        raise ConfigError(f"config key 'method.name': {cfg.method.name!r} is not one of {', '.join(METHODS)}")
    if cfg.pipeline.mode not in method.modes:
        modes = " or ".join(method.modes)
        raise ConfigError(f"config key 'pipeline.mode': method.name={method.name} runs in pipeline.mode={modes}")
    return method
