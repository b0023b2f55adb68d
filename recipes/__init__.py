"""Hydra recipes (YAML). This file only makes the folder installable as ``rlreason.recipes``."""
