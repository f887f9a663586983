"""rlpt_jax: RLPT and AT²PO on language models in JAX/Flax NNX."""
