"""Shared fixtures: tiny real models built from config in code (nothing downloads)."""

import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A randomly initialised one-layer Llama with the quickstart's character tokenizer."""
    from rlreason.tasks.arithmetic import build_model

    return build_model(str(tmp_path_factory.mktemp("tiny")), seed=0, hidden_size=32, num_layers=1,
                       num_heads=2, intermediate_size=64)


@pytest.fixture(scope="session")
def qwen_model_dir(tmp_path_factory):
    """The realistic model: Qwen2.5's tokenizer (151k BPE, chat template) on a tiny random Qwen2."""
    from rlreason.tasks.qwen_tiny import build_model

    return build_model(str(tmp_path_factory.mktemp("qwen")), seed=0, hidden_size=32, num_layers=1,
                       num_heads=4, num_kv_heads=2, intermediate_size=64)


@pytest.fixture(scope="session")
def eos_model_dir(tmp_path_factory, tiny_model_dir):
    """The tiny model trained for a moment to answer every prompt with ' ok' and EOS."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    target = tok.encode(" ok", add_special_tokens=False) + [tok.eos_token_id]
    prompts = [tok.encode(f"Q: {i}+{j} =\nA:", add_special_tokens=False) for i in range(5) for j in range(5)]
    for _ in range(60):
        ids = torch.tensor([p + target for p in prompts])
        labels = ids.clone()
        labels[:, :len(prompts[0])] = -100
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = str(tmp_path_factory.mktemp("eos"))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray cluster for one test module (2 CPUs, no dashboard), shut down after it."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
