"""Faults on a real local Ray cluster: a rollout and a reward actor killed mid-run are restarted and their
work redone (the run finishes), a NaN loss skips the update on every rank and is counted, placement slots hold
the actors (and an infeasible request fails fast, naming what is missing); out-of-memory errors are
explained with their phase. The run's final checkpoint exports to a Hugging Face model that holds the
learner's live weights and generates the same tokens, and `rlreason eval` scores it."""

import json
import os
import signal
import time

import pytest
import torch

from rlreason.config import load_config

TINY = ["model.builder_kwargs.hidden_size=32", "model.builder_kwargs.num_layers=1", "model.builder_kwargs.num_heads=2",
        "model.builder_kwargs.intermediate_size=64", "data.generator_kwargs.num_train=64",
        "data.generator_kwargs.num_val=8"]


# ---- without a cluster ---------------------------------------------------------------------------

def test_out_of_memory_is_explained_with_its_phase_and_a_hint():
    import ray.exceptions

    from rlreason.faults import explain_failure
    from rlreason.tracking import PhaseTimer

    t = PhaseTimer()
    with pytest.raises(ray.exceptions.OutOfMemoryError) as info:
        with t("generate"):
            raise ray.exceptions.OutOfMemoryError("Task was killed due to the node running low on memory.")
    msg = explain_failure(info.value)
    assert "out of memory in phase 'generate'" in msg and "rollout.batch_size" in msg
    # a CUDA OOM raised inside an actor arrives wrapped in a RayTaskError
    cause = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    wrapped = ray.exceptions.RayTaskError("update", "Traceback ...", cause)
    wrapped.rlreason_phase = "update"
    assert "learner.micro_batch_size" in explain_failure(wrapped)
    assert explain_failure(ValueError("a bug")) is None


def test_placement_settings_are_checked_before_anything_starts():
    from rlreason.cluster import placement_problem

    cfg = load_config(["recipe=quickstart", "cluster.placement=split", "cluster.gpus_per_node=2",
                       "learner.world_size=2", "rollout.workers=2"])
    assert "needs 4 GPUs" in placement_problem(cfg)
    cfg.cluster.nodes = 2
    assert placement_problem(cfg) is None
    cfg.cluster.placement = "none"
    assert "placement=colocate or split" in placement_problem(cfg)


# ---- on a local cluster --------------------------------------------------------------------------

@pytest.mark.slow
def test_an_infeasible_placement_fails_within_its_timeout_naming_the_missing_resources(ray_local):
    from rlreason.cluster import build_placement

    cfg = load_config(["recipe=quickstart", "cluster.placement=split", "cluster.gpus_per_node=1", "cluster.nodes=2",
                       "cluster.init_timeout_s=3"])
    start = time.time()
    with pytest.raises(RuntimeError) as info:
        build_placement(cfg)
    assert time.time() - start < 20
    assert "GPU: needs 2" in str(info.value) and "cluster has 0" in str(info.value)


@pytest.mark.slow
def test_one_driver_can_hold_two_placements(ray_local):
    """Each placement group has a name of its own (a fixed name collided within the driver's namespace)."""
    import ray

    from rlreason.cluster import build_placement

    cfg = load_config(["recipe=quickstart", "cluster.placement=colocate", "cluster.slot_cpus=0.1"])
    first, second = build_placement(cfg), build_placement(cfg)
    try:
        names = {ray.util.placement_group_table(p.group)["name"] for p in (first, second)}
        assert len(names) == 2 and all(n.startswith("rlreason-slots-") for n in names)
    finally:
        first.remove()
        second.remove()


def _nan_batch(model_dir, nan: bool):
    from transformers import AutoTokenizer

    from rlreason.batches import sft_batch

    tok = AutoTokenizer.from_pretrained(model_dir)
    prompts = [tok.encode(f"Q: {i}+1 =\nA:", add_special_tokens=False) for i in range(6)]
    batch = sft_batch(prompts, [tok.encode(f" {i + 1}", add_special_tokens=False) for i in range(6)], tok.pad_token_id)
    batch.advantages = torch.where(torch.arange(6) % 2 == 0, 1.0, -1.0)[:, None] * batch.seqs.response_mask
    if nan:
        batch.advantages[0, 0] = float("nan")
    return batch


