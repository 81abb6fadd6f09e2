"""What every method's refiner is: rows in, one outcome each out, with the provenance its rows carry."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Protocol

from arhn_ray import __version__
from arhn_ray.method.prompts import PromptSet


@dataclass
class Outcome:
    """A refined row (``row``) or a rejection (``rejected`` with ``field``)."""

    row: dict
    rejected: str | None = None
    field: str | None = None


class Refiner(Protocol):
    """How a batch of rows becomes outcomes; a replica holds one, and closes it when Ray Data drops it."""

    provenance: dict[str, Any]

    def refine(self, rows: list[dict]) -> list[Outcome]: ...

    def close(self) -> None: ...


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
