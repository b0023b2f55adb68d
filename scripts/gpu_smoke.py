"""GPU smoke test: the paths a GPU user takes first, on the realistic model, in one JSON (< 8 min on one GPU).

    python scripts/gpu_smoke.py --out smoke.json     # on a CUDA machine
    python scripts/gpu_smoke.py --cpu                # a dry run of the plumbing on CPU at toy sizes (~1-2 min)

Steps (each reports ``ok`` and its numbers; one that cannot run here says ``not_run`` and why):
- ``model``: Qwen2.5's tokenizer on a random Qwen2 (~100M parameters on GPU, bf16), briefly fine-tuned
  on GSM8K-format solutions so its samples have structure (a drafter has something to learn);
- ``kernels``: chunked and Triton log-prob/entropy against the naive path, both against an fp64
  reference, at V = 32k and 152k: values, gradients, time, peak memory (pass: no worse than naive);
- ``engine``: the native engine's tokens/s at batch 1, 8, 64, without and with speculative decoding
  (an EAGLE drafter trained on the model's own samples), and greedy equality with SD (fp32);
- ``learner``: a ``LearnerWorker`` in-process (NCCL on GPU, gloo on CPU; world size 1) at ZeRO 0 and 3,
  one update, then the published weights loaded into the engine equal ``policy_weights()``;
- ``vllm``: where vLLM is installed, generate, IPC sync (greedy equal to HF's after a sync, memory flat
  over 5 syncs), sleep/wake, and a 3-step ``rlreason train`` with ``rollout.engine=vllm``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from rlreason.rollout.native import NativeEngine
from rlreason.rollout.vllm_engine import VLLMEngine, VLLMSettings, shutdown
from rlreason.tasks import qwen_tiny, word_problems
from rlreason.types import GenerationRequest, SamplingParams

SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
EAGLE = SimpleNamespace(drafter="eagle", drafter_layers=1, lm_hidden_size=0)


@dataclass
class Plan:
    device: str
    dtype: torch.dtype
    model: dict
    sft_steps: int
    kernel_tokens: int
    impls: tuple[str, ...]
    batches: tuple[int, ...]
    max_new: int
    drafter_steps: int


GPU = Plan("cuda", torch.bfloat16, dict(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=2,
                                        intermediate_size=1536), sft_steps=300, kernel_tokens=4096,
           impls=("naive", "chunked", "triton"), batches=(1, 8, 64), max_new=128, drafter_steps=300)
CPU = Plan("cpu", torch.float32, dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=256),
           sft_steps=4, kernel_tokens=64, impls=("naive", "chunked"), batches=(1, 4), max_new=16, drafter_steps=4)


def sync(plan: Plan) -> None:
    if plan.device == "cuda":
        torch.cuda.synchronize()


def chat_rows(tok, n: int, seed: int) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt ids, solution ids + <|im_end|>) of ``n`` GSM8K-format rows, in the chat template."""
    rng = random.Random(seed)
    rows = [word_problems.make_row(rng) for _ in range(n)]
    chats = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": r["question"]}] for r in rows]
    prompts = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=False) for c in chats]
    return prompts, [tok.encode(r["solution"], add_special_tokens=False) + [tok.eos_token_id] for r in rows]


# ---- steps ------------------------------------------------------------------------------------


