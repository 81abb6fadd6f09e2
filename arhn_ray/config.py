"""The job's configuration: OmegaConf structured config, YAML files, ``key=value`` overrides.

An unknown key or a bad value fails before any work and names the key. The saved config
leaves secrets out (arhn_ray/secrets.py): only the *names* of variables that hold them are kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from arhn_ray import bundled
from arhn_ray.data.readers import FORMATS as READER_FORMATS
from arhn_ray.engines.options import ENGINE_KINDS, EngineConfig
from arhn_ray.method.options import LabelRules, MethodOptions, OptionError
from arhn_ray.secrets import mask_in_logs, redact, secret_values


@dataclass
class InputConfig:
    path: str = MISSING  # a file, folder, glob, s3:// URI or hf://datasets/OWNER/NAME[@REV][/PATH] of parquet / JSONL shards
    format: str = "auto"  # auto | rlhn (RLHN/Tevatron rows) | flagembedding (query, pos, neg)
    # fsspec options (an S3 endpoint); credentials from the environment
    storage_options: dict[str, Any] = field(default_factory=dict)
    max_passage_chars: int = 200_000  # a longer passage rejects its row, naming the field
    limit: int | None = None  # at most this many rows per shard (trial runs)
    hub_path: str | None = None  # set by the run: an hf:// input.path as given, before its revision was pinned to a commit
    # the unit of work, memory and resume: a file is split into parts of about this many rows
    part_rows: int = 2000


@dataclass
class OutputConfig:
    path: str = MISSING  # local or s3://; a rerun skips the parts already written there
    storage_options: dict[str, Any] = field(default_factory=dict)  # fsspec options of the output
    overwrite: bool = False  # False: shards already complete are skipped (resume)
    review_sample: int = 200  # queries on review.html, stratified by decision and subset (arhn-ray review --sample)


TEACHER_KINDS = ("auto", "embedding", "cross-encoder")


@dataclass
class MethodConfig(LabelRules):
    """``method.*``: the rules that decide the labels (method/options.py's LabelRules) and the method."""

    # arhn (the two LLM stages) | topk_percpos (the teacher-score baseline, `baseline`): a method in
    # refiners.METHODS, each declared in its module with the pipeline.mode values it runs in
    name: str = "arhn"


@dataclass
class Stage1Config:
    # none | format | verbatim (with sentence_ids: any but none allows only existing ids)
    constraint: str = MethodOptions.stage1_constraint
    max_tokens: int = 1024  # Stage 1 output tokens a call; calls cut by it are counted (stage1_cut)
    # text: the model copies each snippet (the paper); sentence_ids: it answers ids of the passage's
    # numbered sentences and the snippet is cut from the passage (prompts ids-v2 unless prompts.dir is set)
    output: str = MethodOptions.stage1_output


@dataclass
class Stage2Config:
    input: str = MethodOptions.stage2_input  # snippet | passage (PRHN)
    constraint: str = MethodOptions.stage2_constraint  # none | format
    max_tokens: int = 128  # Stage 2 output tokens a call (a ranking); calls cut by it are counted (stage2_cut)
    engine: dict[str, Any] | None = None  # staged mode: overrides of `engine` for the Stage 2 pool


@dataclass
class TruncationConfig:
    tokenizer: str | None = None  # the retriever's tokenizer (path or name); None: no truncation
    max_seq_len: int = 512  # passages cut to what the retriever sees (E5-base: 512); the teachers read as much


IDS_PROMPTS = {"paper-v1": "ids-v1", "paper-v2": "ids-v2"}  # the sentence-ids twin of each copied-text version


@dataclass
class PromptsConfig:
    version: str = "paper-v2"  # paper-v1: Figure 3 word for word (no titles, n in the first line)
    dir: str | None = None  # a folder of your own prompt files (stage1.txt, stage1_document.txt, stage2.txt, ...)


@dataclass
class PipelineConfig:
    mode: str = "fused"  # fused | staged
    batch_size: int = 16  # rows per actor call
    max_concurrent_batches: int = 1  # batches a replica works on at once; past 1 needs engine.async_engine
    retries: int = 2  # LLM call retries before a row is rejected
    # the run stops, naming the most common reason, once more than this share of the rows it has
    # seen were rejected (checked from max_rejected_min_rows rows on)
    max_rejected_fraction: float = 0.1
    max_rejected_min_rows: int = 200  # rows seen before max_rejected_fraction is checked
    max_replica_restarts: int = 3  # per replica: a dead engine or a crashed process restarts it
    max_attempts: int = 3  # a lost node fails Ray 2.60's Dataset: the parts in flight run again, this many times in all
    replica_wait_s: int = 600  # after a lost node: how long a retry waits for one replica to start before it stops
    # after a lost node: end the failed attempt's replicas before the retry (they hold the CPUs or GPUs
    # its replicas need; false leaves them to Ray Data, and the retry waits for them: faults.py)
    end_failed_replicas: bool = True
    ray_address: str | None = None  # None: RAY_ADDRESS, else a local Ray of this run's own; 'auto' joins a running one
    progress: bool = True  # the progress line on the terminal (every 15 s)
    ray_progress_bars: bool = False  # Ray Data's own operator bars, besides arhn-ray's progress line
    read_concurrency: int = 2  # parts read at once
    block_bytes: int = 1 << 20  # Ray Data's target block size: results flow to the writer batch by batch


@dataclass
class BaselineConfig:
    """TopK-PercPos (method.name=topk_percpos): a negative scored above pos - |pos| * relative_margin is filtered."""

    model: str = "bundled:minilm"  # an embedding model or a cross-encoder (the paper's baseline: a BGE reranker)
    kind: str = "auto"  # auto | embedding | cross-encoder
    relative_margin: float = 0.05  # NV-Retriever's 5%: a negative above pos - |pos| x margin is filtered
    batch_size: int = 64  # pairs (or texts) the teacher scores at once
    query_prefix: str = ""  # e.g. "query: " for an E5 teacher
    passage_prefix: str = ""  # e.g. "passage: " for an E5 teacher
    keep: int | None = None  # NV-Retriever's top-k: the k best-scored negatives under the margin are kept (None: all)
    replicas: int = 0  # teachers: 0 is one per GPU on a GPU cluster (each takes one GPU), else engine.replicas


@dataclass
class ScreenConfig:
    """A teacher in front of Stage 1 (off while ``model`` is None): it scores each judged negative
    against the query, on the replica beside the engine (its GPU, fp16), and only the ``top_k``
    best-scored go to the LLM; the rest are kept with reason ``screened``. ``top_k: null`` scores
    and judges them all: the calibration run that ``arhn-ray calibrate`` reads to choose k."""

    model: str | None = None  # a teacher as baseline.model names one (bundled:minilm on CPU)
    top_k: int | None = MethodOptions.screen_top_k  # negatives a query sent to Stage 1; null: all (a calibration run)
    kind: str = "auto"  # auto | embedding | cross-encoder
    batch_size: int = 64  # pairs the teacher scores at once
    query_prefix: str = ""  # e.g. "query: " for an E5 teacher
    passage_prefix: str = ""  # e.g. "passage: " for an E5 teacher


@dataclass
class EvaluateConfig:
    """``arhn-ray evaluate``: the retriever each arm trains. Defaults: the bundled MiniLM on one CPU
    worker; the cluster config follows the paper (E5-base, prefixes, batch 128, lr 2e-5, 7 negatives)."""

    model: str = "bundled:minilm"  # the retriever every arm fine-tunes (the paper: intfloat/e5-base-v2)
    query_prefix: str = ""  # E5: "query: "
    passage_prefix: str = ""  # E5: "passage: "
    max_seq_len: int = 256  # tokens the retriever reads in training and retrieval (the paper: 512)
    batch_size: int = 16  # the global batch, split across the workers (the paper: 128)
    mini_batch_size: int | None = None  # set: CachedMultipleNegativesRankingLoss, for batches larger than memory holds
    lr: float = 2e-5  # learning rate (the paper: 2e-5)
    warmup_ratio: float = 0.1  # share of the steps warming the learning rate up
    epochs: int = 1  # one training instance a query an epoch (its positive and negatives drawn again each epoch)
    negatives: int = 7  # hard negatives an instance (the paper: 7)
    seed: int = 0  # the bootstrap's resampling
    # each arm trains once a seed (its examples drawn and its trainer seeded with it); the table gives
    # the mean over seeds, each seed's score and their spread, beside the paired interval over queries
    seeds: list[int] = field(default_factory=lambda: [0])
    workers: int = 1  # Ray Train workers per arm (data parallel)
    # ray_train | in_process (one worker, in evaluate's own process: no Ray Train controller, worker
    # group or placement group whose health checks a loaded laptop trips) | auto: in_process with one
    # worker and no cluster address (pipeline.ray_address, RAY_ADDRESS), else ray_train
    trainer: str = "auto"
    use_gpu: bool = False  # a GPU a worker and an encoder; bf16 where the GPU has it
    # memory a training worker reserves (Ray's memory resource), so that arms side by side fit: on CPU
    # these defaults peak at 10.6 GB a worker (activations; jobs/benchmarks/evaluate.py)
    worker_memory_gb: float | None = 11.0
    arms_at_once: int = 0  # arms trained side by side; 0: as many as the cluster holds (GPUs or CPUs, and memory)
    top_k: int = 100  # passages retrieved a query (Recall@100)
    encoders: int = 0  # corpus encoders (a GPU each with use_gpu): 0 is one per GPU of the cluster, or one on CPU
    encode_batch_size: int = 256  # passages a Ray Data batch of the encoder pool holds
    search_block: int = 65_536  # passages FAISS searches at a time: the search's memory (65K x 768 fp32 = 201 MB)
    bootstrap_samples: int = 1000  # resamples of the paired interval
    split: str = "test"  # the BEIR qrels file read (qrels/<split>.tsv)


@dataclass
class PreflightConfig:
    # the cluster has fewer GPUs than replicas x TP x PP: wait this long for them (an autoscaler may
    # add nodes), saying so every poll_s; None waits as long as it takes, 0 fails at once
    gpu_wait_s: float | None = None
    poll_s: float = 30.0  # how often the wait for GPUs says where it stands


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
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    screen: ScreenConfig = field(default_factory=ScreenConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)


_CHOICES = {
    "input.format": READER_FORMATS,
    "engine.kind": ENGINE_KINDS,
    "engine.device": ("auto", "gpu", "cpu"),
    "engine.regex_param": ("structured_outputs", "guided_regex", "none"),
    "pipeline.mode": ("fused", "staged"),
    "baseline.kind": TEACHER_KINDS,
    "screen.kind": TEACHER_KINDS,
    "evaluate.trainer": ("auto", "ray_train", "in_process"),
}  # the method's options check their own values (MethodOptions), named by their keys here:
OPTION_KEYS = {f.name: f"method.{f.name}" for f in fields(LabelRules)} | {
    "stage2_input": "stage2.input", "stage1_constraint": "stage1.constraint", "stage2_constraint": "stage2.constraint",
    "stage1_output": "stage1.output", "screen_top_k": "screen.top_k"}  # fmt: skip


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
    if cfg.stage1.output == "sentence_ids" and cfg.prompts.version in IDS_PROMPTS and not cfg.prompts.dir:
        cfg.prompts.version = IDS_PROMPTS[cfg.prompts.version]  # the paper's Stage 1 asks for copied text, not ids
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
                "pipeline.max_concurrent_batches", "pipeline.max_attempts", "input.part_rows", "pipeline.read_concurrency", "pipeline.block_bytes"):  # fmt: skip
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
    if cfg.screen.top_k is not None and not cfg.screen.model:
        raise ConfigError("config key 'screen.top_k': a screen needs a teacher (screen.model), e.g. screen.model=bundled:minilm")
    if cfg.screen.model and cfg.method.name != "arhn":
        raise ConfigError(
            f"config key 'screen.model': the screen sits in front of ARHN's LLM; method.name={cfg.method.name} has none"
        )
    if cfg.pipeline.max_concurrent_batches > 1 and not cfg.engine.async_engine:
        raise ConfigError("config key 'pipeline.max_concurrent_batches': more than 1 needs engine.async_engine=true")
    if not cfg.evaluate.seeds or cfg.evaluate.epochs < 1:
        raise ConfigError("config key 'evaluate.seeds': at least one seed, and evaluate.epochs at least 1")
    if cfg.truncation.tokenizer:
        try:
            bundled.resolve(cfg.truncation.tokenizer)
        except RuntimeError as e:
            raise ConfigError(
                f"config key 'truncation.tokenizer': {cfg.truncation.tokenizer}: {e} (the cpu extra installs it)"
            ) from None
    try:
        method_options(cfg)
    except OptionError as e:
        raise ConfigError(f"config key {OPTION_KEYS[e.option]!r}: {e}") from None


