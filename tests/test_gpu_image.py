"""The GPU image's install resolves for the image's own platform (CPython 3.12 manylinux, vLLM's
CUDA wheels), checked by a pip dry run against PyPI's metadata, not by comparing version strings.
Each test asks PyPI (~1 min): marked ``network``."""

from __future__ import annotations

import re

import pytest
from helpers import ROOT

pytestmark = pytest.mark.network


def gpu_image():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_image", ROOT / "jobs" / "gpu_image.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_images_install_resolves_on_its_platform_to_exactly_the_pins():
    g = gpu_image()
    resolved, output = g.resolve(g.CONSTRAINTS)
    assert resolved is not None, output
    pinned = {}
    for line in g.CONSTRAINTS.read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pinned[g.canonical(name)] = version
    assert resolved == pinned  # every package the image gets is pinned, at the version pinned
    assert (resolved["vllm"], resolved["torch"], resolved["ray"]) == ("0.32.0", "2.13.0", "2.60.0")


def test_a_pin_that_clashes_with_the_cuda_torch_is_caught(tmp_path):
    """The clash the last resolution had: triton 3.9.0 (resolved beside torch+cpu) against the
    CUDA torch 2.13.0's own triton==3.7.1."""
    g = gpu_image()
    bad = tmp_path / "constraints.txt"
    bad.write_text(re.sub(r"(?m)^triton==.*$", "triton==3.9.0", g.CONSTRAINTS.read_text()))
    resolved, output = g.resolve(bad)
    assert resolved is None and "ResolutionImpossible" in output, output  # the same file with triton==3.7.1 resolves (above)
