"""What every method is, as the pipeline sees it: a ``Method`` declaration (its modes, what a replica
holds, whether it takes an async engine) and a ``Refiner`` whose steps are declared, not looked up.

A third method is one module under refiners/ that ends in ``METHOD = Method(...)`` and one line of
``refiners.METHODS`` (docs/method.md, "Adding a method").
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from arhn_ray import __version__
from arhn_ray.config import Config
from arhn_ray.method.prompts import PromptSet


@dataclass
class Outcome:
    """A refined row (``row``) or a rejection (``rejected`` with ``field``)."""

    row: dict
    rejected: str | None = None
    field: str | None = None


Step = Callable[[list[dict]], list[Outcome]]
AsyncStep = Callable[[list[dict]], Awaitable[list[Outcome]]]
STEPS = {"fused": ("fused",), "staged": ("stage1", "stage2")}  # pipeline.mode -> the steps its pools run


@dataclass
class Metrics:
    """What a refiner reports to its replica. Engine seconds are not here: the replica measures them
    as its busy time in the declared step (batches that overlap are counted once)."""

    preemptions: int | None = None  # vLLM's preemptions so far (None: the engine does not expose them)


class Refiner(Protocol):
    """How a batch of rows becomes outcomes; a replica holds one, and closes it when Ray Data drops it.

    ``steps()`` maps each step of the method's modes (``STEPS``) to what runs a batch of it with a
    blocking engine; ``async_steps()`` the same with an async engine (empty: the method has none).
    """

    provenance: dict[str, Any]

    def refine(self, rows: list[dict]) -> list[Outcome]: ...

    def steps(self) -> dict[str, Step]: ...

    def async_steps(self) -> dict[str, AsyncStep]: ...

    def metrics(self) -> Metrics: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Method:
    """A method as the job, the plan, the card and staging see it, declared once in its own module.

    Example:
        >>> from arhn_ray.refiners import method_for
        >>> from arhn_ray.config import load_config
        >>> method_for(load_config(overrides=["input.path=in", "output.path=out"])).modes
        ('fused', 'staged')
    """

    name: str
    modes: tuple[str, ...]  # the pipeline.mode values it runs in (STEPS says each mode's steps)
    replica: str  # what a replica holds, and so how it is placed: "llm" (engine.*) | "teacher" (baseline.*)
    has_async: bool  # its refiner's async_steps() run on an async engine (several batches at once)
    build: Callable[[Config, Any], Refiner]  # (cfg, an engine to use or None) -> the replica's refiner
    describe: Callable[[Config], dict[str, Any]]  # model, engine, variant, prompts, labels_from: the card's words
    repos: Callable[[Config], list[tuple[str, str, bool]]] = field(default=lambda cfg: [])  # (name, config key, tokenizer only)


def provenance(variant: str, model: str, settings: dict[str, Any], prompts: PromptSet | None = None) -> dict[str, Any]:
    """The ``provenance`` every refined row carries; ``method_hash`` covers the variant, what decides
    its labels (``settings``), the prompts (a method with none records none) and the model."""
    blob = json.dumps([variant, settings, prompts.sha256 if prompts else None, model], sort_keys=True, default=str)
    return {
        "model": model,
        "prompt_version": prompts.version if prompts else None,
        "prompt_sha256": prompts.sha256 if prompts else None,
        "variant": variant,
        "method_hash": hashlib.sha256(blob.encode()).hexdigest()[:16],
        "arhn_ray_version": __version__,
    }
