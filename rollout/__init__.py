"""Rollout engines (installed as ``rlreason.rollout``): the native PyTorch engine; vLLM on GPU."""
