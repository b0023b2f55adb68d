"""The ``rlreason`` command line: train, submit/jobs/logs/stop, eval, export, plot, list."""

from __future__ import annotations

import argparse
import sys
import textwrap

USAGE = """rlreason COMMAND [args]

commands:
  train recipe=NAME [key=value ...]      run a training job (local Ray cluster unless cluster.address is set)
  submit --address URL [--no-wait] [--runtime-env FILE] recipe=NAME [key=value ...]
                                         run the same job on a Ray cluster (Ray Jobs API); prints the job id
  jobs [--address URL]                   jobs on the cluster
  logs JOB [--follow] [--address URL]    a job's output
  stop JOB [--address URL]               stop a job
  eval recipe=NAME checkpoint=DIR [key=value ...]
                                         pass@k, maj@k, mean@k per data source -> DIR/eval/eval.json, eval.md
  export CHECKPOINT OUT                  a Hugging Face model dir (safetensors, config, tokenizer)
  plot RUN_DIR [RUN_DIR ...] [-o FILE]   reward, accuracy, length, KL, entropy, speed, phase times
  list                                   algorithms, losses, rewards, samplers, recipes, one line each
"""


CONFIG_HELP = """Every key=value is a Hydra override of one config key. Defaults live in one place,
rlreason/config/schema.py (one dataclass per section, a docstring under every field; rollout.spec's
in spec_schema.py beside it); a recipe
(recipes/NAME.yaml, or a file of yours, which may start `defaults: [quickstart, _self_]`) overrides
some of them. `rlreason list` names the recipes, algorithms and rewards.

config sections:
  model      the policy: model.path (local dir or hub id) or model.builder; dtype
  data       data.train / data.val (files, dirs or hub datasets), prompt_key, answer_key, chat_template
  rollout    rollout.n samples per prompt, temperature, top_p, max_new_tokens, engine, spec (speculative)
  reward     reward.functions (registry name, module:function, file.py:function, URL), timeout_s, on_error
  algorithm  advantage, loss, kl_coef, kl_estimator, agg_mode
  sampling   prompt sampler (GDRO), dynamic sampling, DOT, token_budget
  learner    DeepSpeed learners: world_size, zero_stage, lr, micro_batch_size, updates_per_step, epochs
  trainer    total_steps, seed, output_dir, save_every, save_final, resume, eval_every, sft (warm-up), loggers,
             mode (sync | pipelined: generation overlaps training), max_staleness
  cluster    Ray: address, num_cpus, placement, gpus_per_node
  eval       what `rlreason eval` measures: k, temperature, max_new_tokens, max_prompts
"""

HELP = {
    "train": """usage: rlreason train recipe=NAME|path/to/recipe.yaml [key=value ...]

Trains on a local Ray cluster (or the one at cluster.address). The run directory (trainer.output_dir,
default runs/RECIPE-TIME) gets config.yaml, metrics.jsonl, samples.jsonl and checkpoints/step_N/.

""" + CONFIG_HELP + """
examples:
  rlreason train recipe=quickstart
  rlreason train recipe=quickstart trainer.total_steps=5 rollout.temperature=0.8 trainer.output_dir=runs/a
  rlreason train recipe=quickstart trainer.output_dir=runs/a trainer.resume=auto   # continue a stopped run
""",
    "eval": """usage: rlreason eval recipe=NAME checkpoint=DIR [key=value ...]

pass@k, maj@k and mean@k per data source on the recipe's validation set (data.val, or eval.data).
DIR is a checkpoints/step_N dir, a run dir (its latest checkpoint) or a Hugging Face model dir.
Results: DIR/eval/eval.json and eval.md (or eval.output_dir).

""" + CONFIG_HELP + """
example:
  rlreason eval recipe=quickstart checkpoint=runs/quickstart eval.k=8
""",
}


def _wants_help(args: list[str]) -> bool:
    return any(a in ("-h", "--help", "help") for a in args)


def _config(args: list[str]):
    """Compose and validate; a ConfigError is printed and becomes exit code 2."""
    from rlreason.config import load_config
    from rlreason.config.validate import validate

    cfg = load_config(args)
    validate(cfg)
    return cfg


def cmd_train(args: list[str]) -> int:
    from rlreason.cluster import stop_ray
    from rlreason.modes import train
    from rlreason.tracking import default_run_dir

    if _wants_help(args):
        print(HELP["train"])
        return 0
    cfg = _config(args)
    run_dir = default_run_dir(cfg.recipe, cfg.trainer.output_dir)
    again = [a for a in args if not a.startswith(("trainer.output_dir=", "trainer.resume="))]
    resume = (f"The run is in {run_dir}; continue it from its last checkpoint with:\n"
              f"  rlreason train {' '.join(again)} trainer.output_dir={run_dir} trainer.resume=auto")
    try:
        print(f"run finished: {train(cfg, run_dir)}")
    except KeyboardInterrupt:
        stop_ray()  # the local cluster's processes go with it
        print(f"\nrlreason train: interrupted. {resume}", file=sys.stderr)
        return 130
    except Exception as e:
        from rlreason.faults import dead_actor

        died = dead_actor(e)
        if died is None:
            raise
        stop_ray()
        print(f"rlreason train: {died}. {resume}", file=sys.stderr)
        return 1
    return 0


