"""VLLMEngine's own logic on CPU, with small stand-ins for vLLM's objects only (LLM, SamplingParams,
RequestOutput, metrics): config translation, outputs -> RolloutBatch, metric reading, weight
buckets and the sync protocol, the EAGLE checkpoint layout, the K table, sleep/wake. The last test
runs real vLLM on a GPU and is skipped elsewhere."""

import importlib.util
import json
import os

import pytest
import torch

from rlreason.rollout import vllm_convert as vc
from rlreason.rollout import vllm_engine as ve
from rlreason.rollout.spec.stats import spec_metrics
from rlreason.types import GenerationRequest, SamplingParams

from vllm_fakes import EOS, PAD, engine


def request(sizes=(2, 0, 3), seed=5):
    sp = SamplingParams(temperature=0.7, top_p=0.9, top_k=0, max_new_tokens=6, stop=["\n"])
    return GenerationRequest([[3, 4], [5], [6, 7, 8]], list(sizes), 4, sp, seed)


# ---- config ----------------------------------------------------------------------------------------

def test_speculative_config_per_method():
    assert vc.speculative_config(None, 4) is None and vc.speculative_config("eagle", 0, "d") is None
    assert vc.speculative_config("eagle", 4, "/ck", draft_tp=2) == {
        "method": "eagle", "num_speculative_tokens": 4, "model": "/ck", "draft_tensor_parallel_size": 2}
    assert vc.speculative_config("eagle3", 3, "/e3")["method"] == "eagle3"
    assert vc.speculative_config("draft_model", 5, "/small")["model"] == "/small"
    assert vc.speculative_config("ngram", 3, ngram=(2, 5)) == {
        "method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 2, "prompt_lookup_max": 5}
    with pytest.raises(ValueError, match="medusa"):
        vc.speculative_config("medusa", 3, "/x")
    with pytest.raises(ValueError, match="draft model"):
        vc.speculative_config("eagle", 3)
    cfg = vc.speculative_config("eagle", 6, "/ck", k_table={1: 6, 2: 4, 5: 2, 33: 0})
    assert cfg["num_speculative_tokens_per_batch_size"] == [[1, 1, 6], [2, 4, 4], [5, 32, 2], [33, 1024, 0]]


def test_k_schedule_merges_clamps_and_needs_batch_one():
    assert vc.k_schedule({1: 9, 2: 8, 4: 2, 8: 2, 16: 0}, kmax=8, max_batch=64) == [[1, 3, 8], [4, 15, 2], [16, 64, 0]]
    assert vc.k_schedule({1: 3}, kmax=4, max_batch=256) == [[1, 256, 3]]
    with pytest.raises(ValueError, match="batch size 1"):
        vc.k_schedule({2: 3}, kmax=4)


def test_k_table_is_the_goodput_argmax_and_turns_sd_off_when_verify_is_expensive():
    accept = [0.8, 0.6, 0.45, 0.3]  # vLLM's unconditional per-position rates (E(4) = 3.15)
    cost = lambda b, k: max(1.0, 0.05 * b * (k + 1)) + 0.05 * k  # noqa: E731 (compute-bound past B·(K+1) = 20)
    table = vc.k_table(accept, cost, arms=(1, 2, 4), batches=(1, 8, 64))
    assert table[1] == 4 and table[64] == 0 and 0 < table[8] < 4
    assert vc.k_table([0.0, 0.0], cost, arms=(1, 2), batches=(1,)) == {1: 0}  # no acceptance: SD off


def test_the_adaptive_selector_table_becomes_vllms_schedule():
    """The native selector's measured table is what the vLLM engine applies (speculative.md §5.5)."""
    from rlreason.rollout.spec.selector import AdaptiveK

    sel = AdaptiveK(arms=(0, 2, 4), epsilon=0.0)
    for _ in range(4):  # batch 1: K = 4 pays; batch 8: verifying 8·5 tokens costs too much
        sel.observe(1, 0, 1.0, None)
        sel.observe(1, 4, 1.3, [4])
        sel.observe(1, 2, 1.2, [2])
        sel.observe(8, 0, 1.0, None)
        sel.observe(8, 4, 8.0, [4] * 8)
        sel.observe(8, 2, 6.0, [2] * 8)
    table = sel.table(batches=(1, 2, 8))
    assert table == {1: 4, 2: 0, 8: 0}  # batch 2 was never measured: no SD there
    eng = engine(k=4)
    assert eng.set_k_table(table) and eng.needs_rebuild
    assert vc.k_schedule(table, 4, 64) == [[1, 1, 4], [2, 64, 0]]


def test_acceptance_beyond_the_tables_smallest_k_is_extended_not_read_as_rejections():
    u = vc.conditional_acceptance([8, 6, 1, 0], drafts=10, reliable=2, kmax=4)  # positions 3, 4 rarely drafted
    assert u == pytest.approx([0.8, 0.6, 0.45, 0.3375])  # conditional 0.75 carried on
    assert vc.conditional_acceptance([8, 6], 10, reliable=1, kmax=3) == pytest.approx([0.8, 0.64, 0.512])
    assert vc.conditional_acceptance([], 0, reliable=2, kmax=2) == [0.0, 0.0]


def test_a_sync_replans_the_k_table_from_measured_acceptance_and_rebuilds_into_it(monkeypatch):
    eng = engine(k=3, k_table=ve.prior_k_table(3), plan=ve.TablePlan(arms=(0, 1, 2, 3), every=2))
    rebuilt = []

    def build(settings, tokenizer=None):
        rebuilt.append(settings)
        return engine(k=3, k_table=settings.k_table)

    monkeypatch.setattr(ve.VLLMEngine, "build", staticmethod(build))
    monkeypatch.setattr(ve, "ipc_update_info", vc.nccl_update_info)
    first_llm = eng.llm
    eng.remember_drafter({"fc.weight": torch.ones(2, 2)})
    eng.generate(request())  # the stand-in reports 10 drafts: 6 accepted at position 1, 3 at 2, 1 at 3
    eng.load_state_dict({"w": torch.ones(2)})
    assert not rebuilt and eng.settings.k_table == ve.prior_k_table(3)  # the 1st sync: not yet (every=2)
    eng.load_state_dict({"w": torch.ones(2)})
    # the prior's smallest K is 1, so u = 0.6, 0.36, 0.216; goodput B·E(K) / (1 + B(K+1)/256 + 0.05K), e.g.
    # at 32: K=2 62.7/1.475 = 42.5 > K=3 69.6/1.65 = 42.2; at 128: K=1 204.8/2.05 = 99.9 > K=2 250.9/2.6 = 96.5
    assert rebuilt and eng.settings.k_table == {1: 3, 2: 3, 4: 3, 8: 3, 16: 3, 32: 2, 64: 2, 128: 1}
    assert first_llm.calls[-1][0] == "shutdown" and eng.llm is not first_llm  # stopped before the new one
    assert eng.rebuilds == 1 and eng.measured["drafts"] == 0
    names = [c[1][0]["update_info"]["names"] for c in eng.llm.calls if c[0] == "update_weights"]
    assert names == [["w"], ["fc.weight"]]  # into the rebuilt LLM: the policy, then the drafter again
    eng.load_state_dict({"w": torch.ones(2)})
    assert eng.rebuilds == 1  # the table holds until the next re-plan changes it


def test_useless_drafts_turn_sd_off_except_at_batch_one():
    eng = engine(k=3, k_table={1: 3}, plan=ve.TablePlan(arms=(0, 1, 2, 3)))
    eng.measured = {"drafts": 100.0, "accepted_pos": [1.0, 0.0, 0.0]}
    assert eng.planned_table() == {1: 1, 2: 0, 4: 0, 8: 0, 16: 0, 32: 0, 64: 0, 128: 0}


def test_sampling_kwargs():
    kw = vc.sampling_kwargs(SamplingParams(temperature=0.0, top_k=0, max_new_tokens=9), n=4, seed=3)
    assert kw == {"n": 4, "temperature": 0.0, "top_p": 1.0, "top_k": -1, "max_tokens": 9, "stop": None,
                  "include_stop_str_in_output": True, "logprobs": 0, "seed": 3}
    assert vc.sampling_kwargs(SamplingParams(top_k=20, stop=["x"]), 1, 0)["top_k"] == 20


# ---- outputs and metrics ---------------------------------------------------------------------------

def test_every_sample_of_a_batch_gets_its_own_seed_as_vllm_fans_them_out():
    # vLLM (v1/engine/parallel_sampling.py) seeds child j of a request with n samples as seed + j
    req = GenerationRequest([[3, 4], [5], [6, 7, 8], [9]], [3, 2, 4, 1], 0, request().sampling, 5)
    eng = engine()
    eng.generate(req)
    gens = [c[2] for c in eng.llm.calls if c[0] == "generate"]
    child_seeds = [g["seed"] + j for g in gens for j in range(g["n"])]
    assert len(child_seeds) == 10 and len(set(child_seeds)) == 10, child_seeds
    again = engine()
    again.generate(req)
    assert [c[2]["seed"] for c in again.llm.calls if c[0] == "generate"] == [g["seed"] for g in gens]  # reproducible


def test_generate_translates_outputs_into_a_rollout_batch():
    eng = engine()
    batch = eng.generate(request())
    gens = [c for c in eng.llm.calls if c[0] == "generate"]
    assert [g[1] for g in gens] == [[3, 4], [6, 7, 8]]  # the empty group is not sent
    assert [g[2]["n"] for g in gens] == [2, 3] and gens[0][2]["seed"] != gens[1][2]["seed"]
    assert gens[0][2]["stop"] == ["\n"] and gens[0][2]["top_k"] == -1 and gens[0][2]["logprobs"] == 0
    assert batch.group_index.tolist() == [4, 4, 6, 6, 6]  # group_offset + original prompt index
    assert batch.prompt_ids.tolist()[0] == [PAD, 3, 4] and batch.prompt_mask.tolist()[0] == [0, 1, 1]
    assert batch.response_ids.tolist()[1] == [11, 99, PAD] and batch.response_mask.tolist()[1] == [1, 1, 0]
    assert batch.truncated.tolist() == [False, True, False, True, False]  # finish_reason length -> truncated
    assert torch.allclose(batch.rollout_logprobs[4], torch.tensor([-0.1, -0.2, -0.3]))  # the sampled token's
    assert batch.rollout_logprobs[0].tolist()[1:] == [0.0, 0.0]
    assert batch.gen_tokens == 1 + 2 + 1 + 2 + 3 and batch.response_text[2] == "s0"
    with pytest.raises(NotImplementedError, match="rollout.engine=native"):
        eng.model  # model-based rewards and the online drafter need the native engine's HF model


def test_generate_reads_spec_metrics_as_a_delta_in_specstats_keys():
    eng = engine(k=3)
    eng.generate(request())
    batch = eng.generate(request())  # counters are cumulative: only this call's share counts
    n = batch.stats
    assert n["spec/n/drafts"] == 10 and n["spec/n/draft_tokens"] == 30 and n["spec/n/accepted"] == 10
    assert n["spec/n/iters"] == 5 and n["spec/n/emitted"] == batch.gen_tokens
    m = spec_metrics(n)
    assert m["spec/accept_len"] == pytest.approx(2.0) and m["spec/accept_rate"] == pytest.approx(1 / 3)
    assert [m[f"spec/accept_pos{i}"] for i in (1, 2, 3)] == pytest.approx([0.6, 0.3, 0.1])
    assert "spec/accept_pos4" not in m
    assert engine(method=None).generate(request()).stats == {}  # SD off: no spec counters


# ---- weights ---------------------------------------------------------------------------------------

def test_weight_buckets_respect_the_cap_and_the_order():
    named = [(f"w{i}", torch.zeros(n)) for i, n in enumerate([10, 20, 5, 100, 1, 1])]  # float32: 4 bytes each
    buckets = vc.weight_buckets(named, max_bytes=120)
    assert [[n for n, _ in b] for b in buckets] == [["w0", "w1"], ["w2"], ["w3"], ["w4", "w5"]]
    assert all(sum(t.numel() * 4 for _, t in b) <= 120 or len(b) == 1 for b in buckets)
    assert [n for b in buckets for n, _ in b] == [n for n, _ in named]
    assert vc.weight_buckets([], 10) == []
    with pytest.raises(ValueError):
        vc.weight_buckets(named, 0)
    assert vc.nccl_update_info([("a", torch.zeros(2, 3, dtype=torch.bfloat16))]) == {
        "names": ["a"], "dtype_names": ["bfloat16"], "shapes": [[2, 3]]}


def test_policy_sync_runs_the_weight_transfer_protocol_in_buckets(monkeypatch):
    monkeypatch.setattr(ve, "ipc_update_info", lambda bucket: vc.nccl_update_info(bucket))  # no CUDA handles on CPU
    eng = engine(bucket_bytes=64)
    state = {"a": torch.zeros(8), "b": torch.zeros(8), "c": torch.zeros(16)}  # 32, 32, 64 bytes
    eng.load_state_dict(state)
    calls = [c[0] for c in eng.llm.calls]
    assert calls == ["start_weight_update", "update_weights", "update_weights", "finish_weight_update",
                     "reset_prefix_cache"]
    updates = [c[1][0]["update_info"]["names"] for c in eng.llm.calls if c[0] == "update_weights"]
    assert updates == [["a", "b"], ["c"]]


def cuda_reduce(t):
    """torch's reduce_tensor for a CUDA tensor, without CUDA: (rebuild_cuda_tensor, its 15 arguments), in the
    order torch.multiprocessing.reductions builds them (storage device at index 6)."""
    from torch.multiprocessing.reductions import rebuild_cuda_tensor

    nbytes = t.numel() * t.element_size()
    return rebuild_cuda_tensor, (type(t), t.size(), t.stride(), 0, type(t.untyped_storage()), t.dtype, 3,
                                 b"cuda-ipc-handle", nbytes, 0, False, b"ref-counter", 0, b"event", False)


def vllm_receive(update_info, device_index, uuid):
    """What vLLM's IPCWeightTransferEngine.receive_weights (0.28-0.34, non-packed) does with each handle:
    ``args = ipc_handle[uuid]; list_args = list(args); list_args[6] = device_index;
    rebuild_cuda_tensor(*list_args)``. The rebuild needs CUDA, so its arguments are bound to its signature."""
    import inspect

    from torch.multiprocessing.reductions import rebuild_cuda_tensor

    out = []
    for name, handle in zip(update_info["names"], update_info["ipc_handles"]):
        list_args = list(handle[uuid])
        list_args[6] = device_index
        bound = inspect.signature(rebuild_cuda_tensor).bind(*list_args)
        out.append((name, bound.arguments))
    return out


def test_ipc_payload_is_what_vllms_receiver_unpacks(monkeypatch):
    class Props:
        uuid = "GPU-0000"

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props())
    bucket = [("model.layers.0.self_attn.q_proj.weight", torch.zeros(4, 2, dtype=torch.bfloat16)),
              ("lm_head.weight", torch.zeros(3, 2))]
    info = vc.ipc_update_info(bucket, reduce=cuda_reduce)
    got = vllm_receive(info, device_index=1, uuid="GPU-0000")
    assert [n for n, _ in got] == [n for n, _ in bucket]
    for (_, args), (_, t) in zip(got, bucket):
        assert args["storage_device"] == 1 and args["dtype"] == t.dtype and tuple(args["tensor_size"]) == t.shape
    assert info["dtype_names"] == ["bfloat16", "float32"] and info["shapes"] == [[4, 2], [3, 2]]


