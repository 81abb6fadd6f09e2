"""``arhn-ray plan``: what a run would do and cost, before it runs. Sends nothing to an LLM.

Reads the input the way the job does (parts, validation, duplicates, chunks of N), builds the
real Stage 1 prompts and counts their tokens with the configured model's tokenizer when it is
on this machine (else the truncation tokenizer, else 4 characters a token, and says which).
What it cannot know before the LLM answers comes from assumptions it prints next to the
figures: output tokens per document and per ranked item, and throughput per GPU.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from arhn_ray import bundled
from arhn_ray.config import Config, method_options
from arhn_ray.data.rows import read_rows
from arhn_ray.gpu_rates import Rates
from arhn_ray.method import labeling as lb
from arhn_ray.method.prompts import PromptSet, chat
from arhn_ray.refiners import method_for

# Stage 1 output tokens a document. text: the paper's block markers (~19 tokens) around a snippet
# (~30) for the 44% of documents that Table 4 implies have one (the positive and 3.8 of 10
# negatives), NO_ANSWER (~3) for the rest: 19 + 0.44 x 30 + 0.56 x 3 = 34. sentence_ids: one
# "docK: S2-S3" line (94 tokens for 11 answers with SmolLM2's tokenizer).
OUTPUT_TOKENS_PER_DOC = {"text": 34.0, "sentence_ids": 8.5}


@dataclass
class Assumptions:
    """What the plan cannot count; each figure it prints says which of these it rests on. The LLM's
    GPU time comes from ``rates`` (arhn_ray/gpu_rates.py: prefill and decode derived from the GPU's
    peak, its bandwidth, the model's size and KV bytes a token, and two efficiencies)."""

    stage1_output_tokens_per_doc: float | None = None  # None: OUTPUT_TOKENS_PER_DOC of stage1.output
    stage2_item_tokens: float = 40.0  # a ranked snippet in the Stage 2 prompt (about one sentence)
    stage2_output_tokens_per_item: float = 4.0  # "[3] > "
    rates: Rates = field(default_factory=Rates)
    sample_rows: int = 2000  # rows read per file; the rest of a file is scaled from them
    # evaluate: training queries a second per worker, one example (query, 1 positive, evaluate.negatives
    # negatives) a query and epoch. GPU: E5-base at 512 tokens, batch 128, 1 + 1 + 7 passages, on one A100,
    # not measured (no GPU here). CPU: jobs/benchmarks/evaluate.py's figure for the bundled MiniLM on one
    # Ray Train worker of one CPU (RESULTS.md).
    train_queries_per_gpu_s: float = 120.0
    train_queries_per_cpu_s: float = 0.28
    # evaluate's retrieval: the paper's 16 BEIR sets hold 42.9M passages (BioASQ 14.9M, FEVER and
    # Climate-FEVER 5.4M each, HotpotQA 5.2M, DBPedia 4.6M, ...), each encoded by 4 models; E5-base
    # in fp16 on one A100 at BEIR's ~100-token passages, not measured (no GPU here)
    eval_passages: int = 42_900_000
    encode_passages_per_gpu_s: float = 3000.0
    # TopK-PercPos and the screen: (query, passage) pairs a teacher scores per A100-second, a
    # BGE-m3-sized reranker in fp16 at ~200 tokens a pair, not measured
    teacher_pairs_per_gpu_s: float = 1500.0
    # vLLM's prefix cache serves whole KV blocks (16 tokens on a GPU): a prompt's shared head, cut
    # to whole blocks, costs no prefill after a replica's first call
    prefix_block_tokens: int = 16


@dataclass
class RunEstimate:
    files: int = 0
    parts: int = 0
    parts_written: int = 0  # finished parts of the output, left out of the plan
    rows: int = 0  # all rows of the input (metadata; JSONL estimated from its size)
    rows_sampled: int = 0
    rows_invalid: int = 0
    negatives: int = 0
    duplicates_of_positive: int = 0
    negatives_per_query: int | None = None  # method.negatives_per_query (None: every negative judged)
    unjudged: int = 0  # past method.negatives_per_query: no call, not kept
    screened: int = 0  # below screen.top_k: no Stage 1 call, kept (the plan screens the first k as a stand-in)
    screen_pairs: int = 0  # (query, negative) pairs the screen's teacher scores
    screen_hours: float = 0.0  # the replicas' time the teacher takes, on their GPUs beside the engines
    chunks: int = 0
    stage1_calls: int = 0
    stage2_calls_at_most: int = 0
    stage1_prompt_tokens: int = 0
    stage1_output_tokens: int = 0
    stage2_prompt_tokens_at_most: int = 0
    stage2_output_tokens_at_most: int = 0
    stage1_shared_prefix_tokens: int = 0  # the head every Stage 1 prompt shares, counted from the prompts
    stage2_shared_prefix_tokens: int = 0
    cached_prompt_tokens: int = 0  # prompt tokens the prefix cache serves (no prefill), both stages
    gpus: int = 0
    hours: float = 0.0
    gpu_hours: float = 0.0
    floor_hours: float = 0.0  # the LLM's FLOPs at 100% of peak on the same GPUs: no run is faster
    prefill_tokens_per_gpu_s: float = 0.0  # from assumptions.rates
    decode_tokens_per_gpu_s: float = 0.0  # from assumptions.rates, at this run's mean context
    rates_check: str = ""  # the rate model against a published vLLM measurement
    evaluate_runs: int = 0  # arms x seeds
    evaluate_arms_at_once: int = 0
    evaluate_hours: float = 0.0  # training the three arms on the config's cluster (encoding the eval corpus not included)
    evaluate_device: str = ""  # GPU (evaluate.use_gpu) or CPU
    evaluate_device_hours: float = 0.0
    evaluate_encoders: int = 0
    evaluate_encode_hours: float = 0.0  # every arm's model over assumptions.eval_passages, on evaluate.encoders GPUs
    teachers: int = 0  # method.name=topk_percpos: teacher replicas, one GPU each
    teacher_hours: float = 0.0
    tokenizer: str = ""
    scaled: bool = False
    output: str = ""
    assumptions: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_plan(cfg: Config, assume: Assumptions | None = None) -> RunEstimate:
    from arhn_ray.data.layout import OutputLayout
    from arhn_ray.data.parts import parts_to_run

    method = method_for(cfg)  # checks method.name / pipeline.mode before any arithmetic
    options = method_options(cfg)
    assume = assume or Assumptions()
    if assume.stage1_output_tokens_per_doc is None:
        assume = replace(assume, stage1_output_tokens_per_doc=OUTPUT_TOKENS_PER_DOC[options.stage1_output])
    try:
        written = {} if cfg.output.overwrite else OutputLayout(cfg.output.path, cfg.output.storage_options).complete_parts()
        output_note = (
            f"{len(written)} parts already written in {cfg.output.path} are left out "
            "(output.overwrite=true or a new output.path plans the whole input)"
            if written
            else f"{cfg.output.path}: nothing written yet"
        )
    except Exception as e:  # no credentials for the output here: plan the whole input
        written, output_note = {}, f"{cfg.output.path} not readable here ({type(e).__name__}): the whole input is planned"
    parts, _ = parts_to_run(cfg.input.path, cfg.input.part_rows, cfg.input.storage_options, cfg.input.limit, written)
    ids, tokenizer_name = token_ids(cfg)
    heads = (SharedPrefix(), SharedPrefix())
    prompts = PromptSet.load(cfg.prompts.version, cfg.prompts.dir)
    truncate = _truncator(cfg)
    p = RunEstimate(
        files=len({x.uri for x in parts}),
        parts=len(parts),
        tokenizer=tokenizer_name,
        assumptions=asdict(assume),
        output=output_note,
        parts_written=len(written),
        negatives_per_query=options.negatives_per_query,
    )
    totals = {"rows": 0, "sampled": 0}
    by_file: dict[str, list] = {}
    for part in parts:
        by_file.setdefault(part.uri, []).append(part)
    for file_parts in by_file.values():
        rows_in_file = sum(x.rows if x.rows is not None else x.estimated_rows for x in file_parts)
        sample = RunEstimate()
        for part in file_parts:
            for r in read_rows(part, cfg.input.format, cfg.input.max_passage_chars, cfg.input.storage_options):
                if sample.rows_sampled >= assume.sample_rows:
                    break
                sample.rows_sampled += 1
                _count_row(sample, r.row, options, prompts, truncate, ids, assume, heads, bool(cfg.screen.model))
            if sample.rows_sampled >= assume.sample_rows:
                break
        scale = rows_in_file / sample.rows_sampled if sample.rows_sampled else 0.0
        p.scaled = p.scaled or scale > 1.0
        for key in ("rows_invalid", "negatives", "duplicates_of_positive", "unjudged", "screened", "screen_pairs", "chunks", "stage1_calls", "stage2_calls_at_most",
                    "stage1_prompt_tokens", "stage1_output_tokens", "stage2_prompt_tokens_at_most", "stage2_output_tokens_at_most"):  # fmt: skip
            setattr(p, key, getattr(p, key) + round(getattr(sample, key) * scale))
        totals["rows"] += rows_in_file
        totals["sampled"] += sample.rows_sampled
    p.rows, p.rows_sampled = totals["rows"], totals["sampled"]
    e = cfg.engine
    p.gpus = 0 if e.device == "cpu" or e.kind != "vllm" else e.replicas * e.tensor_parallel_size * e.pipeline_parallel_size
    block = max(1, assume.prefix_block_tokens)
    p.stage1_shared_prefix_tokens, p.stage2_shared_prefix_tokens = heads[0].tokens, heads[1].tokens
    replicas = max(1, e.replicas)
    if e.kind == "vllm" and e.enable_prefix_caching:
        p.cached_prompt_tokens = (p.stage1_shared_prefix_tokens // block * block) * max(0, p.stage1_calls - replicas) + (
            p.stage2_shared_prefix_tokens // block * block
        ) * max(0, p.stage2_calls_at_most - replicas)
    _price_llm(p, cfg, assume.rates, replicas)
    if cfg.screen.model and p.gpus:  # the teacher blocks its replica (both of a TP 2 replica's GPUs) while it scores
        p.screen_hours = p.screen_pairs / assume.teacher_pairs_per_gpu_s / replicas / 3600
        p.hours += p.screen_hours
        p.gpu_hours = p.hours * p.gpus
    if method.replica == "teacher":  # it scores every positive and negative; no LLM call is made
        p.teachers = (cfg.baseline.replicas or p.gpus) if p.gpus else 0
        pairs = p.negatives + p.rows
        p.teacher_hours = pairs / assume.teacher_pairs_per_gpu_s / p.teachers / 3600 if p.teachers else 0.0
        p.hours, p.gpu_hours, p.cached_prompt_tokens = p.teacher_hours, p.teacher_hours * p.teachers, 0
        for key in ("stage1_calls", "stage2_calls_at_most", "stage1_prompt_tokens", "stage1_output_tokens",
                    "stage2_prompt_tokens_at_most", "stage2_output_tokens_at_most"):  # fmt: skip
            setattr(p, key, 0)
    _price_evaluate(p, cfg, assume)
    return p


def _price_llm(p: RunEstimate, cfg: Config, rates: Rates, replicas: int) -> None:
    """Hours on the config's GPUs: prefill of the prompt tokens the cache does not serve, decode of
    the output tokens at each stage's mean context (prompt + half the output), from ``rates``."""
    prompt = p.stage1_prompt_tokens + p.stage2_prompt_tokens_at_most - p.cached_prompt_tokens
    decode_s, output = 0.0, 0
    for calls, prompt_s, output_s in ((p.stage1_calls, p.stage1_prompt_tokens, p.stage1_output_tokens),
                                      (p.stage2_calls_at_most, p.stage2_prompt_tokens_at_most, p.stage2_output_tokens_at_most)):  # fmt: skip
        if calls and output_s:
            decode_s += output_s / rates.decode_tokens_per_gpu_s(prompt_s / calls + output_s / calls / 2)
            output += output_s
    gpu_s = prompt / rates.prefill_tokens_per_gpu_s() + decode_s
    p.prefill_tokens_per_gpu_s = rates.prefill_tokens_per_gpu_s()
    p.decode_tokens_per_gpu_s = output / decode_s if decode_s else 0.0
    modelled, measured, source = rates.check()
    p.rates_check = f"{modelled:,.0f} tokens/s modelled, {measured:,.0f} measured by\n                    {source}"
    p.hours = gpu_s / p.gpus / 3600 if p.gpus else 0.0
    p.gpu_hours = p.hours * p.gpus
    p.floor_hours = rates.floor_s(prompt + output) / p.gpus / 3600 if p.gpus else 0.0


def _price_evaluate(p: RunEstimate, cfg: Config, assume: Assumptions) -> None:
    """``arhn-ray evaluate`` after the run: three arms a seed of ``evaluate.seeds``, each one
    training instance a valid row an epoch, side by side as the refine run's GPUs (or this
    machine's CPUs) hold them."""
    from arhn_ray.evaluate.train import arm_layout

    ev = cfg.evaluate
    runs = 3 * len(ev.seeds)
    # the refine run's GPUs; on CPU this machine, with Ray's default share (70%) of its memory
    memory = 0.7 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    slots = {"GPU": float(p.gpus)} if ev.use_gpu else {"CPU": float(os.cpu_count() or 1), "memory": memory}
    p.evaluate_device = "GPU" if ev.use_gpu else "CPU"
    _, p.evaluate_arms_at_once = arm_layout(ev, slots, runs)
    rate = assume.train_queries_per_gpu_s if ev.use_gpu else assume.train_queries_per_cpu_s
    arm_s = (p.rows - p.rows_invalid) * ev.epochs / (ev.workers * rate)
    p.evaluate_runs = runs
    p.evaluate_hours = -(-runs // p.evaluate_arms_at_once) * arm_s / 3600
    p.evaluate_device_hours = runs * arm_s * ev.workers / 3600
    if ev.use_gpu and p.gpus:
        p.evaluate_encoders = ev.encoders or p.gpus
        models = 1 + runs  # zero-shot and every trained run encode every corpus
        p.evaluate_encode_hours = models * assume.eval_passages / assume.encode_passages_per_gpu_s / p.evaluate_encoders / 3600


class SharedPrefix:
    """The token prefix every prompt fed to it shares (with the first one): what a prefix cache can serve."""

    def __init__(self) -> None:
        self.first: list[int] | None = None
        self.tokens = 0

    def add(self, ids: list[int]) -> None:
        if self.first is None:
            self.first, self.tokens = ids, len(ids)
            return
        self.tokens = len(os.path.commonprefix([self.first[: self.tokens], ids]))


def _count_row(
    p: RunEstimate, row: dict | None, options, prompts, truncate, ids, assume: Assumptions, heads, screen: bool
) -> None:
    if row is None:
        p.rows_invalid += 1
        return
    plan = lb.plan_row(row, options, truncate)
    p.negatives += len(row["negative_passages"])
    p.duplicates_of_positive += len(plan.duplicates)
    p.unjudged += len(plan.unjudged)
    if screen:  # the teacher scores every judged negative; the plan screens the first k as a stand-in for its top k
        p.screen_pairs += len(plan.judged)
        plan = lb.screen_plan(plan, [-float(i) for i in range(len(plan.judged))], options)
        p.screened += len(plan.screened)
    for c, members in enumerate(plan.chunks):
        prompt, _ = lb.stage1_request(plan, c, prompts, options)
        p.chunks += 1
        p.stage1_calls += 1
        tokens = ids(chat(prompt))
        heads[0].add(tokens)
        p.stage1_prompt_tokens += len(tokens)
        p.stage1_output_tokens += round(assume.stage1_output_tokens_per_doc * (len(members) + 1))
        # at most: every negative of the chunk carries a snippet, so the chunk makes a Stage 2 call
        p.stage2_calls_at_most += 1
        header_ids = ids(chat(prompts.stage2_prompt(row["query"], [])))
        heads[1].add(header_ids)
        header = len(header_ids)
        p.stage2_prompt_tokens_at_most += header + round(assume.stage2_item_tokens * (len(members) + 1))
        p.stage2_output_tokens_at_most += round(assume.stage2_output_tokens_per_item * (len(members) + 1))


def token_ids(cfg: Config):
    """A chat's prompt token ids with the model's own tokenizer and chat template when this
    machine has it; else with the truncation tokenizer; else 4-character pieces standing in for tokens."""
    from transformers import AutoTokenizer

    model = cfg.engine.tokenizer or cfg.engine.model
    try:
        model = bundled.resolve(model)
        tok = AutoTokenizer.from_pretrained(model, local_files_only=True)
        kwargs = dict(cfg.engine.chat_template_kwargs)

        def with_template(messages: list[dict]) -> list[int]:
            ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, **kwargs)
            return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "input_ids") else ids)

        return with_template, f"{cfg.engine.model} (the model's own tokenizer and chat template)"
    except Exception:
        pass
    if cfg.truncation.tokenizer:
        try:
            tok = AutoTokenizer.from_pretrained(bundled.resolve(cfg.truncation.tokenizer), local_files_only=True)
            return (lambda messages: list(tok("".join(m["content"] for m in messages))["input_ids"])), (
                f"{cfg.truncation.tokenizer} (the truncation tokenizer: {cfg.engine.model}'s is not on this machine)"
            )
        except Exception:
            pass

    def pieces(messages: list[dict]) -> list[int]:
        text = "".join(m["content"] for m in messages)
        return [hash(text[i : i + 4]) for i in range(0, len(text) - 3, 4)]

    return pieces, "4 characters a token (no tokenizer on this machine)"


def _truncator(cfg: Config):
    from arhn_ray.data.truncation import make_truncator

    try:
        return make_truncator(cfg.truncation.tokenizer, cfg.truncation.max_seq_len, local_files_only=True)
    except Exception:  # not on this machine: the plan counts untruncated passages, an upper bound
        return None