def pools(cfg: Config) -> list[tuple[str, EngineConfig]]:
    """The replicas' pools, a (step, engine) each: ``fused`` runs the whole method in one pool,
    ``staged`` runs Stage 1 and Stage 2 in a pool each (Stage 2's engine: ``stage2.engine``)."""
    if cfg.pipeline.mode == "fused":
        return [("fused", cfg.engine)]
    return [("stage1", cfg.engine), ("stage2", stage2_engine(cfg))]


def stage2_engine(cfg: Config) -> EngineConfig:
    """The Stage 2 pool's engine in ``staged`` mode: ``engine`` with ``stage2.engine``'s overrides."""
    if not cfg.stage2.engine:
        return cfg.engine
    merged = OmegaConf.merge(OmegaConf.structured(cfg.engine), cfg.stage2.engine)
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def method_options(cfg: Config) -> MethodOptions:
    """The options ``method/`` reads, each from its config key (OPTION_KEYS)."""
    return MethodOptions(
        **{name: getattr(getattr(cfg, key.split(".")[0]), key.split(".")[1]) for name, key in OPTION_KEYS.items()}
    )


def as_dict(cfg: Config) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(cfg))  # type: ignore[return-value]


def to_yaml(cfg: Config) -> str:
    """The resolved config, with anything that looks like a secret replaced."""
    return OmegaConf.to_yaml(OmegaConf.create(redact(as_dict(cfg))))


def mask_secrets_in_logs(cfg: Config) -> None:
    """Every secret the config carries or names (``engine.api_key_env``) is masked in every log handler."""
    mask_in_logs(secret_values(as_dict(cfg), [cfg.engine.api_key_env, "HF_TOKEN"]))  # HF_TOKEN: an hf:// input's
