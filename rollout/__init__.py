"""Rollout engines (installed as ``rlreason.rollout``): the native PyTorch engine; vLLM on GPU."""

if __name__ == "rollout":  # imported by its bare name from the repository root: not ours to answer
    from rlreason.toplevel_guard import step_aside

    step_aside(__name__, __file__)
