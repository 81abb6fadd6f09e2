"""The real vLLM CPU engine with the bundled model (one engine start for the module), the
bundled model's preparation, and a tiny random-weight Qwen3 so the paper's architecture runs.

One real query (25 negatives, 3 Stage 1 calls) per mode: on this 2-core CPU a query costs the
bundled model about a minute of generation, and each engine run is done once and shared."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest
from helpers import RLHN_STAGE1, ROOT, load_jsonl

from arhn_ray.bundled import minilm_path
from arhn_ray.data.records import validate_row
from arhn_ray.data.truncation import Truncator
from arhn_ray.engines.base import ChatRequest
from arhn_ray.method import labeling as lb
from arhn_ray.method.prompts import PromptSet, chat
from arhn_ray.method.snippets import EXACT, OK
from arhn_ray.refiners.arhn import ArhnRefiner

pytestmark = pytest.mark.vllm

CPU = dict(enforce_eager=True, gpu_memory_utilization=0.2, max_model_len=8192)


@pytest.fixture(scope="module")
def engine():
    from arhn_ray.engines.options import EngineConfig
    from arhn_ray.engines.vllm_engine import VLLMEngine

    eng = VLLMEngine(EngineConfig(**CPU))
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def rows():
    return [validate_row(r) for r in load_jsonl(RLHN_STAGE1)[:1]]


@pytest.fixture(scope="module")
def truncate():
    return Truncator(minilm_path(), 512)


VERBATIM = lb.MethodOptions(stage1_constraint="verbatim", stage2_constraint="format")


@pytest.fixture(scope="module")
def verbatim_outs(engine, rows, truncate):
    """The blocking engine's refinement of the rows, shared by the tests that compare with it."""
    return ArhnRefiner(engine, VERBATIM, PromptSet.load(), truncate).refine([dict(r) for r in rows])


def test_verbatim_constraint_gives_exact_snippets(verbatim_outs):
    outs = verbatim_outs
    assert all(o.rejected is None for o in outs)
    snippets = 0
    for o in outs:
        assert len(o.row["decisions"]) == 25
        for call in o.row["llm"]:
            assert call["stage1_output_tokens"] > 0 and call["stage1_prompt_tokens"] > 0
        for d in o.row["decisions"]:
            if d["snippet"] is not None:
                snippets += 1
                assert d["grounding"] == EXACT
    assert snippets > 0


def test_sentence_ids_give_exact_snippets_for_a_fraction_of_the_output(engine, rows, truncate):
    """Issue 12: the real engine answers sentence ids under the ids constraint; every snippet is
    cut from its passage (exact), and Stage 1 writes far fewer tokens than copying does."""
    options = lb.MethodOptions(stage1_constraint="verbatim", stage2_constraint="format", stage1_output="sentence_ids")
    outs = ArhnRefiner(engine, options, PromptSet.load("ids-v2"), truncate).refine([dict(r) for r in rows])
    assert all(o.rejected is None for o in outs)
    groundings = [d["grounding"] for o in outs for d in o.row["decisions"] if d["snippet"] is not None]
    assert groundings and set(groundings) == {EXACT}
    for o in outs:
        for call in o.row["llm"]:
            lines = call["stage1_text"].splitlines()
            assert [line.split(":")[0] for line in lines] == [f"doc{k}" for k in range(1, len(lines) + 1)], call["stage1_text"]
            # one "docK: S2-S3" line a document, ~8 tokens (copying into blocks averaged ~630 a call)
            assert call["stage1_output_tokens"] <= 12 * len(lines)


def test_format_constraint_never_falls_back(engine, rows, truncate):
    """Every block the model writes under the format constraint parses, and the run gets as far
    as Stage 2. The grammar cannot make a call fit its max_tokens (a 135M model may loop inside a
    block): a call cut by the length limit has its blocks well formed up to the cut, the last
    possibly unclosed, the rest missing; a call that ends by itself has every block ok."""
    options = lb.MethodOptions(stage1_constraint="format", stage2_constraint="format")
    refiner = ArhnRefiner(engine, options, PromptSet.load(), truncate, stage1_max_tokens=1024)
    staged = refiner.stage1([dict(r) for r in rows])
    oks = 0
    for o in staged:
        plan = lb.plan_row(o.row, options, truncate)
        for c, call in enumerate(o.row["llm"]):
            statuses = [p.status for p in lb.read_stage1(plan, c, call["stage1_text"], options).parsed]
            oks += statuses.count(OK)
            if call["stage1_finish_reason"] == "length":  # ok ... ok, the block cut (if the cut fell inside one), missing ...
                assert re.fullmatch(r"(ok,)*(unclosed,)?(missing,)*", "".join(f"{x}," for x in statuses)), statuses
            else:
                assert statuses == [OK] * len(statuses), call["stage1_text"][-300:]
    assert oks >= 1, "no block parsed at all"
    # paper_literal sends all N+1 to Stage 2 whatever Stage 1 found, so Stage 2's format constraint runs too
    literal = ArhnRefiner(engine, replace(options, paper_literal=True), PromptSet.load(), truncate, stage2_max_tokens=64)
    ranked = literal.stage2([o.row for o in staged])
    stage2 = [call for o in ranked for call in o.row["llm"] if call["stage2_text"] is not None]
    assert stage2, "no Stage 2 call was made"
    assert all(call["stage2_status"] in ("ok", "repaired") for call in stage2), [c["stage2_text"] for c in stage2]


