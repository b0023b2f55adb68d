"""Config composition and validation: errors name the key and say what would be valid."""

import pytest

from rlreason.config import ConfigError, list_recipes, load_config
from rlreason.config.validate import validate


def load(*args):
    cfg = load_config(["recipe=quickstart", *args])
    validate(cfg)
    return cfg


def error(*args) -> str:
    with pytest.raises(ConfigError) as info:
        load(*args)
    return str(info.value)


def test_overrides_reach_the_dataclasses():
    cfg = load("algorithm.kl_coef=0.01", "rollout.temperature=0.8", "trainer.output_dir=/tmp/run",
               "algorithm.loss_kwargs.clip_high=0.28", "learner.world_size=2")
    assert cfg.algorithm.kl_coef == 0.01 and cfg.rollout.temperature == 0.8
    assert cfg.trainer.output_dir == "/tmp/run" and cfg.learner.world_size == 2
    assert cfg.algorithm.loss_kwargs == {"clip_high": 0.28}
    assert cfg.recipe == "quickstart"


def test_recipe_overrides_only_what_it_names():
    cfg = load()
    assert cfg.rollout.top_p == 1.0  # untouched dataclass default
    assert cfg.model.builder  # set by the recipe


def test_every_builtin_recipe_composes_and_validates(monkeypatch):
    import rlreason.config.validate as v

    names = list(list_recipes())
    assert len(names) >= 30 and "quickstart" in names  # the recipes folder was found and read
    # The GPU recipes roll out with vLLM: validated as on a machine that has it (without it they are
    # refused by name, test_vllm_recipe_is_refused_here_without_vllm).
    monkeypatch.setattr(v, "vllm_installed", lambda: True)
    engines = {}
    for name in names:
        cfg = load_config([f"recipe={name}"])
        validate(cfg)
        assert cfg.recipe == name and (cfg.model.path or cfg.model.builder)
        engines[name] = cfg.rollout.engine
    gpu = {n for n in names if load_config([f"recipe={n}"]).cluster.gpus_per_node > 0}
    assert gpu and all(engines[n] == "vllm" for n in gpu)  # a GPU recipe means vLLM rollouts
    assert all(engines[n] == "native" for n in set(names) - gpu)


def test_vllm_recipe_is_refused_here_without_vllm(monkeypatch):
    import rlreason.config.validate as v

    monkeypatch.setattr(v, "vllm_installed", lambda: False)
    with pytest.raises(ConfigError, match="rollout.engine=vllm needs vLLM"):
        validate(load_config(["recipe=dr_grpo_qwen2.5_math_7b"]))


def test_vllm_with_a_model_reward_is_refused_by_name(monkeypatch):
    import rlreason.config.validate as v

    monkeypatch.setattr(v, "vllm_installed", lambda: True)
    cfg = load_config(["recipe=dr_grpo_qwen2.5_math_7b", "reward.functions=[{name: math_verify}, {name: likelihood}]"])
    with pytest.raises(ConfigError, match=r"reward.functions\[1\] \(likelihood\).*rollout.engine=native"):
        validate(cfg)


def test_unknown_key_names_it_and_suggests():
    msg = error("rollout.temprature=0.5")
    assert "rollout.temprature" in msg and "rollout.temperature" in msg


def test_key_in_wrong_section_points_to_the_right_one():
    assert "learner.lr" in error("rollout.lr=0.1")


def test_unknown_section():
    msg = error("rolout.n=4")
    assert "rolout" in msg and "rollout" in msg


def test_unknown_recipe_lists_recipes():
    with pytest.raises(ConfigError) as info:
        load_config(["recipe=quickstrat"])
    assert "quickstart" in str(info.value) and "Recipes:" in str(info.value)


def test_missing_recipe():
    with pytest.raises(ConfigError, match="recipe=NAME"):
        load_config(["rollout.n=2"])


def test_wrong_type_names_key():
    assert "rollout.n" in error("rollout.n=abc")


def test_group_size_one_with_group_baseline_explains_itself():
    msg = error("rollout.n=1")
    assert "rollout.n" in msg and "grpo" in msg


def test_unknown_algorithm_and_kwargs():
    assert "Registered" in error("algorithm.advantage=grpoo") and "grpo" in error("algorithm.advantage=grpoo")
    msg = error("algorithm.loss_kwargs.clip_hi=0.3")
    assert "clip_hi" in msg and "clip_high" in msg


