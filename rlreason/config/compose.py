"""Compose a run config: Hydra recipe (recipes/NAME.yaml) + command-line overrides -> RunConfig.

Hydra composes the recipe (its ``defaults`` list may name other recipes) and parses overrides
with its grammar; the dataclass schema supplies every default. Unknown keys fail here, naming
the key, where it came from and the closest valid keys — before anything heavy is imported.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import os
import typing
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rlreason.config.schema import RunConfig


class ConfigError(ValueError):
    """A recipe or override that cannot make a valid run; the message says what would."""


def recipes_dir() -> Path:
    spec = importlib.util.find_spec("rlreason.recipes")
    return Path(list(spec.submodule_search_locations)[0])


def list_recipes() -> dict[str, str]:
    """Built-in recipe names -> the first sentence of their header comment."""
    return {path.stem: recipe_summary(path.read_text()) for path in sorted(recipes_dir().glob("*.yaml"))}


# A period that ends these words ends no sentence.
_ABBREVIATIONS = ("Dr.", "al.", "e.g.", "i.e.", "vs.", "App.", "Fig.", "Eq.", "cf.")


def recipe_summary(text: str) -> str:
    """The first sentence of a recipe's opening comment (which may span lines, up to 'Launch:')."""
    words: list[str] = []
    for line in text.lstrip().splitlines():
        body = line.strip()
        if not body.startswith("#"):
            break
        body = body.lstrip("#").strip()
        if not body or body.startswith("Launch:"):
            break
        words += body.split()
    for i, word in enumerate(words):
        last = i == len(words) - 1
        if word.endswith((".", "!", "?")) and not word.endswith(_ABBREVIATIONS) and (last or words[i + 1][:1].isupper()):
            return " ".join(words[:i + 1])
    return " ".join(words)


def load_config(args: list[str]) -> RunConfig:
    """Build a RunConfig from ``["recipe=NAME", "key=value", ...]``."""
    recipe, overrides = _split_recipe(args)
    recipe_cfg, source = _compose_recipe(recipe)
    _check_keys(OmegaConf.to_container(recipe_cfg, resolve=False), RunConfig, "", source)
    cfg = OmegaConf.structured(RunConfig)
    try:
        cfg = OmegaConf.merge(cfg, recipe_cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{source}: {_omegaconf_message(e)}") from None
    for key, value in _parse_overrides(overrides):
        _check_key_path(key, "command line")
        try:
            OmegaConf.update(cfg, key, value, merge=True, force_add=_is_free_dict(key))
        except OmegaConfBaseException as e:
            raise ConfigError(f"override '{key}={value}': {_omegaconf_message(e)}") from None
    cfg.recipe = recipe
    try:
        run = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(_omegaconf_message(e)) from None
    _absolute_reward_files(run)
    return run


def _absolute_reward_files(cfg: RunConfig) -> None:
    """'file.py:fn' rewards run in other processes (and on other nodes): pin them to absolute paths."""
    for f in cfg.reward.functions:
        target, sep, attr = f.name.rpartition(":")
        if sep and target.endswith(".py"):
            f.name = f"{os.path.abspath(target)}:{attr}"


def to_yaml(cfg: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def _split_recipe(args: list[str]) -> tuple[str, list[str]]:
    recipes = [a.split("=", 1)[1] for a in args if a.startswith("recipe=")]
    if len(recipes) != 1:
        names = ", ".join(list_recipes())
        raise ConfigError(f"give exactly one recipe=NAME (built-in recipes: {names}; or recipe=path/to/file.yaml)")
    return recipes[0], [a for a in args if not a.startswith("recipe=")]


def _compose_recipe(recipe: str) -> tuple[DictConfig, str]:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if recipe.endswith((".yaml", ".yml")):
        path = Path(recipe).resolve()
        if not path.is_file():
            raise ConfigError(f"recipe file '{recipe}' does not exist (looked at {path})")
        config_dir, name = path.parent, path.stem
    else:
        config_dir, name = recipes_dir(), recipe
        if not (config_dir / f"{name}.yaml").is_file():
            known = list(list_recipes())
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.4)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown recipe '{name}'.{hint} Recipes: {', '.join(known)} "
                              f"(or recipe=path/to/file.yaml)")
    # A recipe file of the user's may extend a built-in one (`defaults: [quickstart, _self_]`): the
    # built-in recipes are searched after the file's own directory.
    search = [f"hydra.searchpath=[file://{recipes_dir()}]"] if config_dir != recipes_dir() else []
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base=None, config_dir=str(config_dir)):
            cfg = compose(config_name=name, overrides=search)
    except Exception as e:  # hydra raises several types; all mean "this recipe does not compose"
        raise ConfigError(f"recipe '{recipe}' does not compose: {e}") from None
    finally:
        GlobalHydra.instance().clear()
    return cfg, str(config_dir / f"{name}.yaml")


