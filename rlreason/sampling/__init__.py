"""Prompt sampling and batch shaping on the driver (the registry itself is ``rlreason.data.sampler.SAMPLERS``).

``base`` (the sampler protocol and the step's ``Groups``), ``dynamic`` (DAPO and predictive dynamic
sampling), ``classifier`` + ``gdro`` + ``gdro_samplers`` (Prompt-GDRO, Rollout-GDRO), ``dot`` (dynamic
outlier truncation), ``budget`` (C3PO token budget). The maths imports only torch.
"""
