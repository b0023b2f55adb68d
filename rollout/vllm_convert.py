"""Translation between rlreason and vLLM for ``rollout/vllm_engine.py``: pure functions, no vLLM import.

Config (our settings -> ``speculative_config``, the batch-size -> K schedule, ``SamplingParams``
keywords), outputs (``RequestOutput`` -> RolloutBatch), metrics (``LLM.get_metrics()`` -> our
SpecStats counters) and weights (byte-capped buckets, weight-transfer update infos, the EAGLE
checkpoint layout). Unit-tested on CPU with small stand-ins for vLLM's objects.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterable, Optional

import torch
from torch import Tensor

from rlreason.types import RolloutBatch, SamplingParams

METHODS = ("eagle", "eagle3", "draft_model", "ngram")
DRAFTER_METHOD = {"eagle": "eagle", "lm": "draft_model", "ngram": "ngram"}  # rollout.spec.drafter -> vLLM method
BUCKET_BYTES = 512 << 20  # TLT's update_weights_bucket_megabytes default


# ---------------------------------------------------------------------------------------------
# configuration


def speculative_config(method: Optional[str], k: int, draft_model: Optional[str] = None, draft_tp: int = 1,
                       ngram: tuple[int, int] = (1, 4), k_table: Optional[dict[int, int]] = None,
                       max_batch: int = 1024) -> Optional[dict[str, Any]]:
    """Our settings -> vLLM's ``speculative_config`` dict (None: speculative decoding off).

    ``k`` is the largest K (vLLM sizes its buffers from it); ``k_table`` (batch size -> K) becomes
    ``num_speculative_tokens_per_batch_size``. Drafts stay vLLM's default greedy proposals with
    ``rejection_sample_method`` left at ``standard``, the lossless rule.
    """
    if method is None or k <= 0:
        return None
    if method not in METHODS:
        raise ValueError(f"speculative method {method!r}: vLLM engine supports {', '.join(METHODS)}")
    cfg: dict[str, Any] = {"method": method, "num_speculative_tokens": int(k)}
    if method == "ngram":
        lo, hi = ngram
        if not 1 <= lo <= hi:
            raise ValueError(f"n-gram lookup needs 1 <= min <= max, got {ngram}")
        cfg.update(prompt_lookup_min=int(lo), prompt_lookup_max=int(hi))
    else:
        if not draft_model:
            raise ValueError(f"method {method!r} needs a draft model directory")
        cfg.update(model=draft_model, draft_tensor_parallel_size=int(draft_tp))
    if k_table:
        cfg["num_speculative_tokens_per_batch_size"] = k_schedule(k_table, k, max_batch)
    return cfg


def k_schedule(table: dict[int, int], kmax: int, max_batch: int = 1024) -> list[list[int]]:
    """A batch-size -> K table {b: K} -> vLLM's inclusive ranges [[lo, hi, K], ...].

    Entry b covers batch sizes from b up to the next entry's key - 1 (the last one up to
    ``max_batch``); K is clamped to ``kmax`` as vLLM does; neighbouring ranges with equal K merge.
    """
    keys = sorted(b for b in table if b <= max_batch)
    if not keys or keys[0] != 1:
        raise ValueError(f"the K table must start at batch size 1, got keys {sorted(table)}")
    out: list[list[int]] = []
    for i, lo in enumerate(keys):
        hi = keys[i + 1] - 1 if i + 1 < len(keys) else max_batch
        k = max(0, min(int(table[lo]), kmax))
        if out and out[-1][2] == k:
            out[-1][1] = hi
        else:
            out.append([lo, hi, k])
    return out


def k_table(accept_pos: list[float], cost: Callable[[int, int], float], arms: Iterable[int],
            batches: Iterable[int] = (1, 2, 4, 8, 16, 32, 64, 128)) -> dict[int, int]:
    """The goodput-argmax K per batch size: B·E(K) / c(B, K), the native selector's objective.

    ``accept_pos[j]`` is vLLM's unconditional per-position acceptance (accepted at position j+1 /
    drafts), so E(K) = 1 + Σ_{j<K} accept_pos[j]; ``cost(B, K)`` the profiled seconds of one
    iteration. K = 0 is always an arm, so SD is off where it does not pay.
    """
    arms = sorted(set(arms) | {0})
    out = {}
    for b in batches:
        def goodput(k: int) -> float:
            return b * (1.0 + sum(accept_pos[:k])) / cost(b, k)
        out[b] = max((k for k in arms if k <= len(accept_pos)), key=goodput)
    return out


def conditional_acceptance(accepted_pos: list[float], drafts: float, reliable: int, kmax: int) -> list[float]:
    """Unconditional per-position acceptance u_1..u_kmax from vLLM's counters, safe under a K table.

    Position j is drafted only in iterations whose K >= j, but vLLM counts every draft in the
    denominator; positions up to ``reliable`` (the table's smallest K > 0) are drafted in every
    draft, so their rates are exact. Beyond, the last measured conditional rate u_j / u_{j-1} is
    extended geometrically, rather than reading undrafted positions as rejections (which would
    shrink the table further each time it is re-planned).
    """
    if drafts <= 0 or reliable <= 0:
        return [0.0] * kmax
    u = [accepted_pos[j] / drafts if j < len(accepted_pos) else 0.0 for j in range(min(reliable, kmax))]
    ratio = u[-1] / u[-2] if len(u) >= 2 and u[-2] > 0 else (u[0] if u else 0.0)
    while len(u) < kmax:
        u.append(u[-1] * min(ratio, 1.0))
    return u


def iteration_cost(saturation_tokens: int, draft_cost: float) -> Callable[[int, int], float]:
    """Modelled seconds of one iteration, in batch-1 decoding steps: 1 + B·(K+1)/saturation + draft_cost·K."""
    return lambda b, k: 1.0 + b * (k + 1) / saturation_tokens + draft_cost * k


def sampling_kwargs(sp: SamplingParams, n: int, seed: int) -> dict[str, Any]:
    """Our SamplingParams -> keyword arguments of ``vllm.SamplingParams`` for one prompt's group."""
    return {
        "n": n,
        "temperature": sp.temperature,
        "top_p": sp.top_p,
        "top_k": sp.top_k if sp.top_k > 0 else -1,  # -1 = off in every vLLM version
        "max_tokens": sp.max_new_tokens,
        "stop": list(sp.stop) or None,
        "include_stop_str_in_output": True,  # the response keeps its stop string, as in the native engine
        "logprobs": 0,  # the sampled token's log-prob only
        "seed": seed,
    }


# ---------------------------------------------------------------------------------------------
# outputs


def to_rollout_batch(prompts: list[list[int]], group_sizes: list[int], group_offset: int, outputs: list,
                     pad_id: int) -> RolloutBatch:
    """vLLM RequestOutputs (one per prompt, ``n`` completions each) -> a RolloutBatch.

    Rows of a group are adjacent, responses right-padded, prompts left-padded; ``truncated`` is
    finish_reason "length" (or an abort); log-probs are the sampled tokens' as vLLM reports them.
    """
    from rlreason.rollout.native import left_pad

    rows, groups, toks, lps, trunc, texts = [], [], [], [], [], []
    for b, (ids, g, out) in enumerate(zip(prompts, group_sizes, outputs)):
        if len(out.outputs) != g:
            raise ValueError(f"prompt {b}: vLLM returned {len(out.outputs)} completions, expected {g}")
        for c in out.outputs:
            rows.append(ids)
            groups.append(group_offset + b)
            toks.append(list(c.token_ids))
            lps.append(_sampled_logprobs(c))
            trunc.append(c.finish_reason not in ("stop",))
            texts.append(c.text)
    width = max((len(t) for t in toks), default=0) or 1
    resp = torch.full((len(toks), width), pad_id, dtype=torch.long)
    rmask, rlp = torch.zeros(len(toks), width), torch.zeros(len(toks), width)
    for i, (t, lp) in enumerate(zip(toks, lps)):
        resp[i, :len(t)] = torch.tensor(t, dtype=torch.long)
        rmask[i, :len(t)] = 1.0
        rlp[i, :len(lp)] = torch.tensor(lp)
    pids, pmask = left_pad(rows, pad_id)
    return RolloutBatch(prompt_ids=pids, prompt_mask=pmask, response_ids=resp, response_mask=rmask,
                        rollout_logprobs=rlp, truncated=torch.tensor(trunc, dtype=torch.bool),
                        group_index=torch.tensor(groups, dtype=torch.long), response_text=texts, pad_id=pad_id,
                        gen_tokens=int(rmask.sum().item()))


def _sampled_logprobs(completion) -> list[float]:
    """Each generated token's log-prob from vLLM's per-position {token id: Logprob} dicts."""
    if completion.logprobs is None:
        return [0.0] * len(completion.token_ids)  # not requested: the learner recomputes them anyway
    return [float(d[t].logprob) for t, d in zip(completion.token_ids, completion.logprobs)]


# ---------------------------------------------------------------------------------------------
# metrics

SPEC_COUNTERS = {"vllm:spec_decode_num_drafts": "drafts", "vllm:spec_decode_num_draft_tokens": "draft_tokens",
                 "vllm:spec_decode_num_accepted_tokens": "accepted"}
PER_POS = "vllm:spec_decode_num_accepted_tokens_per_pos"
ITERATIONS = "vllm:iteration_tokens_total"  # a histogram: its count is the number of engine steps


def read_spec_counters(metrics: list) -> dict[str, Any]:
    """Cumulative counters from ``LLM.get_metrics()``, summed over engines (labels)."""
    out: dict[str, Any] = {"drafts": 0.0, "draft_tokens": 0.0, "accepted": 0.0, "accepted_pos": [], "iters": 0.0}
    for m in metrics:
        if m.name in SPEC_COUNTERS:
            out[SPEC_COUNTERS[m.name]] += float(m.value)
        elif m.name == PER_POS:
            pos = out["accepted_pos"]
            pos.extend([0.0] * (len(m.values) - len(pos)))
            for i, v in enumerate(m.values):
                pos[i] += float(v)
        elif m.name == ITERATIONS:
            out["iters"] += float(getattr(m, "count", 0))
    return out


def spec_stats_delta(before: dict[str, Any], after: dict[str, Any], emitted: int, kmax: int) -> dict[str, float]:
    """Counters of one generate call in ``SpecStats.as_dict`` keys, so ``spec_metrics`` reads both engines alike.

    Every verifying row of every iteration is one vLLM draft, so Σ batch over SD iterations is
    ``num_drafts``. Per-position denominators assume every draft reached ``kmax`` positions (true
    without a K table; with one, positions past a bucket's K are under-counted as rejections).
    Times are not exposed by vLLM and stay 0.
    """
    from rlreason.rollout.spec.stats import MAX_POS

    d = {k: after[k] - before[k] for k in ("drafts", "draft_tokens", "accepted", "iters")}
    pos = [a - (before["accepted_pos"][i] if i < len(before["accepted_pos"]) else 0.0)
           for i, a in enumerate(after["accepted_pos"])]
    iters = max(d["iters"], 1.0) if emitted else 0.0
    out = {"spec/n/iters": iters, "spec/n/sd_iters": iters if d["drafts"] else 0.0, "spec/n/drafts": d["drafts"],
           "spec/n/draft_tokens": d["draft_tokens"], "spec/n/accepted": d["accepted"],
           "spec/n/emitted": float(emitted), "spec/n/batch_sum": d["drafts"]}
    for i in range(MAX_POS):
        out[f"spec/n/drafted_pos{i + 1}"] = d["drafts"] if i < kmax else 0.0
        out[f"spec/n/accepted_pos{i + 1}"] = pos[i] if i < len(pos) else 0.0
    return out


# ---------------------------------------------------------------------------------------------
# weights


def weight_buckets(named: Iterable[tuple[str, Tensor]],
                   max_bytes: int = BUCKET_BYTES) -> list[list[tuple[str, Tensor]]]:
    """Split (name, tensor) pairs, in order, into buckets of at most ``max_bytes`` each, cut only
    between modules: every tensor of one decoder layer (``...layers.<i>.``), or of one other module,
    is in the same bucket.

    vLLM reloads layer by layer and holds what it received until a layer is complete (its q/k/v and
    gate/up are stacked there), so a layer split across two rounds would be read after the first
    round's staging memory was released. A module larger than the cap gets a bucket of its own.
    Bounds the staging memory of one transfer round.
    """
    if max_bytes <= 0:
        raise ValueError(f"bucket size must be > 0 bytes, got {max_bytes}")
    buckets: list[list[tuple[str, Tensor]]] = []
    size = 0
    for unit in _module_units(named):
        nbytes = sum(t.numel() * t.element_size() for _, t in unit)
        if not buckets or (size + nbytes > max_bytes and buckets[-1]):
            buckets.append([])
            size = 0
        buckets[-1].extend(unit)
        size += nbytes
    return buckets


def _module_units(named: Iterable[tuple[str, Tensor]]) -> list[list[tuple[str, Tensor]]]:
    """Consecutive tensors grouped by module: a decoder layer (``layers.<i>``) or a tensor's parent."""
    units: list[list[tuple[str, Tensor]]] = []
    last = None
    for name, t in named:
        key = _module_key(name)
        if key != last or not units:
            units.append([])
            last = key
        units[-1].append((name, t))
    return units


def _module_key(name: str) -> str:
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part in ("layers", "h", "blocks") and parts[i + 1].isdigit():
            return ".".join(parts[:i + 2])
    return ".".join(parts[:-1]) or name  # a top-level tensor is a module of its own


def nccl_update_info(bucket: list[tuple[str, Tensor]]) -> dict[str, Any]:
    """The metadata of one NCCL round (``NCCLWeightTransferUpdateInfo``): names, dtypes, shapes, in send order."""
    return {"names": [n for n, _ in bucket], "dtype_names": [str(t.dtype).removeprefix("torch.") for _, t in bucket],
            "shapes": [list(t.shape) for _, t in bucket]}


def ipc_update_info(bucket: list[tuple[str, Tensor]], device: int = 0, reduce=None) -> dict[str, Any]:
    """One CUDA-IPC round (``IPCWeightTransferUpdateInfo``): the metadata plus, per tensor, a map from
    this GPU's UUID to the arguments of ``rebuild_cuda_tensor``.

    Only the arguments: vLLM's receiver (``IPCWeightTransferEngine.receive_weights``, 0.28 and later)
    calls ``rebuild_cuda_tensor(*args)`` itself after setting ``args[6]`` to its own device index.
    ``reduce``: torch's ``reduce_tensor`` (a parameter for the tests). The tensors must stay alive until
    the round is finished (the caller holds the bucket).
    """
    from torch.multiprocessing.reductions import reduce_tensor

    reduce = reduce or reduce_tensor
    uuid = str(torch.cuda.get_device_properties(device).uuid)
    info = nccl_update_info(bucket)
    info["ipc_handles"] = [{uuid: tuple(reduce(t.detach().contiguous())[1])} for _, t in bucket]
    return info


def eagle_checkpoint_state(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Our EagleDrafter state dict -> (tensors under vLLM's EAGLE-1 Llama names, names dropped).

    Names already match (``fc``, ``layers.i.self_attn.q_proj`` ... in Hugging Face Llama form,
    rollout/spec/layers.py); vLLM stacks q/k/v and gate/up itself, and like our drafter has no input
    norm on layer 0 and no final norm. Dropped: ``vocab_map`` (EAGLE-1 in vLLM has no reduced
    vocabulary; validation refuses rollout.spec.draft_vocab with vLLM).
    """
    keep, dropped = {}, []
    for name, t in state.items():
        if name == "vocab_map":
            dropped.append(name)
        else:
            keep[name] = t
    return keep, dropped


def draft_model_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our SmallLMDrafter state dict -> Hugging Face Llama names (``model.`` on all but ``lm_head``).

    A reduced vocabulary cannot be published: vLLM's draft model proposes over the full vocabulary.
    """
    if state.get("vocab_map") is not None:
        raise ValueError("a draft_model drafter with a reduced vocabulary cannot be published to vLLM "
                         "(set rollout.spec.draft_vocab=0)")
    return {(n if n.startswith("lm_head") else "model." + n): t for n, t in state.items() if n != "vocab_map"}


def drafter_tensors(state: dict[str, Tensor], method: str) -> tuple[dict[str, Tensor], list[str]]:
    """A drafter's state dict under the names vLLM's ``method`` loads (eagle | draft_model), and names dropped."""
    if method == "eagle":
        return eagle_checkpoint_state(state)
    if method == "draft_model":
        return draft_model_state(state), []
    raise ValueError(f"speculative method {method!r} has no drafter weights to refresh")


def draft_llama_config(drafter_cfg, target_config, num_layers: int) -> dict[str, Any]:
    """config.json of a drafter checkpoint: a plain Llama of the drafter's own shape.

    Written from the drafter's shape, not copied from the target, so nothing of the target's
    architecture leaks in where the drafter differs: full multi-head attention (no GQA), no biases,
    the drafter's norm eps and plain RoPE (no scaling). The context length is the target's.
    """
    from transformers import LlamaConfig

    heads = drafter_cfg.num_heads
    cfg = LlamaConfig(vocab_size=drafter_cfg.vocab_size, hidden_size=drafter_cfg.hidden_size,
                      intermediate_size=drafter_cfg.intermediate_size, num_hidden_layers=num_layers,
                      num_attention_heads=heads, num_key_value_heads=heads,
                      head_dim=drafter_cfg.hidden_size // heads, rms_norm_eps=drafter_cfg.eps,
                      rope_theta=drafter_cfg.rope_theta, tie_word_embeddings=False,
                      max_position_embeddings=getattr(target_config, "max_position_embeddings", 4096),
                      bos_token_id=getattr(target_config, "bos_token_id", None),
                      eos_token_id=getattr(target_config, "eos_token_id", None))
    out = cfg.to_dict()
    out.update(architectures=["LlamaForCausalLM"], rope_theta=drafter_cfg.rope_theta)
    return out


def write_drafter_checkpoint(drafter, target_config, out_dir: str) -> str:
    """Save a neural drafter where vLLM's speculative ``model`` can load it (config.json + safetensors).

    EagleDrafter -> an EAGLE-1 checkpoint (``method="eagle"``: fc and the decoder layers; embedding
    and head are the target's); SmallLMDrafter -> a standalone Llama (``method="draft_model"``).
    """
    from safetensors.torch import save_file

    tensors, _ = drafter_tensors(drafter.state_dict(), "eagle" if drafter.needs_features else "draft_model")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(draft_llama_config(drafter.cfg, target_config, len(drafter.layers)), f, indent=1)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, os.path.join(out_dir, "model.safetensors"))
    return out_dir