@pytest.mark.slow
@pytest.mark.parametrize("world,stage", [(1, 0)])  # ZeRO-3 on 2 ranks: the Trainer test below
def test_a_nan_loss_skips_the_update_on_every_rank(ray_local, tiny_model_dir, world, stage):
    import ray

    from rlreason.workers.groups import LearnerGroup

    cfg = load_config(["recipe=quickstart", f"model.path={tiny_model_dir}", f"learner.world_size={world}",
                       f"learner.zero_stage={stage}"])
    group = LearnerGroup(cfg, tiny_model_dir, threads=1)
    try:
        before = group.policy_weights()
        stats, _ = group.update(_nan_batch(tiny_model_dir, nan=True), lr=1e-2)
        assert stats.skipped and not torch.isfinite(torch.tensor(stats.loss))
        after = group.policy_weights()
        assert all(torch.equal(before[k], after[k]) for k in before)  # not a single weight moved
        stats, _ = group.update(_nan_batch(tiny_model_dir, nan=False), lr=1e-2)
        assert not stats.skipped
        assert any(not torch.equal(after[k], v) for k, v in group.policy_weights().items())
    finally:
        for a in group.actors:
            ray.kill(a)


def kill_in_flight(group) -> None:
    """Make the group's next call SIGKILL actor 0 right after handing it its request, so the request is in
    flight when the actor dies. (A kill on a timer races: an actor that is already restarting when the
    request is sent just queues it, and nothing ever fails.)"""
    import ray

    pid = ray.get(group.actors[0].__ray_call__.remote(lambda worker: os.getpid()))
    supervisor, run = group.supervisor, group.supervisor.run

    def run_once(calls):
        supervisor.run = run  # only this call: the redo goes to the restarted actor unharmed
        armed = [True]

        def wrap(fn):
            def send(actor):
                ref = fn(actor)
                if armed[0]:
                    armed[0] = False
                    os.kill(pid, signal.SIGKILL)
                return ref
            return send

        return run([(w, wrap(fn) if w == 0 else fn) for w, fn in calls])

    supervisor.run = run_once


class FaultyTrainer:
    """A Trainer that kills rollout worker 0 while step 2 generates and reward actor 0 while step 3 scores,
    and feeds step 3 a NaN advantage."""

    @staticmethod
    def make(cfg, run_dir):
        from rlreason.controller import Trainer

        class _Faulty(Trainer):
            def step(self, step):
                if step in (2, 3):  # step 2: a rollout worker while it generates; step 3: a reward actor
                    kill_in_flight(self.rollout if step == 2 else self.rewards)
                return super().step(step)

            def update(self, batch):
                if self.optimizer_steps == 2:  # the third RL step (one optimizer step each)
                    batch.advantages[0, 0] = float("nan")
                return super().update(batch)

        return _Faulty(cfg, run_dir)


@pytest.mark.slow
def test_a_rollout_worker_killed_in_a_pipelined_broadcast_run_rejoins_the_group(ray_local, tmp_path):
    """cluster.weight_sync=broadcast, trainer.mode=pipelined: rollout worker 0 dies with a request in flight;
    its restart forms the broadcast group again (rank 0 sends the versions it holds), the run ends, and
    every worker ends holding the learner's weights."""
    import ray

    from rlreason.pipeline import PipelinedTrainer
    from rlreason.tracking import read_metrics

    class Faulty(PipelinedTrainer):
        def step(self, step):
            if step == 2:
                kill_in_flight(self.rollout)
            return super().step(step)

    cfg = load_config(["recipe=quickstart", *TINY, "trainer.total_steps=4", "trainer.sft.steps=0",
                       "data.prompts_per_step=4", "rollout.n=4", "rollout.max_new_tokens=16", "rollout.workers=2",
                       "trainer.mode=pipelined", "cluster.weight_sync=broadcast", "trainer.loggers=[jsonl]"])
    trainer = Faulty(cfg, str(tmp_path / "run"))
    trainer.fit()
    for load in trainer.loads:  # the last step's load may still be queued
        load.result(timeout=120)
    rows = read_metrics(str(tmp_path / "run"))
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[-1]["faults/rollout_restarts"] == 1.0
    want = trainer.learners.policy_weights()
    for actor in trainer.rollout.actors:
        version, received, got = ray.get(actor.__ray_call__.remote(
            lambda w: (w.weights_version, w.receiver and w.receiver.versions,
                       {k: v.clone() for k, v in w.engine.model.state_dict().items()})))
        assert version == 4 and 4 in received  # the restarted worker too is in the group rank 0 sends to
        assert all(torch.equal(want[k], got[k]) for k in want)
    for actor in trainer.learners.actors + trainer.rollout.actors:
        ray.kill(actor)


