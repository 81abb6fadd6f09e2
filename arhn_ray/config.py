"""The job's configuration: OmegaConf structured config, YAML files, ``key=value`` overrides.

An unknown key or a bad value fails before any work and names the key. The saved config
leaves secrets out: only the *names* of environment variables that hold them are kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from arhn_ray.data.readers import FORMATS as READER_FORMATS
from arhn_ray.data.truncation import resolve_tokenizer
from arhn_ray.method.labeling import MethodOptions


@dataclass
class InputConfig:
    path: str = MISSING
    format: str = "auto"  # auto | rlhn | flagembedding
    storage_options: dict[str, Any] = field(default_factory=dict)
    max_passage_chars: int = 200_000
    limit: int | None = None  # at most this many rows per shard (trial runs)
    # the unit of work, memory and resume: a file is split into parts of about this many rows
    part_rows: int = 2000


@dataclass
class OutputConfig:
    path: str = MISSING
    storage_options: dict[str, Any] = field(default_factory=dict)
    overwrite: bool = False  # False: shards already complete are skipped (resume)


@dataclass
class EngineConfig:
    kind: str = "vllm"  # vllm | openai | replay
    model: str = "bundled:smollm2"
    tokenizer: str | None = None
    replay_path: str | None = None
    replay_delay_s: float = 0.0  # replay: latency per batch, standing in for an engine (benchmarks, fault tests)
    # replay: hold each request for its recorded tokens' time in max_num_seqs slots (engines/latency.py:
    # prefill_tokens_per_s, decode_tokens_per_s, max_num_seqs, time_scale, trace_dir)
    replay_latency: dict[str, Any] | None = None
    replicas: int = 1
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    device: str = "auto"  # auto | gpu | cpu
    num_cpus: float = 1.0  # per replica on CPU engines
    dtype: str = "auto"
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.9
    enable_prefix_caching: bool = True
    enforce_eager: bool = False
    # vllm: sequences and tokens one engine step schedules; None leaves vLLM's default, which differs
    # by front end (vllm.LLM: 256 / 8192 on a GPU; AsyncLLMEngine: 128 / 2048), so cluster configs set both
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    seed: int = 0
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = -1  # -1: all tokens (vLLM's "off")
    min_p: float = 0.0
    chat_template_kwargs: dict[str, Any] = field(default_factory=lambda: {"enable_thinking": False})
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    # vllm: an engine that fails to start (the GPU memory of the engine it replaces not yet free) is
    # started again, up to start_attempts times, start_retry_wait_s apart (doubling)
    start_attempts: int = 3
    start_retry_wait_s: float = 30.0
    # vllm: a call in flight with no engine step for this long means the engine is dead (hung GPU,
    # stopped process); the replica then exits and Ray restarts it. An exited engine process is
    # noticed within a second whatever this is.
    stall_timeout_s: float = 600.0
    # vllm: AsyncLLMEngine instead of vllm.LLM; each row goes Stage 1 -> Stage 2 on its own
    # and batches overlap (pipeline.max_concurrent_batches). replay supports it too.
    async_engine: bool = False
    # openai-compatible servers
    base_url: str | None = None
    api_key_env: str | None = None  # the NAME of the variable holding the key, never the key
    max_concurrency: int = 8
    timeout_s: float = 300.0
    regex_param: str = "structured_outputs"  # how the server takes a regex: structured_outputs | guided_regex | none
    max_attempts: int = 5


@dataclass
class MethodConfig:
    variant: str = "rf"
    max_negatives_per_chunk: int = 10
    positive_no_answer: str = "paper"
    max_relabeled: int | None = None
    paper_literal: bool = False
    fuzzy_threshold: float = 90.0
    ungrounded_as_no_answer: bool = True


@dataclass
class Stage1Config:
    constraint: str = "none"  # none | format | verbatim (with sentence_ids: any but none allows only existing ids)
    max_tokens: int = 1024
    # text: the model copies each snippet (the paper); sentence_ids: it answers ids of the passage's
    # numbered sentences and the snippet is cut from the passage (prompts ids-v1 unless prompts.dir is set)
    output: str = "text"


@dataclass
class Stage2Config:
    input: str = "snippet"  # snippet | passage (PRHN)
    constraint: str = "none"  # none | format
    max_tokens: int = 128
    engine: dict[str, Any] | None = None  # staged mode: overrides of `engine` for the Stage 2 pool


@dataclass
class TruncationConfig:
    tokenizer: str | None = None  # the retriever's tokenizer (path or name); None: no truncation
    max_seq_len: int = 512


@dataclass
class PromptsConfig:
    version: str = "paper-v1"
    dir: str | None = None


@dataclass
class PipelineConfig:
    mode: str = "fused"  # fused | staged
    batch_size: int = 16  # rows per actor call
    max_concurrent_batches: int = 1  # batches a replica works on at once; past 1 needs engine.async_engine
    retries: int = 2  # LLM call retries before a row is rejected
    # the run stops, naming the most common reason, once more than this share of the rows it has
    # seen were rejected (checked from max_rejected_min_rows rows on)
    max_rejected_fraction: float = 0.1
    max_rejected_min_rows: int = 200
    max_replica_restarts: int = 3  # per replica: a dead engine or a crashed process restarts it
    ray_address: str | None = None  # None: join a running cluster if there is one, else start one
    progress: bool = True
    ray_progress_bars: bool = False  # Ray Data's own operator bars, besides arhn-ray's progress line
    read_concurrency: int = 2  # parts read at once
    block_bytes: int = 1 << 20  # Ray Data's target block size: results flow to the writer batch by batch


@dataclass
class PreflightConfig:
    # the cluster has fewer GPUs than replicas x TP x PP: wait this long for them (an autoscaler may
    # add nodes), saying so every poll_s; None waits as long as it takes, 0 fails at once
    gpu_wait_s: float | None = None
    poll_s: float = 30.0


@dataclass
class Config:
    input: InputConfig = field(default_factory=InputConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    truncation: TruncationConfig = field(default_factory=TruncationConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    preflight: PreflightConfig = field(default_factory=PreflightConfig)


_CHOICES = {
    "input.format": READER_FORMATS,
    "engine.kind": ("vllm", "openai", "replay"),
    "engine.device": ("auto", "gpu", "cpu"),
    "engine.regex_param": ("structured_outputs", "guided_regex", "none"),
    "pipeline.mode": ("fused", "staged"),
}
_SECRET_WORDS = ("secret", "password", "session_token", "auth_token", "api_key", "apikey", "key_id", "access_key", "credential")
_SECRET_KEYS = {"key", "secret", "token", "password", "authorization"}


class ConfigError(ValueError):
    pass


def load_config(path: str | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults < YAML file < ``key=value`` overrides, checked against the schema."""
    try:
        conf = OmegaConf.structured(Config)
        if path:
            conf = OmegaConf.merge(conf, OmegaConf.load(path))
        if overrides:
            bad = [o for o in overrides if "=" not in o]
            if bad:
                raise ConfigError(f"override {bad[0]!r}: expected key=value")
            conf = OmegaConf.merge(conf, OmegaConf.from_dotlist(overrides))
        cfg: Config = OmegaConf.to_object(conf)  # type: ignore[assignment]
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        raise ConfigError(f"config key {key!r}: {e.msg if hasattr(e, 'msg') else e}") from None
    if cfg.stage1.output == "sentence_ids" and cfg.prompts.version == "paper-v1" and not cfg.prompts.dir:
        cfg.prompts.version = "ids-v1"  # the paper's Stage 1 asks for copied text, not ids
    check(cfg)
    return cfg