def step_model(plan: Plan, ctx: dict) -> dict:
    """Build, fine-tune for a moment (fp32 master weights), save in the run's dtype."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlreason.batches import sft_batch

    path = qwen_tiny.build_model(os.path.join(ctx["dir"], "model"), seed=0, **plan.model)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(plan.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses, start = [], time.perf_counter()
    for i in range(plan.sft_steps):
        b = sft_batch(*chat_rows(tok, 16, seed=i), tok.pad_token_id).seqs
        labels = b.input_ids.clone()
        labels[:, :b.prompt_width] = -100
        labels[:, b.prompt_width:][b.response_mask == 0] = -100
        with torch.autocast(plan.device, dtype=plan.dtype, enabled=plan.dtype != torch.float32):
            loss = model(input_ids=b.input_ids.to(plan.device), attention_mask=b.attention_mask.to(plan.device),
                         labels=labels.to(plan.device)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.to(plan.dtype).save_pretrained(path)
    ctx.update(path=path, tok=tok)
    params = sum(p.numel() for p in model.parameters())
    return {"ok": losses[-1] < losses[0], "params_m": round(params / 1e6, 1), "sft_steps": plan.sft_steps,
            "sft_loss_first": losses[0], "sft_loss_last": losses[-1], "sft_s": time.perf_counter() - start}


def _kernel_run(impl: str, h, w, y, g_lp, g_ent):
    from rlreason.kernels.logprobs import linear_logprobs_entropy

    h, w = h.detach().requires_grad_(True), w.detach().requires_grad_(True)
    if impl == "fp64":
        logp = torch.log_softmax(h @ w.T, -1)
        lp, ent = logp.gather(-1, y[:, None]).squeeze(-1), -(logp.exp() * logp).sum(-1)
    else:
        lp, ent = linear_logprobs_entropy(h, w, y, 1.0, True, impl=impl)
    ((lp * g_lp).sum() + (ent * g_ent).sum()).backward()
    return [t.detach().double() for t in (lp, ent, h.grad, w.grad)]


def step_kernels(plan: Plan, ctx: dict) -> dict:
    out, ok = {}, True
    d = plan.model["hidden_size"]
    for v in (32768, 151936):
        gen = torch.Generator().manual_seed(v)
        h = torch.randn(plan.kernel_tokens, d, generator=gen).to(plan.device, plan.dtype)
        w = (torch.randn(v, d, generator=gen) / d ** 0.5).to(plan.device, plan.dtype)
        y = torch.randint(0, v, (plan.kernel_tokens,), generator=gen).to(plan.device)
        g_lp, g_ent = (torch.randn(plan.kernel_tokens, generator=gen).to(plan.device) for _ in range(2))
        ref = _kernel_run("fp64", h.double(), w.double(), y, g_lp.double(), g_ent.double())
        rows = {}
        for impl in plan.impls:
            if plan.device == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            times = []
            for _ in range(3):
                sync(plan)
                t = time.perf_counter()
                got = _kernel_run(impl, h, w, y, g_lp, g_ent)
                sync(plan)
                times.append(time.perf_counter() - t)
            err = [float((a - b).abs().max()) for a, b in zip(got, ref)]
            rows[impl] = {"s": statistics.median(times), "err_lp": err[0], "err_ent": err[1], "err_dh": err[2],
                          "err_dw": err[3], "peak_mb": (torch.cuda.max_memory_allocated() - base) / 2**20
                          if plan.device == "cuda" else None}
        for impl in plan.impls[1:]:  # no worse than the naive path in the same dtype (plus fp32 rounding)
            keys = ("err_lp", "err_ent", "err_dh", "err_dw")
            worse = [k for k in keys if rows[impl][k] > 2 * rows["naive"][k] + 1e-4]
            rows[impl]["ok"] = not worse
            ok &= not worse
        out[f"V{v}"] = rows
    return {"ok": ok, "dtype": str(plan.dtype), "tokens": plan.kernel_tokens, **out}


def _tokens_per_s(engine, prompts, plan: Plan, temperature: float = 1.0) -> tuple[float, dict]:
    sp = SamplingParams(temperature=temperature, max_new_tokens=plan.max_new)
    req = GenerationRequest(prompts, [1] * len(prompts), 0, sp, seed=1)
    engine.generate(req)  # warm-up: allocator and kernels
    sync(plan)
    t = time.perf_counter()
    out = engine.generate(req)
    sync(plan)
    return float(out.response_mask.sum()) / (time.perf_counter() - t), getattr(out, "stats", {}) or {}


def _train_drafter(model, tok, prompts, plan: Plan):
    from rlreason.config.spec_schema import DrafterTrainConfig
    from rlreason.rollout.spec.build import build_drafter
    from rlreason.rollout.spec.train import DrafterTrainer
    from rlreason.types import SequenceBatch

    drafter = build_drafter(EAGLE, model, seed=0).to(model.dtype)
    cfg = DrafterTrainConfig(steps=plan.drafter_steps, batch_size=32, buffer_steps=1, lr=2e-3, weight_decay=0.0)
    trainer = DrafterTrainer(drafter, model, cfg, temperature=1.0, pad_id=tok.pad_token_id, seed=0)
    sp = SamplingParams(temperature=1.0, max_new_tokens=plan.max_new)
    rollouts = NativeEngine(model, tok, max_batch=64).generate(GenerationRequest(prompts, [1] * len(prompts), 0, sp, 0))
    trainer.add(SequenceBatch.from_rollout(rollouts), step=0)
    probe = trainer.buffer.rows()[:32]
    before = trainer.acceptance(probe)
    trainer.train(plan.drafter_steps)
    return drafter.eval(), {"offline_accept_before": before, "offline_accept_after": trainer.acceptance(probe)}


def step_engine(plan: Plan, ctx: dict) -> dict:
    from transformers import AutoModelForCausalLM

    from rlreason.rollout.spec.engine import FixedK, SpeculativeEngine
    from rlreason.rollout.spec.stats import spec_metrics

    tok = ctx["tok"]
    model = AutoModelForCausalLM.from_pretrained(ctx["path"], dtype=plan.dtype).to(plan.device).eval()
    prompts, _ = chat_rows(tok, max(plan.batches), seed=10_000)
    start = time.perf_counter()
    own, _ = chat_rows(tok, 256 if plan.device == "cuda" else 8, seed=20_000)  # the drafter's training prompts
    drafter, info = _train_drafter(model, tok, own, plan)
    ctx.update(drafter=drafter, model=model)
    info["drafter_train_s"] = time.perf_counter() - start
    native, spec = NativeEngine(model, tok), SpeculativeEngine(model, tok, drafter, FixedK(3))
    for b in plan.batches:
        info[f"batch{b}_tok_s"], _ = _tokens_per_s(native, prompts[:b], plan)
        info[f"batch{b}_sd_tok_s"], stats = _tokens_per_s(spec, prompts[:b], plan)
        metrics = spec_metrics(stats)
        info[f"batch{b}_sd_accept_len"] = metrics.get("spec/accept_len")
    # Greedy: SD must give the target's own tokens. fp32, so batch-shape rounding cannot flip a near-tie.
    model32 = copy.deepcopy(model).float()  # copies: the vLLM step publishes the drafter in the run's dtype
    greedy = SamplingParams(temperature=0.0, max_new_tokens=plan.max_new)
    req = GenerationRequest(prompts[:8], [1] * min(8, len(prompts)), 0, greedy, 0)
    a = NativeEngine(model32, tok).generate(req)
    b = SpeculativeEngine(model32, tok, copy.deepcopy(drafter).float(), FixedK(3)).generate(req)
    info["greedy_equal_with_sd"] = bool(torch.equal(a.response_ids, b.response_ids))
    return {"ok": info["greedy_equal_with_sd"], **info}


def step_learner(plan: Plan, ctx: dict) -> dict:
    """Each ZeRO stage in its own process: a process group is set up once per process."""
    if importlib.util.find_spec("deepspeed") is None:
        return {"not_run": "DeepSpeed is not installed (pip install 'deepspeed>=0.19.8')"}
    out = {}
    for stage in (0, 3):
        cmd = [sys.executable, os.path.abspath(__file__), "--learner-child", str(stage), "--model", ctx["path"]]
        if plan.device == "cpu":
            cmd.append("--cpu")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        out[f"zero{stage}"] = json.loads(lines[-1]) if lines else {"ok": False, "error": proc.stderr[-2000:]}
    return {"ok": all(r.get("ok") for r in out.values()), **out}


def learner_child(plan: Plan, model_path: str, stage: int) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlreason.batches import sft_batch, with_counts
    from rlreason.config import load_config
    from rlreason.workers import weights
    from rlreason.workers.learner import LearnerWorker

    dtype = "bfloat16" if plan.dtype == torch.bfloat16 else "float32"
    cfg = load_config(["recipe=qwen_tiny_gsm8k_format", f"model.path={model_path}", f"model.dtype={dtype}",
                       f"learner.zero_stage={stage}", "learner.world_size=1", "learner.micro_batch_size=8"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    worker = LearnerWorker(cfg, model_path, rank=0, world_size=1, master=f"127.0.0.1:{port}", threads=1)
    tok = AutoTokenizer.from_pretrained(model_path)
    batch = sft_batch(*chat_rows(tok, 16, seed=30_000), tok.pad_token_id)
    batch.advantages = torch.where(torch.arange(16) % 2 == 0, 1.0, -1.0)[:, None] * batch.seqs.response_mask
    batch.group_index = torch.arange(16) // 4
    before = worker.policy_weights()
    stats, _ = worker.update(with_counts(batch), micro_sizes=[8, 8], lr=1e-4)
    state = worker.policy_weights()
    handle = worker.publish_weights(version=1, remote_readers=False)  # the rollout workers' sync path
    engine = NativeEngine(AutoModelForCausalLM.from_pretrained(model_path, dtype=plan.dtype).to(plan.device), tok)
    engine.load_state_dict({k: v.to(plan.device) for k, v in weights.read(handle).items()})
    loaded = engine.model.state_dict()
    equal = all(torch.equal(loaded[k].cpu(), v) for k, v in state.items())
    moved = any(not torch.equal(before[k], v) for k, v in state.items())
    weights.remove_files(handle)
    peak = torch.cuda.max_memory_allocated() / 2**20 if plan.device == "cuda" else None
    return {"ok": equal and moved and stats.loss == stats.loss, "loss": stats.loss, "grad_norm": stats.grad_norm,
            "weights_equal_after_sync": equal, "weights_moved": moved, "partitioned": worker.loaded_partitioned,
            "s": time.perf_counter() - start, "peak_mb": peak}


def step_vllm(plan: Plan, ctx: dict) -> dict:
    if plan.device != "cuda":
        return {"not_run": "vLLM needs a GPU"}
    if importlib.util.find_spec("vllm") is None:
        return {"not_run": "vLLM is not installed (pip install 'rlreason[gpu]' in a CUDA environment)"}
    from transformers import AutoModelForCausalLM

    tok, info = ctx["tok"], {}
    engine = VLLMEngine.build(VLLMSettings(model=ctx["path"], gpu_memory_utilization=0.3, max_model_len=1024), tok)
    hf = AutoModelForCausalLM.from_pretrained(ctx["path"], dtype=plan.dtype).to("cuda").eval()
    prompts, _ = chat_rows(tok, 8, seed=40_000)
    greedy = GenerationRequest(prompts, [1] * 8, 0, SamplingParams(temperature=0.0, max_new_tokens=32), 0)

    def rows(batch) -> list[list[int]]:
        return [batch.response_ids[i, :int(batch.response_mask[i].sum())].tolist() for i in range(len(batch))]

    def agreement() -> float:  # share of rows whose greedy tokens equal HF's (bf16: near-ties may flip)
        got, want = rows(engine.generate(greedy)), rows(NativeEngine(hf, tok).generate(greedy))
        return sum(a == b for a, b in zip(got, want)) / len(want)

    info["greedy_equal_before_sync"] = agreement()
    free = []
    for i in range(5):  # new weights each time: the model's own, nudged
        with torch.no_grad():
            for p in hf.parameters():
                p.add_(torch.randn_like(p) * 1e-3)
        engine.load_state_dict({k: v.detach() for k, v in hf.state_dict().items()})
        free.append(torch.cuda.mem_get_info()[0] / 2**20)
    info["greedy_equal_after_sync"] = agreement()
    info["free_mb_over_syncs"] = free
    engine.sleep(1)
    engine.wake_up()
    info["greedy_equal_after_wake"] = agreement()
    shutdown(engine.llm)
    info["eagle"] = _vllm_eagle(ctx, greedy, rows(NativeEngine(hf, tok).generate(greedy)), rows)
    info["train_3_steps"] = _vllm_train(ctx)
    flat = max(free) - min(free) < 256
    ok = flat and min(info["greedy_equal_after_sync"], info["greedy_equal_after_wake"]) >= 0.75
    later = [info["eagle"], info["train_3_steps"]]  # a part that could not run here does not fail the step
    return {"ok": ok and all(r.get("ok", "not_run" in r) for r in later), **info}


def _vllm_eagle(ctx: dict, greedy: GenerationRequest, want: list[list[int]], rows) -> dict:
    """vLLM with EAGLE, started from an untrained drafter; the trained one (the engine step's) is then
    published as the RL loop publishes it. Acceptance must rise and greedy tokens must stay the target's."""
    if "drafter" not in ctx:
        return {"not_run": "the engine step trained no drafter"}
    from transformers import AutoConfig

    from rlreason.rollout.spec.build import build_drafter
    from rlreason.rollout.spec.stats import spec_metrics
    from rlreason.rollout.vllm_convert import drafter_tensors, write_drafter_checkpoint

    trained = ctx["drafter"]
    fresh = build_drafter(EAGLE, ctx["model"], seed=1).to(trained.dtype)
    ckpt = write_drafter_checkpoint(fresh, AutoConfig.from_pretrained(ctx["path"]), os.path.join(ctx["dir"], "eagle"))
    engine = VLLMEngine.build(VLLMSettings(model=ctx["path"], gpu_memory_utilization=0.3, max_model_len=1024,
                                           method="eagle", k=3, draft_model=ckpt), ctx["tok"])
    engine.remember_drafter(drafter_tensors(fresh.state_dict(), "eagle")[0])
    try:
        before = spec_metrics(engine.generate(greedy).stats).get("spec/accept_len", 1.0)
        dropped = engine.load_drafter_state(trained.state_dict())
        out = engine.generate(greedy)
        after = spec_metrics(out.stats).get("spec/accept_len", 1.0)
        equal = sum(a == b for a, b in zip(rows(out), want)) / len(want)
    finally:
        shutdown(engine.llm)
    return {"ok": after > before and equal >= 0.75 and not dropped, "accept_len_before_publish": before,
            "accept_len_after_publish": after, "greedy_equal_hf": equal, "dropped": dropped}


def _vllm_train(ctx: dict) -> dict:
    if importlib.util.find_spec("ray") is None:
        return {"not_run": "Ray is not installed"}
    run = os.path.join(ctx["dir"], "vllm_run")
    cmd = [sys.executable, "-m", "rlreason", "train", "recipe=qwen_tiny_gsm8k_format", f"model.path={ctx['path']}", "model.dtype=bfloat16",
           "rollout.engine=vllm", "cluster.placement=colocate", "cluster.gpus_per_node=1", "trainer.total_steps=3",
           "trainer.sft.steps=0", f"trainer.output_dir={run}", "trainer.progress=false"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return {"ok": proc.returncode == 0, "rc": proc.returncode, "tail": proc.stderr[-1500:] if proc.returncode else ""}


STEPS = {"model": step_model, "kernels": step_kernels, "engine": step_engine, "learner": step_learner,
         "vllm": step_vllm}


def run(plan: Plan, only: list[str]) -> dict:
    report = {"device": torch.cuda.get_device_name() if plan.device == "cuda" else "cpu", "torch": torch.__version__,
              "steps": {}}
    with tempfile.TemporaryDirectory(prefix="rlreason-smoke-") as d:
        ctx = {"dir": d}
        for name, fn in STEPS.items():
            if only and name not in only and name != "model":  # every step needs the model
                continue
            start = time.perf_counter()
            try:
                result = fn(plan, ctx)
            except Exception as e:  # a failed step is reported; the next still runs
                result = {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-3000:]}
            result["wall_s"] = round(time.perf_counter() - start, 2)
            report["steps"][name] = result
            print(f"gpu_smoke {name}: {json.dumps(result)[:400]}", file=sys.stderr, flush=True)
    ran = [r for r in report["steps"].values() if "not_run" not in r]
    report["ok"] = all(r.get("ok") for r in ran)
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu", action="store_true", help="dry run of the plumbing on CPU at toy sizes")
    ap.add_argument("--only", nargs="*", default=[], choices=list(STEPS), help="run only these steps (and model)")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--learner-child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        ap.error("no CUDA device: run on a GPU machine, or pass --cpu for a dry run of the plumbing")
    plan = CPU if args.cpu else GPU
    torch.manual_seed(0)
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON (libraries print notes)
        if args.learner_child is not None:
            result = learner_child(plan, args.model, args.learner_child)
        else:
            report = run(plan, args.only)
    if args.learner_child is not None:
        print(json.dumps(result))
        return 0
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
