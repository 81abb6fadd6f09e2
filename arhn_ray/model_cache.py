"""Every Hugging Face repository a config needs, staged once, found again offline.

Cluster pods run with ``HF_HUB_OFFLINE=1`` and read models from a volume staged before the job
(``arhn-ray stage CONFIG``, jobs/kuberay/stage-model.yaml). The list comes from the config
itself, so a model or tokenizer the config names cannot be left out of the staging, and the
preflight can tell, before any engine starts, which of them a pod would not find.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from arhn_ray import bundled
from arhn_ray.config import Config
from arhn_ray.refiners import method_for

# a tokenizer needs these files, not the model's weights
TOKENIZER_FILES = ["*.json", "*.txt", "*.model", "*.tiktoken", "tokenizer*"]


@dataclass(frozen=True)
class Repo:
    name: str  # a Hugging Face repository id
    use: str  # what reads it, by config key
    tokenizer_only: bool


def _is_hub_name(name: str | None) -> bool:
    """A repository id, not a bundled model, a path on this machine or an empty setting."""
    if not name or bundled.is_bundled(name) or name.startswith(("/", ".", "~")) or os.path.exists(name):
        return False
    return name.count("/") == 1


def required_repos(cfg: Config, evaluate: bool = False) -> list[Repo]:
    """The repositories ``cfg`` loads from the hub: the engines' models and tokenizers (in-process
    vLLM only: a server or a replay needs none here), or the baseline's teacher, and the truncation
    tokenizer; with ``evaluate``, also what ``arhn-ray evaluate`` loads (its retriever, the teacher
    of the baseline it runs)."""
    found: dict[str, Repo] = {}

    def need(name: str | None, use: str, tokenizer_only: bool) -> None:
        if not name or not _is_hub_name(name):
            return
        known = found.get(name)
        if known is None or (known.tokenizer_only and not tokenizer_only):
            found[name] = Repo(name, use, tokenizer_only)

    for name, key, tokenizer_only in method_for(cfg).repos(cfg):
        need(name, key, tokenizer_only)
    need(cfg.truncation.tokenizer, "truncation.tokenizer", True)
    if evaluate:  # evaluate runs the baseline too, whatever this output's method
        need(cfg.baseline.model, "baseline.model", False)
        need(cfg.evaluate.model, "evaluate.model", False)
    return list(found.values())


def missing_repos(cfg: Config) -> list[Repo]:
    """The required repositories that are not in this machine's Hugging Face cache."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    missing = []
    for repo in required_repos(cfg):
        try:
            folder = snapshot_download(repo.name, local_files_only=True)
        except LocalEntryNotFoundError:
            missing.append(repo)
            continue
        if not repo.tokenizer_only and not any(f.endswith((".safetensors", ".bin")) for f in os.listdir(folder)):
            missing.append(repo)  # only its tokenizer was staged
    return missing


def stage(cfg: Config) -> list[tuple[Repo, str]]:
    """Download every repository the config's refine and evaluate load into the Hugging Face cache
    (``HF_HOME``); returns where each went."""
    from huggingface_hub import snapshot_download

    staged = []
    for repo in required_repos(cfg, evaluate=True):
        try:
            staged.append((repo, snapshot_download(repo.name, allow_patterns=TOKENIZER_FILES if repo.tokenizer_only else None)))
        except Exception as e:  # the Hub's error names a URL at best: say which model and what for
            raise StageFailed(f"could not fetch {repo.name} ({repo.use}) from the Hub: {type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}") from e  # fmt: skip
    return staged


class StageFailed(ConnectionError):
    """A model or tokenizer ``stage`` could not download, named."""
