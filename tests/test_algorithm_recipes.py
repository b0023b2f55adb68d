"""Every registered advantage estimator and policy loss runs 2 RL steps from its recipe, through
the command line's entry point (``rlreason.cli.main`` in this process, so the runs share one Ray
session instead of paying its start-up each), on the tiny test model with a small dataset."""

import gc
import json
import math

import pytest

from rlreason.algorithms import ADVANTAGES, POLICY_LOSSES

RUNS = {  # registered name -> (recipe, overrides beyond the tiny settings)
    "grpo": ("quickstart", []),  # with ppo_clip; sft runs in every run's warm-up
    "dr_grpo": ("dr_grpo_quickstart", []),
    "rloo": ("rloo_quickstart", []),
    "reinforce_pp": ("reinforce_pp_quickstart", []),
    "reinforce_pp_baseline": ("reinforce_pp_baseline_quickstart", []),
    "grpo_passk": ("grpo_passk_quickstart", []),
    # the tiny model is never right after 2 SFT steps, so DAPO's filter would drop every group; its
    # dynamic sampling runs in tests/sampling (here: the dapo loss on every group)
    "dapo": ("dapo_quickstart", ["sampling.dynamic.mode=off"]),
    "gspo": ("gspo_quickstart", []),
    "gspo_token": ("gspo_quickstart", ["algorithm.loss=gspo_token"]),
    "cispo": ("cispo_quickstart", []),
    "gppo": ("gppo_quickstart", []),
    "ce_gppo": ("gppo_quickstart", ["algorithm.loss=ce_gppo"]),
    "drpo": ("drpo_quickstart", []),
}
COVERED_ELSEWHERE = {"ppo_clip": "grpo", "sft": "every run (warm-up)"}

TINY = ["trainer.total_steps=2", "trainer.sft.steps=2", "trainer.sft.batch_size=8", "data.prompts_per_step=4",
        "rollout.n=4", "rollout.max_new_tokens=16", "data.generator_kwargs.num_train=64",
        "data.generator_kwargs.num_val=8", "trainer.progress=false", "trainer.loggers=[jsonl]"]


def test_every_registered_name_has_a_run():
    names = set(ADVANTAGES.names()) | set(POLICY_LOSSES.names())
    assert names <= set(RUNS) | set(COVERED_ELSEWHERE), names - set(RUNS) - set(COVERED_ELSEWHERE)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RUNS))
def test_two_steps_from_the_recipe(ray_local, tiny_model_dir, tmp_path, name):
    from rlreason.cli import main
    from rlreason.config import load_config

    recipe, extra = RUNS[name]
    run = tmp_path / name
    args = [f"recipe={recipe}", *TINY, f"model.path={tiny_model_dir}", f"trainer.output_dir={run}", *extra]
    assert main(["train", *args]) == 0
    gc.collect()  # drop the finished run's actor handles, so Ray stops its actors before the next run
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]), r
    cfg = load_config(args)
    assert name in (cfg.algorithm.advantage, cfg.algorithm.loss)
    assert f"advantage: {cfg.algorithm.advantage}" in (run / "config.yaml").read_text()
