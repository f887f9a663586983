"""Sampling: jitted prefill/decode over a persistent KV cache, forking, stop strings."""

from rlpt_jax.sampling.engine import TRACE_COUNTS
from rlpt_jax.sampling.sample import SamplingParams
from rlpt_jax.sampling.sampler import (
    FINISH_REASONS,
    Sample,
    Sampler,
    SamplerConfig,
    SamplerError,
    Session,
    to_sampler_layout,
)

__all__ = [
    "FINISH_REASONS",
    "TRACE_COUNTS",
    "Sample",
    "Sampler",
    "SamplerConfig",
    "SamplerError",
    "SamplingParams",
    "Session",
    "to_sampler_layout",
]
