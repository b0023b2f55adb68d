"""Run configuration: dataclass schema, Hydra recipe composition, validation."""

from rlreason.config.compose import ConfigError, list_recipes, load_config, to_yaml
from rlreason.config.schema import RunConfig

__all__ = ["ConfigError", "RunConfig", "list_recipes", "load_config", "to_yaml"]