def check(cfg: Config) -> None:
    flat = OmegaConf.to_container(OmegaConf.structured(cfg))
    for key, allowed in _CHOICES.items():
        section, name = key.split(".")
        value = flat[section][name]  # type: ignore[index]
        if value not in allowed:
            raise ConfigError(f"config key {key!r}: {value!r} is not one of {', '.join(allowed)}")
    for key in ("engine.replicas", "engine.tensor_parallel_size", "engine.pipeline_parallel_size", "pipeline.batch_size",
                "pipeline.max_concurrent_batches", "input.part_rows", "pipeline.read_concurrency", "pipeline.block_bytes"):  # fmt: skip
        section, name = key.split(".")
        if flat[section][name] < 1:  # type: ignore[index]
            raise ConfigError(f"config key {key!r}: must be at least 1")
    if not 0.0 <= cfg.pipeline.max_rejected_fraction <= 1.0:
        raise ConfigError("config key 'pipeline.max_rejected_fraction': must be between 0 and 1")
    if cfg.engine.kind == "replay" and not cfg.engine.replay_path:
        raise ConfigError("config key 'engine.replay_path': required when engine.kind=replay")
    if cfg.engine.kind == "openai" and not cfg.engine.base_url:
        raise ConfigError("config key 'engine.base_url': required when engine.kind=openai")
    if cfg.engine.async_engine and cfg.engine.kind == "openai":
        raise ConfigError(
            "config key 'engine.async_engine': the openai engine has no async mode (it already sends requests concurrently)"
        )
    if cfg.pipeline.max_concurrent_batches > 1 and not cfg.engine.async_engine:
        raise ConfigError("config key 'pipeline.max_concurrent_batches': more than 1 needs engine.async_engine=true")
    if cfg.truncation.tokenizer:
        try:
            resolve_tokenizer(cfg.truncation.tokenizer)
        except RuntimeError as e:
            raise ConfigError(
                f"config key 'truncation.tokenizer': {cfg.truncation.tokenizer}: {e} (the cpu extra installs it)"
            ) from None
    try:
        method_options(cfg)
    except ValueError as e:
        raise ConfigError(f"config key 'method' / 'stage1' / 'stage2': {e}") from None


