"""The realistic-model recipe end to end: 2 GRPO steps of ``qwen_tiny_gsm8k_format`` through the command
line, with Qwen2.5's tokenizer and chat template, a system prompt, GSM8K-format rows and math_verify."""

import gc
import json
import math
import re

import pytest

TINY = ["trainer.total_steps=2", "trainer.sft.steps=2", "trainer.sft.batch_size=4", "data.prompts_per_step=4",
        "rollout.n=2", "rollout.max_new_tokens=12", "data.generator_kwargs.num_train=32",
        "data.generator_kwargs.num_val=4", "trainer.progress=false", "trainer.loggers=[jsonl]"]


@pytest.mark.slow
def test_two_grpo_steps_with_chat_template_and_gsm8k_rows(ray_local, qwen_model_dir, tmp_path):
    from rlreason.cli import main
    from rlreason.config import load_config

    run = tmp_path / "qwen"
    args = ["recipe=qwen_tiny_gsm8k_format", *TINY, f"model.path={qwen_model_dir}", f"trainer.output_dir={run}"]
    assert main(["train", *args]) == 0
    gc.collect()
    system = load_config(args).data.system_prompt
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["loss"]) and r["reward/errors"] == 0 for r in rows)
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {1, 2}
    for s in samples:
        # the prompt the model saw: ChatML with our system turn, then the GSM8K question as the user turn
        assert s["prompt"].startswith(f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n")
        assert s["prompt"].endswith("<|im_end|>\n<|im_start|>assistant\n")
        assert re.search(r"\n#### \d+$", s["ground_truth"])
        assert s["reward"] in (0.0, 0.1, 1.0, 1.1)  # scored: the gold answer parsed (None would mean it did not)
        assert 1 <= s["length"] <= 12
