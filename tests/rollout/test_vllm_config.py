"""rollout.engine=vllm in the config: validation names what is missing, and rollout.spec translates into
vLLM's speculative_config (VLLMSettings)."""

import os

import pytest

from rlreason.rollout import vllm_engine as ve


def test_settings_from_config(tmp_path):
    from transformers import LlamaConfig

    from rlreason.config.schema import RunConfig
    from rlreason.rollout.spec.drafters import EagleDrafter
    from rlreason.rollout.spec.layers import DrafterConfig

    cfg = RunConfig()
    assert ve.settings_from_config(cfg, "/m", str(tmp_path)).method is None  # SD off by default
    cfg.rollout.spec.enable, cfg.rollout.spec.drafter = True, "ngram"
    cfg.rollout.spec.k = "3"
    s = ve.settings_from_config(cfg, "/m", str(tmp_path))
    assert s.llm_kwargs()["speculative_config"]["method"] == "ngram" and s.k == 3 and s.k_table is None
    cfg.rollout.spec.drafter, cfg.rollout.spec.k = "eagle", "auto"
    drafter = EagleDrafter(DrafterConfig(hidden_size=16, num_heads=2, intermediate_size=32, vocab_size=40))
    target = LlamaConfig(hidden_size=16, vocab_size=40, num_attention_heads=2, num_key_value_heads=2)
    with pytest.raises(ValueError, match="needs the initial drafter"):
        ve.settings_from_config(cfg, "/m", str(tmp_path))
    s = ve.settings_from_config(cfg, "/m", str(tmp_path), target, drafter)
    spec = s.llm_kwargs()["speculative_config"]
    assert spec["method"] == "eagle" and spec["num_speculative_tokens"] == max(cfg.rollout.spec.arms)
    assert spec["model"] == os.path.join(str(tmp_path), "vllm_drafter")
    assert spec["num_speculative_tokens_per_batch_size"][-1][2] == 0  # prior: SD off at large batch
    assert s.plan == ve.TablePlan(tuple(cfg.rollout.spec.arms), 256, 0.05, 10)  # re-planned from measurements


def test_config_names_the_missing_vllm(monkeypatch):
    from rlreason.config import validate as v
    from rlreason.config.compose import ConfigError
    from rlreason.config.schema import RunConfig

    cfg = RunConfig()
    cfg.rollout.engine = "vllm"
    cfg.cluster.placement, cfg.cluster.gpus_per_node = "colocate", 8
    monkeypatch.setattr(v, "vllm_installed", lambda: False)
    with pytest.raises(ConfigError, match=r"rollout.engine=vllm needs vLLM.*\[gpu\]"):
        v._check_rollout(cfg)
    monkeypatch.setattr(v, "vllm_installed", lambda: True)
    v._check_rollout(cfg)
    cfg.rollout.engine = "sglang"
    with pytest.raises(ConfigError, match="native, vllm"):
        v._check_rollout(cfg)
    cfg.rollout.engine, cfg.rollout.spec.enable = "vllm", True
    v._check_rollout(cfg)  # the online EAGLE drafter, trained on worker 0 and published into vLLM
    cfg.rollout.spec.draft_vocab = 64
    with pytest.raises(ConfigError, match="drafter=eagle and rollout.spec.draft_vocab=64.*full vocabulary.*=0"):
        v._check_rollout(cfg)
    cfg.rollout.spec.drafter = "ngram"  # vLLM's own prompt lookup: no vocabulary to reduce
    v._check_rollout(cfg)
    cfg.rollout.spec.k = "0"
    with pytest.raises(ConfigError, match="k=0.*rollout.spec.enable=false"):
        v._check_rollout(cfg)


@pytest.mark.parametrize("placement,gpus", [("none", 0), ("none", 8), ("colocate", 0), ("split", 0)])
def test_vllm_without_gpu_placement_is_refused_naming_both_keys(placement, gpus):
    from rlreason.config import ConfigError, load_config
    from rlreason.config.validate import validate

    cfg = load_config(["recipe=quickstart", "rollout.engine=vllm", f"cluster.placement={placement}",
                       f"cluster.gpus_per_node={gpus}"])
    with pytest.raises(ConfigError) as info:  # on this machine, where vLLM is not installed, this message first
        validate(cfg)
    msg = str(info.value)
    assert f"cluster.placement={placement}" in msg and f"cluster.gpus_per_node={gpus}" in msg and "GPU" in msg


def test_the_cli_refuses_the_quickstart_on_vllm_by_name():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "rlreason", "train", "recipe=quickstart", "rollout.engine=vllm"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "cluster.placement=none and cluster.gpus_per_node=0" in out.stderr


def test_the_memory_knobs_reach_vllm_and_bad_values_are_named(tmp_path):
    """rollout.gpu_memory_utilization and rollout.max_model_len (default: the longest sequence the run can make,
    not the model's whole context, which would reserve KV memory for nothing); sleep mode only when colocated."""
    from rlreason.config import load_config
    from rlreason.config.compose import ConfigError
    from rlreason.config.validate import _check_rollout

    cfg = load_config(["recipe=quickstart", "rollout.gpu_memory_utilization=0.35", "data.max_prompt_length=100",
                       "rollout.max_new_tokens=48"])
    kw = ve.settings_from_config(cfg, "/m", str(tmp_path)).llm_kwargs()
    assert kw["gpu_memory_utilization"] == 0.35 and kw["max_model_len"] == 148 and not kw["enable_sleep_mode"]
    cfg.cluster.placement, cfg.rollout.max_model_len = "colocate", 4096
    kw = ve.settings_from_config(cfg, "/m", str(tmp_path)).llm_kwargs()
    assert kw["max_model_len"] == 4096 and kw["enable_sleep_mode"]
    for key, value, match in (("gpu_memory_utilization", 1.5, "must be in \\(0, 1\\]"),
                              ("max_model_len", 120, "shorter than the longest sequence.*= 148")):
        cfg = load_config(["recipe=quickstart", "data.max_prompt_length=100", "rollout.max_new_tokens=48",
                           f"rollout.{key}={value}"])
        with pytest.raises(ConfigError, match=match):
            _check_rollout(cfg)
