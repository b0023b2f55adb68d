"""Reward settings in recipes: routing, per-function options and on_error validate before any model loads."""

import pytest

from rlreason.config import ConfigError, load_config
from rlreason.config.validate import validate


def load(tmp_path, functions: str, *overrides):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"# test\nmodel: {{builder: rlreason.tasks.arithmetic:build_model}}\n"
                      f"data: {{generator: rlreason.tasks.arithmetic:write_dataset}}\nreward:\n  functions:\n{functions}")
    cfg = load_config([f"recipe={recipe}", *overrides])
    validate(cfg)
    return cfg


def test_reward_options_reach_the_config(tmp_path):
    cfg = load(tmp_path, "    - {name: math_verify, when: {data_source: [gsm8k, math]}, timeout_s: 3, log_as: acc}\n"
                         "    - {name: 'http://127.0.0.1:8000/judge', weight: 0.5}\n"
                         "    - {name: length_kimi, kwargs: {start_step: 10}}\n",
               "reward.on_error=drop_group", "reward.extra_processes=4")
    first = cfg.reward.functions[0]
    assert first.when == {"data_source": ["gsm8k", "math"]} and first.timeout_s == 3 and first.log_as == "acc"
    assert cfg.reward.on_error == "drop_group" and cfg.reward.extra_processes == 4


@pytest.mark.parametrize("functions,overrides,message", [
    ("    - {name: math_verfy}\n", [], "Did you mean 'math_verify'"),
    ("    - {name: math_verify}\n", ["reward.on_error=ignore"], "drop_group"),
    ("    - {name: math_verify, when: {data_source: {a: 1}}}\n", [], "when.data_source"),
    ("    - {name: math_verify, timeout_s: 0}\n", [], "timeout_s must be > 0"),
    ("    - {name: 'no_such_module_xyz:fn'}\n", [], "cannot import module"),
])
def test_reward_errors_name_the_problem(tmp_path, functions, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, functions, *overrides)