def cmd_eval(args: list[str]) -> int:
    from rlreason.evaluation import evaluate_checkpoint, format_table

    if _wants_help(args):
        print(HELP["eval"])
        return 0
    checkpoints = [a.split("=", 1)[1] for a in args if a.startswith("checkpoint=")]
    if len(checkpoints) != 1:
        print("rlreason eval: give checkpoint=DIR (a step_N checkpoint, a run dir, or a Hugging Face model dir)",
              file=sys.stderr)
        return 2
    cfg = _config([a for a in args if not a.startswith("checkpoint=")])
    results, out_dir = evaluate_checkpoint(cfg, checkpoints[0])
    print(format_table(results["metrics"], results["k"]))
    print(f"wrote {out_dir}/eval.json and eval.md")
    return 0


def cmd_export(args: list[str]) -> int:
    from rlreason.export import export_checkpoint

    p = argparse.ArgumentParser(prog="rlreason export", description="Checkpoint -> Hugging Face model dir.")
    p.add_argument("checkpoint", help="a step_N checkpoint, a checkpoints/ dir or a run dir (latest)")
    p.add_argument("out", help="output directory")
    a = p.parse_args(args)
    print(f"exported {export_checkpoint(a.checkpoint, a.out)}")
    return 0


def cmd_plot(args: list[str]) -> int:
    from rlreason.plot import plot_runs

    p = argparse.ArgumentParser(prog="rlreason plot", description="Curves of one or more runs, overlaid.")
    p.add_argument("runs", nargs="+", help="run directories (with metrics.jsonl)")
    p.add_argument("-o", "--out", default="rlreason.png", help="image file (.png, .pdf, .svg)")
    p.add_argument("--names", nargs="*", help="legend names, one per run")
    a = p.parse_args(args)
    print(f"wrote {plot_runs(a.runs, a.out, a.names)}")
    return 0


def cmd_list(args: list[str]) -> int:
    from rlreason.algorithms import ADVANTAGES, POLICY_LOSSES
    from rlreason.algorithms.aggregation import AGG_MODES
    from rlreason.algorithms.kl import KL_ESTIMATORS
    from rlreason.config import list_recipes
    from rlreason.rewards import REWARDS

    registries = [("advantage estimators", ADVANTAGES), ("policy losses", POLICY_LOSSES), ("rewards", REWARDS)]
    samplers = _samplers()
    if samplers is not None:
        registries.append(("prompt samplers", samplers))
    for title, registry in registries:
        print(f"{title}  [{registry.signature}]")
        for e in registry.entries():
            print(f"  {e.name:<24} {e.summary}")
    if samplers is None:
        from rlreason.data.sampler import PromptSampler
        from rlreason.registry import first_line

        print("prompt samplers  [data.shuffle]")
        print(f"  {'uniform':<24} {first_line(PromptSampler.__doc__) or first_line(sys.modules[PromptSampler.__module__].__doc__)}")
    print(f"KL estimators  [algorithm.kl_estimator]\n  {', '.join(KL_ESTIMATORS)}")
    print(f"loss aggregation  [algorithm.agg_mode]\n  {', '.join(AGG_MODES)}")
    print("recipes  [rlreason train recipe=NAME]")
    recipes = list_recipes()
    width = max(len(name) for name in recipes) + 3
    for name, summary in recipes.items():  # whole sentences, wrapped under the name's column
        print(textwrap.fill(summary, 110, initial_indent=f"  {name:<{width - 2}}", subsequent_indent=" " * width,
                            break_on_hyphens=False))
    return 0


def _samplers():
    """The prompt-sampler registry once one exists (rlreason.data.sampler.SAMPLERS), else None."""
    from rlreason.data import sampler

    return getattr(sampler, "SAMPLERS", None)


def _jobs(name: str):
    def run(args: list[str]) -> int:
        from rlreason import jobs

        return getattr(jobs, name)(args)

    return run


COMMANDS = {"train": cmd_train, "submit": _jobs("submit"), "jobs": _jobs("list_jobs"), "logs": _jobs("logs"),
            "stop": _jobs("stop"), "eval": cmd_eval, "export": cmd_export, "plot": cmd_plot, "list": cmd_list}


def _quiet_libraries() -> None:
    """Keep library notices that are not the user's concern out of a run's output."""
    import os

    import torch

    if not torch.cuda.is_available():  # DeepSpeed otherwise warns on import that it found no GPU
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def run_command(command: str, rest: list[str]) -> int:
    """Run one command; known failures become one clear message and an exit code, not a traceback."""
    from rlreason.checkpoint import CheckpointError
    from rlreason.config import ConfigError
    from rlreason.data.dataset import DataError
    from rlreason.faults import RunStopped

    if command in ("train", "eval", "export"):
        _quiet_libraries()
    try:
        return COMMANDS[command](rest)
    except ConfigError as e:
        print(f"rlreason {command}: config error: {e}", file=sys.stderr)
        return 2
    except DataError as e:
        print(f"rlreason {command}: data error: {e}", file=sys.stderr)
        return 2
    except CheckpointError as e:
        print(f"rlreason {command}: checkpoint error: {e}", file=sys.stderr)
        return 2
    except RunStopped as e:
        print(f"rlreason {command}: run stopped: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        from rlreason.faults import explain_failure
        from rlreason.jobs import JobError

        message = str(e) if isinstance(e, JobError) else explain_failure(e)
        if message is None:
            raise
        print(f"rlreason {command}: {message}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(command, list(COMMANDS), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        print(f"rlreason: unknown command '{command}'.{hint}\n\n{USAGE}", file=sys.stderr)
        return 2
    return run_command(command, rest)


if __name__ == "__main__":
    raise SystemExit(main())
