"""rollout.spec: every recipe takes rollout.spec.enable=true; bad settings fail before a model loads, naming the key."""

import pytest

from rlreason.config import ConfigError, list_recipes, load_config
from rlreason.config.validate import validate
from rlreason.rollout.spec.build import build_strategy
from rlreason.rollout.spec.engine import FixedK
from rlreason.rollout.spec.selector import AdaptiveK


@pytest.mark.parametrize("recipe", sorted(list_recipes()))
def test_every_recipe_validates_with_speculative_decoding_on(recipe, monkeypatch):
    import rlreason.config.validate as v

    monkeypatch.setattr(v, "vllm_installed", lambda: True)  # the GPU recipes' engine, as where vLLM is installed
    cfg = load_config([f"recipe={recipe}", "rollout.spec.enable=true"])
    validate(cfg)
    assert cfg.rollout.spec.enable and cfg.rollout.spec.drafter == "eagle"


def test_k_is_a_number_or_auto():
    cfg = load_config(["recipe=quickstart", "rollout.spec.enable=true", "rollout.spec.k=3"])
    validate(cfg)
    assert isinstance(build_strategy(cfg.rollout.spec), FixedK) and build_strategy(cfg.rollout.spec).k == 3
    cfg = load_config(["recipe=quickstart", "rollout.spec.enable=true", "rollout.spec.arms=[0,2,4]"])
    strategy = build_strategy(cfg.rollout.spec)
    assert isinstance(strategy, AdaptiveK) and strategy.arms == [0, 2, 4]


@pytest.mark.parametrize("override,words", [
    ("rollout.spec.drafter=medusa", ["rollout.spec.drafter", "eagle"]),
    ("rollout.spec.k=many", ["rollout.spec.k", "auto"]),
    ("rollout.spec.k=40", ["rollout.spec.k", "0-16"]),
    ("rollout.spec.arms=[0,2,99]", ["rollout.spec.arms"]),
    ("rollout.spec.epsilon=1.5", ["rollout.spec.epsilon"]),
    ("rollout.spec.decay=0", ["rollout.spec.decay"]),
    ("rollout.spec.draft_vocab=-1", ["rollout.spec.draft_vocab"]),
    ("rollout.spec.train.mode=sometimes", ["rollout.spec.train.mode", "spot"]),
    ("rollout.spec.train.buffer_steps=0", ["buffer_steps"]),
    ("rollout.spec.train.lr=0", ["lr > 0"]),
    ("rollout.spec.train.ce_weight=0", ["not both 0"]),
])
def test_bad_settings_are_refused_with_the_key(override, words):
    extra = ["rollout.spec.train.feature_weight=0"] if "ce_weight" in override else []
    cfg = load_config(["recipe=quickstart", "rollout.spec.enable=true", override, *extra])
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_lm_drafter_needs_the_cross_entropy():
    cfg = load_config(["recipe=quickstart", "rollout.spec.drafter=lm", "rollout.spec.train.ce_weight=0"])
    with pytest.raises(ConfigError, match="ce_weight"):
        validate(cfg)