def test_buckets_end_at_module_boundaries():
    """A decoder layer's q/k/v (and gate/up) never straddle two rounds: vLLM stacks them when the layer is whole."""
    names = [f"model.layers.{i}.{p}" for i in range(3) for p in
             ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "mlp.up_proj.weight")]
    named = [("model.embed_tokens.weight", torch.zeros(8))] + [(n, torch.zeros(4)) for n in names] + \
        [("model.norm.weight", torch.zeros(2)), ("lm_head.weight", torch.zeros(8))]
    buckets = vc.weight_buckets(named, max_bytes=40)  # a layer is 4 x 16 bytes: over the cap, alone in its bucket
    layer_of = lambda n: n.split(".")[2] if n.startswith("model.layers.") else n  # noqa: E731
    for b in buckets:
        layers = {layer_of(n) for n, _ in b if n.startswith("model.layers.")}
        assert len(layers) <= 1
    assert [n for b in buckets for n, _ in b] == [n for n, _ in named]  # the order is kept


def test_eagle_drafter_maps_onto_vllms_eagle_checkpoint(tmp_path, monkeypatch):
    from safetensors.torch import load_file
    from transformers import LlamaConfig

    from rlreason.rollout.spec.drafters import EagleDrafter
    from rlreason.rollout.spec.layers import DrafterConfig

    d = EagleDrafter(DrafterConfig(hidden_size=16, num_heads=2, intermediate_size=32, vocab_size=40))
    target = LlamaConfig(hidden_size=16, vocab_size=40, num_hidden_layers=12, num_attention_heads=2,
                         num_key_value_heads=2)
    out = vc.write_drafter_checkpoint(d, target, str(tmp_path / "eagle"))
    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["num_hidden_layers"] == 1 and cfg["hidden_size"] == 16
    names = set(load_file(os.path.join(out, "model.safetensors")))
    layer = "layers.0."  # no input norm on layer 0 (vLLM's EAGLE-1 has none either)
    assert names == ({"fc.weight", layer + "post_attention_layernorm.weight"}
                     | {layer + f"self_attn.{p}_proj.weight" for p in "qkvo"}
                     | {layer + f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")})
    monkeypatch.setattr(ve, "ipc_update_info", lambda bucket: vc.nccl_update_info(bucket))
    eng = engine()
    assert eng.load_drafter_state(d.state_dict()) == []  # nothing dropped: no vocabulary map
    assert eng.llm.calls[0][0] == "start_draft_weight_update"
    with pytest.raises(ValueError, match="no drafter weights"):
        engine(method="ngram").load_drafter_state({})


# ---- colocated placement ---------------------------------------------------------------------------

def test_sleep_blocks_generation_until_the_kv_cache_is_back():
    eng = engine()
    eng.sleep(level=2)
    with pytest.raises(RuntimeError, match="wake_up"):
        eng.generate(request())
    eng.wake_up(["weights"])
    assert eng.asleep == 2
    eng.wake_up(["kv_cache"])
    assert eng.asleep == 0 and len(eng.generate(request())) == 5
    assert [c[0] for c in eng.llm.calls[:3]] == ["sleep", "wake_up", "wake_up"]


def test_a_colocated_sync_wakes_weights_then_the_kv_cache(monkeypatch):
    """Colocated, the engine sleeps (level 1) while the learner trains; the sync wakes the weights, pushes,
    then wakes the KV cache (vLLM schedules again only once fully awake); a generate after a level-1 sleep
    without a sync wakes everything."""
    monkeypatch.setattr(ve, "ipc_update_info", vc.nccl_update_info)
    eng = engine(method=None)
    eng.sleep(level=1)
    eng.load_state_dict({"w": torch.ones(2)})
    calls = [(c[0], c[2].get("tags")) for c in eng.llm.calls if c[0] != "update_weights"]
    assert calls == [("sleep", None), ("wake_up", ["weights"]), ("start_weight_update", None),
                     ("finish_weight_update", None), ("wake_up", ["kv_cache"]), ("reset_prefix_cache", None)]
    assert eng.asleep == 0
    eng.sleep(level=1)
    slept = len(eng.llm.calls)
    assert len(eng.generate(request())) == 5 and eng.asleep == 0
    assert eng.llm.calls[slept][0] == "wake_up" and eng.llm.calls[slept][2].get("tags") is None  # all of it


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("vllm") is None,
                    reason="needs a CUDA GPU and vLLM")
def test_real_vllm_generates_with_ngram_sd_and_syncs_weights(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    s = ve.VLLMSettings(model=tiny_model_dir, dtype="float32", method="ngram", k=3, gpu_memory_utilization=0.3,
                        enable_sleep_mode=False, extra={"enforce_eager": True})
    eng = ve.VLLMEngine.build(s)
    batch = eng.generate(request())
    assert len(batch) == 5
    # a prompt that repeats itself: its last tokens occur earlier, so n-gram lookup proposes drafts at once
    sp = SamplingParams(temperature=0.0, max_new_tokens=16)
    repeated = eng.generate(GenerationRequest([[3, 4, 5, 6] * 8], [1], 1, sp, 0))
    assert repeated.stats["spec/n/drafts"] > 0
    eng.load_state_dict(AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict())
    assert len(eng.generate(request())) == 5

