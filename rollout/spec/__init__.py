"""Speculative decoding for the native engine: verification maths, drafters, the adaptive K selector,
the engine layer that drives them, and online drafter training (TLT, arXiv 2511.16665)."""
