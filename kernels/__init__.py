"""Log-prob and entropy kernels (installed as ``rlreason.kernels``)."""