def _parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    out = []
    for text in overrides:
        try:
            (ov,) = parser.parse_overrides([text])
        except Exception as e:
            raise ConfigError(f"cannot parse override '{text}': {e}. Use key=value, e.g. rollout.n=8") from None
        if ov.is_sweep_override():
            raise ConfigError(f"override '{text}' is a sweep; rlreason train runs one config at a time")
        if ov.is_delete():
            raise ConfigError(f"override '{text}' deletes a key; set it to null instead")
        out.append((ov.key_or_group, ov.value()))
    return out


# ---- unknown-key detection against the dataclass schema ------------------------------------

def _fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unwrap(tp: Any) -> Any:
    """Optional[X] -> X."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) is typing.Union and len(args) == 1 else tp


def _check_keys(node: Any, cls: type, prefix: str, source: str) -> None:
    """Walk a recipe mapping and fail on the first key the schema does not have."""
    if not isinstance(node, dict):
        return
    fields = _fields(cls)
    for key, value in node.items():
        if key == "defaults" and not prefix:
            continue
        path = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(_unknown_key_message(path, list(fields), prefix, source))
        tp = _unwrap(fields[key])
        if dataclasses.is_dataclass(tp):
            _check_keys(value, tp, path + ".", source)
        elif typing.get_origin(tp) is list and isinstance(value, list):
            (item,) = typing.get_args(tp)
            if dataclasses.is_dataclass(item):
                for i, v in enumerate(value):
                    _check_keys(v, item, f"{path}[{i}].", source)


def _check_key_path(path: str, source: str) -> None:
    cls: Any = RunConfig
    parts = path.split(".")
    for i, part in enumerate(parts):
        fields = _fields(cls)
        prefix = ".".join(parts[:i]) + ("." if i else "")
        if part not in fields:
            raise ConfigError(_unknown_key_message(path, list(fields), prefix, source))
        tp = _unwrap(fields[part])
        if not dataclasses.is_dataclass(tp):
            return  # a leaf, a free dict (kwargs) or a list: OmegaConf checks the value's type
        cls = tp


def _is_free_dict(path: str) -> bool:
    """True when ``path`` goes inside a dict[str, Any] field (e.g. algorithm.loss_kwargs.clip_high)."""
    cls: Any = RunConfig
    for part in path.split("."):
        if not dataclasses.is_dataclass(cls):
            return True
        fields = _fields(cls)
        if part not in fields:
            return False
        tp = _unwrap(fields[part])
        if typing.get_origin(tp) is dict:
            return True
        cls = tp
    return False


def _unknown_key_message(path: str, valid: list[str], prefix: str, source: str) -> str:
    leaf = path[len(prefix):].split(".")[0]
    close = difflib.get_close_matches(leaf, valid, n=3, cutoff=0.5)
    # also look one level over: a key placed in the wrong section (rollout.lr -> learner.lr)
    if not close and prefix:
        everywhere = [f"{s}.{k}" for s, tp in _fields(RunConfig).items()
                      if dataclasses.is_dataclass(_unwrap(tp)) for k in _fields(_unwrap(tp))]
        close = [c for c in everywhere if c.endswith("." + leaf)][:3]
    else:
        close = [prefix + c for c in close]
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    section = prefix.rstrip(".") or "the top level"
    return (f"unknown config key '{path}' (from {source}).{hint} "
            f"Valid keys of {section}: {', '.join(valid)}")


def _omegaconf_message(e: OmegaConfBaseException) -> str:
    msg = str(e).split("\n")[0]
    key = getattr(e, "full_key", None)
    return f"{key}: {msg}" if key and key not in msg else msg


def describe_schema(cls: type = RunConfig, prefix: str = "") -> list[str]:
    """Every leaf key of the schema with its default (for docs and `rlreason list`)."""
    out = []
    inst = cls()
    for name, tp in _fields(cls).items():
        tp = _unwrap(tp)
        if dataclasses.is_dataclass(tp):
            out += describe_schema(tp, f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}={getattr(inst, name)!r}")
    return out