def test_one_request_over_max_model_len_fails_alone(engine):
    good = ChatRequest(chat("Say hello."), ("q", 1, 0), 8)
    huge = ChatRequest(chat("word " * 9000), ("q", 1, 1), 8)
    res = engine.generate([good, huge, good])
    assert res[0].error is None and res[2].error is None and res[0].output_tokens > 0
    assert res[1].error and "max_model_len" in res[1].error


def test_truncation_cuts_at_512_minilm_tokens_and_keeps_a_prefix(truncate):
    text = " ".join(f"word{i}" for i in range(2000))
    cut = truncate(text)
    assert text.startswith(cut) and len(cut) < len(text)
    ids = truncate.tokenizer(cut, add_special_tokens=True)["input_ids"]
    assert len(ids) == 512
    assert truncate("short passage") == "short passage"
    import pickle

    assert pickle.loads(pickle.dumps(truncate))(text) == cut


def test_prepare_model_is_idempotent_and_safe_under_concurrency(tmp_path):
    import multiprocessing as mp

    from arhn_ray.bundled import prepare_model

    target = tmp_path / "model"
    ctx = mp.get_context("spawn")
    with ctx.Pool(3) as pool:
        paths = pool.map(prepare_model, [target] * 3)
    assert {str(p) for p in paths} == {str(target)}
    assert json.loads((target / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []
    stamp = (target / "config.json").stat().st_mtime_ns
    assert prepare_model(target) == target and (target / "config.json").stat().st_mtime_ns == stamp


def test_async_engine_refines_the_rows_the_blocking_engine_refines(engine, rows, truncate, verbatim_outs):
    """AsyncLLMEngine through ``arefine``: the same prompts (token ids) as the blocking engine,
    every snippet verbatim, and a prompt over max_model_len failing alone."""
    import asyncio

    from arhn_ray.engines.options import EngineConfig
    from arhn_ray.engines.vllm_engine import AsyncVLLMEngine

    options = VERBATIM
    blocking = verbatim_outs
    engine.close()  # one engine at a time on this machine
    asyn = AsyncVLLMEngine(EngineConfig(**CPU))
    try:
        refiner = ArhnRefiner(asyn, options, PromptSet.load(), truncate)
        good = ChatRequest(chat("Say hello."), ("q", 1, 0), 8)
        huge = ChatRequest(chat("word " * 9000), ("q", 1, 1), 8)

        async def both():
            return await refiner.arefine([dict(r) for r in rows]), await asyn.agenerate([good, huge])

        outs, single = asyncio.run(both())
    finally:
        asyn.close()
    assert single[0].error is None and single[0].output_tokens > 0
    assert single[1].error and "max_model_len" in single[1].error
    assert all(o.rejected is None for o in outs)
    for a, b in zip(outs, blocking):
        assert len(a.row["decisions"]) == 25
        assert [c["stage1_prompt_tokens"] for c in a.row["llm"]] == [c["stage1_prompt_tokens"] for c in b.row["llm"]]
        for d in a.row["decisions"]:
            assert d["snippet"] is None or d["grounding"] == EXACT


QWEN3_TEMPLATE = (
    r"{%- for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{%- endfor %}"
    r"{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    r"{%- if enable_thinking is defined and enable_thinking is false %}{{ '<think>\n\n</think>\n\n' }}{%- endif %}{%- endif %}"
)


def test_tiny_random_qwen3_runs_with_thinking_off(tmp_path, engine):
    """The paper's architecture (Qwen3ForCausalLM) through the same engine code, weights random."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    from arhn_ray.bundled import prepare_model
    from arhn_ray.engines.options import EngineConfig
    from arhn_ray.engines.vllm_engine import VLLMEngine

    tok = AutoTokenizer.from_pretrained(str(prepare_model()))
    tok.chat_template = QWEN3_TEMPLATE
    config = Qwen3Config(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,  # CPU attention kernels take 64 or more
        max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config).to(torch.bfloat16)
    folder = tmp_path / "tiny-qwen3"
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    rendered = tok.apply_chat_template(chat("q"), tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert rendered.endswith("<think>\n\n</think>\n\n")

    engine.close()  # one engine at a time on this machine
    qwen = VLLMEngine(EngineConfig(model=str(folder), enforce_eager=True, gpu_memory_utilization=0.1, max_model_len=2048))
    try:
        assert qwen.llm.llm_engine.model_config.architectures == ["Qwen3ForCausalLM"]
        options = lb.MethodOptions(stage1_constraint="format", stage2_constraint="format")
        row = validate_row(load_jsonl(RLHN_STAGE1)[0])
        row["negative_passages"] = row["negative_passages"][:2]
        out = ArhnRefiner(qwen, options, PromptSet.load(), Truncator(minilm_path(), 64), stage1_max_tokens=64).refine([row])[0]
        assert out.rejected is None and len(out.row["decisions"]) == 2
        assert out.row["llm"][0]["stage1_output_tokens"] > 0
        assert "<think>" not in out.row["llm"][0]["stage1_text"]
    finally:
        qwen.close()


def test_both_engine_kinds_get_the_sizes_and_sampling_the_paper_config_sets():
    """vLLM's defaults differ by front end (AsyncLLMEngine: 128 sequences and 2048 tokens a step
    here; vllm.LLM: 256): the A100 config sets both, and both front ends receive them. Read from
    the engine configuration vLLM itself builds from our arguments, without starting an engine.
    The bundled model stands in for Qwen3-32B (its 9 heads need TP 1, its context 8192)."""
    import vllm
    from vllm.usage.usage_lib import UsageContext

    from arhn_ray.bundled import prepare_model
    from arhn_ray.config import load_config
    from arhn_ray.engines.vllm_engine import _VLLMBase

    cfg = load_config(
        str(ROOT / "conf" / "qwen3-32b-a100x16.yaml"),
        [f"engine.model={prepare_model()}", "engine.tensor_parallel_size=1", "engine.max_model_len=8192"],
    )
    assert cfg.engine.async_engine and (cfg.engine.max_num_seqs, cfg.engine.max_num_batched_tokens) == (160, 8192)
    base = _VLLMBase(cfg.engine)
    args = base.engine_args()
    for front_end, usage in ((vllm.AsyncEngineArgs, UsageContext.ENGINE_CONTEXT), (vllm.EngineArgs, UsageContext.LLM_CLASS)):
        scheduler = front_end(**args).create_engine_config(usage).scheduler_config
        assert (scheduler.max_num_seqs, scheduler.max_num_batched_tokens) == (160, 8192), front_end
    unset = {k: v for k, v in args.items() if k not in ("max_num_seqs", "max_num_batched_tokens")}
    scheduler = vllm.AsyncEngineArgs(**unset).create_engine_config(UsageContext.ENGINE_CONTEXT).scheduler_config
    assert scheduler.max_num_seqs != 160  # what the async engine ran before the config set it
    base.max_model_len = 8192
    sampling = base._sampling(ChatRequest([{"role": "user", "content": "x"}], ("q", 1, 0), 64), 10)
    assert (sampling.temperature, sampling.top_p, sampling.top_k, sampling.min_p, sampling.seed) == (0.7, 0.8, 20, 0.0, None)


@pytest.mark.vllm
def test_requests_carry_no_seed_of_their_own_and_the_engine_keeps_its_seed():
    """A per-request seed takes vLLM off its batched sampler; the engine's seed makes runs repeatable."""
    from arhn_ray.engines.base import ChatRequest
    from arhn_ray.engines.options import EngineConfig
    from arhn_ray.engines.vllm_engine import VLLMEngine

    engine = VLLMEngine.__new__(VLLMEngine)
    engine.options = EngineConfig(seed=7, temperature=0.7, speculative={"method": "ngram", "num_speculative_tokens": 4})
    engine.path, engine.max_model_len = "/models/x", 100
    sampling = engine._sampling(ChatRequest([{"role": "user", "content": "hi"}], ("q", 1, 0), 10, None), 5)
    assert sampling.seed is None and sampling.temperature == 0.7 and sampling.max_tokens == 10
    args = engine.engine_args()
    assert args["seed"] == 7 and args["speculative_config"] == {"method": "ngram", "num_speculative_tokens": 4}