@pytest.mark.slow
def test_killed_actors_are_restarted_and_the_checkpoint_exports_and_evaluates(ray_local, tmp_path):
    import ray
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlreason.export import export_checkpoint
    from rlreason.tracking import read_metrics

    cfg = load_config(["recipe=quickstart", *TINY, "trainer.total_steps=3", "trainer.sft.steps=1",
                       "data.prompts_per_step=8", "rollout.n=4", "rollout.max_new_tokens=32", "learner.lr=1e-2",
                       "learner.world_size=2", "learner.zero_stage=3", "cluster.placement=colocate",
                       "cluster.slot_cpus=0.5", "trainer.save_final=true", "trainer.loggers=[jsonl]"])
    trainer = FaultyTrainer.make(cfg, str(tmp_path / "run"))
    trainer.fit()
    rows = read_metrics(str(tmp_path / "run"))
    assert [r["step"] for r in rows] == [1, 2, 3]  # the run did not end
    assert rows[-1]["faults/rollout_restarts"] == 1.0 and rows[-1]["faults/reward_restarts"] == 1.0
    assert [r["update/skipped"] for r in rows] == [0.0, 0.0, 1.0] and rows[-1]["faults/skipped_updates"] == 1.0
    # the learners and the rollout workers sat in the placement group's slots
    pg_ids = {ray.get(a.__ray_call__.remote(lambda w: ray.util.get_current_placement_group().id.hex()))
              for a in trainer.learners.actors + trainer.rollout.actors}
    assert len(pg_ids) == 1 and None not in pg_ids

    # export: the Hugging Face model holds exactly the learner's weights and generates the same tokens
    live = trainer.learners.policy_weights()
    out = export_checkpoint(str(tmp_path / "run"), str(tmp_path / "hf"))
    assert os.path.isfile(os.path.join(out, "model.safetensors"))
    exported = AutoModelForCausalLM.from_pretrained(out)
    for k, v in exported.state_dict().items():
        assert torch.equal(v, live[k]), k
    reference = AutoModelForCausalLM.from_pretrained(str(tmp_path / "run" / "init_model"))
    reference.load_state_dict(live)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok(["Q: 3+4+5 =\nA:", "Q: 9+9+1 =\nA:"], return_tensors="pt", padding=True)
    a = exported.generate(**ids, max_new_tokens=12, do_sample=False)
    b = reference.generate(**ids, max_new_tokens=12, do_sample=False)
    assert torch.equal(a, b)
    for actor in trainer.learners.actors + trainer.rollout.actors:
        ray.kill(actor)

    # rlreason eval on the checkpoint (exported again on the way): eval.json and eval.md per data source
    from rlreason.evaluation import evaluate_checkpoint

    ckpt = tmp_path / "run" / "checkpoints" / "step_3"
    cfg = load_config(["recipe=quickstart", *TINY, "eval.k=4", "eval.max_prompts=6", "rollout.max_new_tokens=12"])
    results, out_dir = evaluate_checkpoint(cfg, str(ckpt))
    m = results["metrics"]
    assert out_dir == str(ckpt / "eval") and results["step"] == 3 and m["prompts"] == 6
    assert 0 <= m["pass@1"] <= m["pass@2"] <= m["pass@4"] <= 1 and m["mean@4"] == m["pass@1"]
    assert m["arithmetic/prompts"] == 6 and m["length"] > 0
    assert json.loads((ckpt / "eval" / "eval.json").read_text())["metrics"] == m
    assert (ckpt / "eval" / "eval.md").read_text().startswith("| source | prompts | pass@1 | pass@2 | pass@4 |")
