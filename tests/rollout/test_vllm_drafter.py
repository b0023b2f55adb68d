"""The online drafter on the vLLM engine, on CPU.

What vLLM loads is checked against what we train: the EAGLE-1 checkpoint, read back into a
Hugging Face Llama arranged as vLLM's EAGLE-1 forward (fc over [embedding; feature], no input norm
on layer 0, no final norm, the target's head), and the lm drafter's checkpoint read back as a plain
``LlamaForCausalLM``, give the drafter's logits. Then a vLLM-mode rollout worker, in process, with a
stand-in for vLLM's LLM only: worker 0 trains against its policy copy, which follows every sync, and
every worker publishes into vLLM, restoring the drafter after a level-2 sleep.
"""

from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel

from rlreason.config import load_config
from rlreason.config.spec_schema import SpecConfig
from rlreason.rollout import vllm_convert as vc
from rlreason.rollout import vllm_engine as ve
from rlreason.rollout.spec.build import build_drafter, new_drafter
from rlreason.rollout.spec.layers import KVCache, run_blocks
from rlreason.types import GenerationRequest, SamplingParams, SequenceBatch
from rlreason.workers.rollout import RolloutWorker

from vllm_fakes import FakeLLM, FakeSamplingParams

V, T = 48, 7


def target_model():
    """A target whose config differs from the drafter where it could leak in: GQA, eps, RoPE theta."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=500.0, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


def randomise(drafter):
    """Move every weight off its initial value (norm weights start at 1, where a dropped norm would hide)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in drafter.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return drafter


def drafter_logits(d, tokens, feats=None):
    """Our drafter over a whole sequence (fresh cache), as the trainer runs it."""
    pos = torch.arange(tokens.shape[1])[None]
    valid = torch.ones_like(tokens, dtype=torch.bool)
    return d._logits(run_blocks(d.layers, d._inputs(tokens, feats), pos, valid, KVCache(len(d.layers))))


