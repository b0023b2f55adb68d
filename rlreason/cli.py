"""The ``rlreason`` command line: train, list (submit, eval, export and plot come with their issues)."""

from __future__ import annotations

import argparse
import sys

USAGE = """rlreason COMMAND [args]

commands:
  train recipe=NAME [key=value ...]   run a training job (local Ray cluster unless cluster.address is set)
  list                                algorithms, losses, rewards and recipes, one line each
"""


def cmd_train(args: list[str]) -> int:
    from rlreason.config import ConfigError, load_config
    from rlreason.config.validate import validate

    try:
        cfg = load_config(args)
        validate(cfg)
    except ConfigError as e:
        print(f"rlreason train: config error: {e}", file=sys.stderr)
        return 2
    from rlreason.controller import train
    from rlreason.data.dataset import DataError

    try:
        run_dir = train(cfg)
    except DataError as e:
        print(f"rlreason train: data error: {e}", file=sys.stderr)
        return 2
    print(f"run finished: {run_dir}")
    return 0


def cmd_list(args: list[str]) -> int:
    from rlreason.algorithms import ADVANTAGES, POLICY_LOSSES
    from rlreason.config import list_recipes
    from rlreason.rewards import REWARDS

    for title, registry in (("advantage estimators", ADVANTAGES), ("policy losses", POLICY_LOSSES),
                            ("rewards", REWARDS)):
        print(f"{title}  [{registry.signature}]")
        for e in registry.entries():
            print(f"  {e.name:<24} {e.summary}")
    print("recipes  [rlreason train recipe=NAME]")
    for name, header in list_recipes().items():
        print(f"  {name:<24} {header}")
    return 0


COMMANDS = {"train": cmd_train, "list": cmd_list}


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
    return COMMANDS[command](rest)


if __name__ == "__main__":
    raise SystemExit(main())