def stage2_engine(cfg: Config) -> EngineConfig:
    """The Stage 2 pool's engine in ``staged`` mode: ``engine`` with ``stage2.engine``'s overrides."""
    if not cfg.stage2.engine:
        return cfg.engine
    merged = OmegaConf.merge(OmegaConf.structured(cfg.engine), cfg.stage2.engine)
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def method_options(cfg: Config) -> MethodOptions:
    m = cfg.method
    return MethodOptions(
        variant=m.variant,
        max_negatives_per_chunk=m.max_negatives_per_chunk,
        stage2_input=cfg.stage2.input,
        positive_no_answer=m.positive_no_answer,
        max_relabeled=m.max_relabeled,
        paper_literal=m.paper_literal,
        fuzzy_threshold=m.fuzzy_threshold,
        ungrounded_as_no_answer=m.ungrounded_as_no_answer,
        stage1_constraint=cfg.stage1.constraint,
        stage2_constraint=cfg.stage2.constraint,
        stage1_output=cfg.stage1.output,
    )


def _is_secret(key: str) -> bool:
    k = key.lower()
    return not k.endswith("_env") and (k in _SECRET_KEYS or any(w in k for w in _SECRET_WORDS))


def _redact(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: "<redacted>" if _is_secret(str(k)) else _redact(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_redact(v) for v in node]
    return node


def to_yaml(cfg: Config) -> str:
    """The resolved config, with anything that looks like a secret replaced."""
    return OmegaConf.to_yaml(OmegaConf.create(_redact(OmegaConf.to_container(OmegaConf.structured(cfg)))))


def config_digest(cfg: Config) -> str:
    return hashlib.sha256(
        json.dumps(_redact(OmegaConf.to_container(OmegaConf.structured(cfg))), sort_keys=True).encode()
    ).hexdigest()[:16]


def secret_values(cfg: Config) -> list[str]:
    """The secret strings a config carries or names (for masking them in logs)."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if _is_secret(str(k)) and isinstance(v, str) and v:
                    found.append(v)
                else:
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(OmegaConf.to_container(OmegaConf.structured(cfg)))
    for env in (cfg.engine.api_key_env,):
        if env and os.environ.get(env):
            found.append(os.environ[env])
    return [v for v in found if len(v) >= 4]


class SecretMask(logging.Filter):
    """Replaces known secret values in every record a handler emits, from any library."""

    def __init__(self, secrets: list[str]):
        super().__init__()
        self.secrets = sorted(set(secrets), key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = message
        for secret in self.secrets:
            masked = masked.replace(secret, "<redacted>")
        if masked != message:
            record.msg, record.args = masked, None
        return True


def mask_secrets_in_logs(cfg: Config) -> None:
    secrets = secret_values(cfg)
    if not secrets:
        return
    mask = SecretMask(secrets)
    root = logging.getLogger()
    for handler in root.handlers:
        if not any(isinstance(f, SecretMask) and f.secrets == mask.secrets for f in handler.filters):
            handler.addFilter(mask)