def test_fp16_is_refused_with_a_reason():
    assert "float16" in error("model.dtype=float16")


def test_bad_ranges():
    assert "top_p" in error("rollout.top_p=1.5")
    assert "zero_stage" in error("learner.zero_stage=4")
    assert "agg_mode" in error("algorithm.agg_mode=token_mean")
    assert "loggers" in error("trainer.loggers=[console,mlflow]")


def test_unknown_reward_function():
    msg = error("reward.functions=[{name: math_verfy}]")
    assert "math_verfy" in msg and "math_verify" in msg


def test_recipe_from_a_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("model:\n  path: /some/model\ndata:\n  train: /some/data.jsonl\nrollout:\n  n: 4\n")
    cfg = load_config([f"recipe={path}"])
    assert cfg.rollout.n == 4 and cfg.model.path == "/some/model"


def test_unknown_key_in_a_recipe_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("rollout:\n  temperatur: 0.5\n")
    with pytest.raises(ConfigError) as info:
        load_config([f"recipe={path}"])
    assert "bad.yaml" in str(info.value) and "rollout.temperature" in str(info.value)


def test_sweeps_are_refused():
    assert "sweep" in error("rollout.n=2,4")


def test_a_users_recipe_file_extends_a_builtin_one(tmp_path):
    (tmp_path / "mine.yaml").write_text(
        "# mine: the quickstart, a reward of my own added\n"
        "defaults: [quickstart, _self_]\n"
        "reward:\n  functions:\n    - {name: math_verify}\n"
        "    - {name: examples/rewards/my_reward.py:concise, weight: 0.5}\n"
        "trainer:\n  total_steps: 3\n")
    cfg = load_config([f"recipe={tmp_path / 'mine.yaml'}", "rollout.n=4"])
    validate(cfg)
    assert cfg.model.builder == load().model.builder  # from the quickstart
    assert cfg.trainer.total_steps == 3 and cfg.rollout.n == 4  # the file, then the command line
    assert [f.name.rsplit(":", 1)[-1] for f in cfg.reward.functions] == ["math_verify", "concise"]


def test_a_recipe_file_with_only_a_reward_block_says_how_to_extend_one(tmp_path):
    (tmp_path / "bare.yaml").write_text("reward:\n  functions:\n    - {name: math_verify}\n")
    with pytest.raises(ConfigError, match=r"defaults: \[quickstart, _self_\]"):
        validate(load_config([f"recipe={tmp_path / 'bare.yaml'}"]))


def test_recipe_summaries_are_whole_first_sentences():
    from rlreason.config.compose import recipe_summary

    text = ("# Dr. GRPO on the task: advantages without the std\n# (Liu et al. 2025). Second sentence here.\n"
            "# Launch: rlreason train recipe=x\n")
    assert recipe_summary(text) == "Dr. GRPO on the task: advantages without the std (Liu et al. 2025)."
    for name, summary in list_recipes().items():
        assert summary.endswith((".", ")")), (name, summary)


def test_a_reward_added_on_the_command_line():
    cfg = load("reward.functions=[{name: math_verify}, {name: 'examples/rewards/my_reward.py:concise', weight: 0.5}]")
    assert [(f.name.rsplit(":", 1)[-1], f.weight) for f in cfg.reward.functions] == [("math_verify", 1.0),
                                                                                     ("concise", 0.5)]


@pytest.mark.parametrize("override,key", [
    ("learner.lr=-1e-4", "learner.lr"), ("learner.lr=nan", "learner.lr"), ("learner.lr=0", "learner.lr"),
    ("learner.weight_decay=-0.1", "learner.weight_decay"), ("learner.betas=[0.9,1.0]", "learner.betas"),
    ("learner.betas=[-0.1,0.999]", "learner.betas"), ("learner.grad_clip=-1", "learner.grad_clip"),
    ("trainer.sft.lr=-0.001", "trainer.sft.lr"), ("learner.warmup_steps=-3", "learner.warmup_steps"),
])
def test_optimizer_settings_are_checked_before_anything_starts(override, key):
    assert key in error(override)


def test_an_unknown_weight_sync_is_refused_naming_the_choices():
    msg = error("cluster.weight_sync=nccl")
    assert "cluster.weight_sync" in msg and "auto, broadcast, object_store" in msg and "'nccl'" in msg