@torch.no_grad()
def test_eagle_checkpoint_computes_the_drafters_function_in_vllms_eagle1_layout(tmp_path):
    target = target_model()
    d = randomise(build_drafter(SpecConfig(drafter="eagle"), target))
    out = vc.write_drafter_checkpoint(d, target.config, str(tmp_path / "eagle"))
    # vLLM's EAGLE-1 Llama: the checkpoint's decoder layers, layer 0 without its input norm, no final norm
    ref = LlamaModel(LlamaConfig.from_pretrained(out)).eval()
    tensors = load_file(f"{out}/model.safetensors")
    missing, unexpected = ref.load_state_dict({k: v for k, v in tensors.items() if k != "fc.weight"}, strict=False)
    assert unexpected == [] and set(missing) == {"embed_tokens.weight", "norm.weight", "layers.0.input_layernorm.weight"}
    ref.layers[0].input_layernorm, ref.norm = torch.nn.Identity(), torch.nn.Identity()
    tokens, feats = torch.randint(0, V, (2, T)), torch.randn(2, T, 32)
    x = torch.nn.functional.linear(torch.cat([target.get_input_embeddings()(tokens), feats], -1), tensors["fc.weight"])
    want = target.lm_head(ref(inputs_embeds=x, attention_mask=torch.ones(2, T, dtype=torch.long)).last_hidden_state)
    torch.testing.assert_close(drafter_logits(d, tokens, feats), want, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_lm_drafter_checkpoint_is_a_plain_llama_with_the_same_logits(tmp_path):
    target = target_model()
    d = randomise(build_drafter(SpecConfig(drafter="lm", lm_hidden_size=16), target))
    out = vc.write_drafter_checkpoint(d, target.config, str(tmp_path / "lm"))
    ref = LlamaForCausalLM.from_pretrained(out).eval()
    assert ref.config.num_key_value_heads == ref.config.num_attention_heads == d.cfg.num_heads
    tokens = torch.randint(0, V, (2, T))
    torch.testing.assert_close(drafter_logits(d, tokens), ref(input_ids=tokens).logits, atol=1e-5, rtol=1e-4)
    reduced = build_drafter(SpecConfig(drafter="lm", lm_hidden_size=16), target, vocab_map=torch.arange(10))
    with pytest.raises(ValueError, match="reduced vocabulary.*draft_vocab=0"):
        vc.write_drafter_checkpoint(reduced, target.config, str(tmp_path / "reduced"))


# ---- a vLLM-mode rollout worker, vLLM's LLM stood in ----------------------------------------------

SP = SamplingParams(temperature=1.0, max_new_tokens=12)


@pytest.fixture
def fake_vllm(monkeypatch):
    """VLLMEngine.build returns our engine around a FakeLLM; IPC handles (CUDA) become plain metadata."""
    def build(settings, tokenizer=None):
        return ve.VLLMEngine(FakeLLM(), tokenizer, replace(settings, stage_device="cpu"), FakeSamplingParams)

    monkeypatch.setattr(ve.VLLMEngine, "build", staticmethod(build))
    monkeypatch.setattr(ve, "ipc_update_info", vc.nccl_update_info)


def config(model_dir, engine):
    cfg = load_config(["recipe=quickstart", f"model.path={model_dir}", "rollout.spec.enable=true", "rollout.spec.k=2",
                       "rollout.spec.train.steps=3", "rollout.spec.train.batch_size=8", "rollout.spec.draft_vocab=0"])
    cfg.rollout.engine = engine  # set after validation, which asks for an installed vLLM
    return cfg


def rollouts(model_dir):
    """Real rollouts of the policy, from a native worker (the stand-in LLM's tokens mean nothing)."""
    w = RolloutWorker(config(model_dir, "native"), model_dir, threads=1)
    tok = w.engine.tokenizer
    ids = [tok.encode(f"Q: {i}+{i + 2} =\nA:", add_special_tokens=False) for i in range(4)]
    return SequenceBatch.from_rollout(w.generate(GenerationRequest(ids, [2] * 4, 0, SP, 0)))


def draft_pushes(llm) -> list[list[str]]:
    """Names pushed in each drafter session (start_draft_weight_update ... finish_weight_update)."""
    sessions, current = [], None
    for name, args, _ in llm.calls:
        if name == "start_draft_weight_update":
            current = []
        elif name == "update_weights" and current is not None:
            current += args[0]["update_info"]["names"]
        elif name == "finish_weight_update" and current is not None:
            sessions.append(current)
            current = None
    return sessions


def test_vllm_workers_start_from_the_seeded_drafter_and_worker_0_trains_against_its_policy_copy(
        tiny_model_dir, fake_vllm):
    cfg = config(tiny_model_dir, "vllm")
    w0, w1 = (RolloutWorker(cfg, tiny_model_dir, threads=1, index=i) for i in (0, 1))
    assert w0.own_copy and w1.drafter_target is None  # only worker 0 holds a policy copy
    for w in (w0, w1):
        w.init_drafter(None)
        assert w.engine.settings.method == "eagle"
        initial = load_file(f"{w.engine.settings.draft_model}/model.safetensors")
        seeded = new_drafter(cfg.rollout.spec, w0.drafter_target.config, seed=cfg.trainer.seed).state_dict()
        assert initial.keys() == seeded.keys() and all(torch.equal(initial[k], seeded[k]) for k in seeded)
    with pytest.raises(ValueError, match="draft_vocab must be 0"):
        w1.init_drafter(torch.arange(8))

    update = w0.train_drafter(rollouts(tiny_model_dir), version=1)
    assert update.metrics["drafter/accept_after"] > update.metrics["drafter/accept_before"]
    with pytest.raises(RuntimeError, match="worker 0"):
        w1.train_drafter(rollouts(tiny_model_dir), version=1)

    assert w1.load_drafter(update.weights) == 1  # published into vLLM under EAGLE-1 names
    assert draft_pushes(w1.engine.llm) == [list(update.weights.state)]
    assert all(torch.equal(w1.engine.drafter_tensors[k], v) for k, v in update.weights.state.items())

    # the policy sync reaches vLLM and worker 0's copy, which the trainer reads
    policy = {k: v + 0.01 for k, v in w0.drafter_target.state_dict().items()}
    w0.load_weights(policy, version=1)
    assert any(c[0] == "start_weight_update" for c in w0.engine.llm.calls)
    assert all(torch.equal(v, policy[k]) for k, v in w0.drafter_target.state_dict().items())
    assert w0._trainer().target is w0.drafter_target

    # a trainer built later (worker 0 restarted) starts from the latest published drafter
    w0.drafter_trainer = None
    w0.load_drafter(update.weights)
    rebuilt = w0._trainer().drafter.state_dict()
    assert all(torch.equal(rebuilt[k].cpu(), v) for k, v in update.weights.state.items())


def test_a_level_2_sleep_restores_the_drafter_with_the_next_policy_sync(tiny_model_dir, fake_vllm):
    cfg = config(tiny_model_dir, "vllm")
    w = RolloutWorker(cfg, tiny_model_dir, threads=1, index=1)
    w.init_drafter(None)
    policy = {k: torch.zeros(1) for k in ("a", "b")}
    w.load_weights(policy, version=1)
    assert draft_pushes(w.engine.llm) == []  # awake: the drafter is still in place
    w.engine.sleep(level=2)  # weights discarded, the drafter's with them
    w.engine.wake_up()
    w.load_weights(policy, version=2)
    pushed = draft_pushes(w.engine.llm)
    assert len(pushed) == 1 and set(pushed[0]) == set(w.engine.drafter_tensors)  # the initial drafter, again
    w.load_weights(policy, version=3)
    assert len(draft_pushes(w.engine.llm)) == 1  # once only


@pytest.mark.parametrize("theta", [500.0, 1e6])
def test_the_drafter_takes_the_targets_rope_base(theta):
    from transformers import Qwen2Config

    from rlreason.rollout.spec.build import drafter_config

    for config in (LlamaConfig(hidden_size=64, num_attention_heads=4, rope_theta=theta),
                   Qwen2Config(hidden_size=64, num_attention_heads=4, rope_theta=theta)):
        assert drafter_config(config, SpecConfig(enable=True)).rope_theta == theta
