"""Pass@k: the chance that at least one of ``k`` samples solves a problem.

Unbiased estimator from ``n >= k`` samples of which ``c`` are correct (Chen et al. 2021,
"Evaluating Large Language Models Trained on Code", eq. 1)::

    pass@k = 1 − C(n − c, k) / C(n, k)

i.e. one minus the chance that a random ``k``-subset of the ``n`` samples holds no correct
one. The binomials overflow for the paper's n = 64 long before the ratio does, so it is
computed as the product ``C(n−c, k)/C(n, k) = ∏_{i=n−c+1}^{n} (1 − k/i)`` (each factor in
[0, 1]), and it is exactly 1 when ``n − c < k`` (every k-subset holds a correct sample).
Averaged over problems, it is the reported Pass@k; Pass@1 is the mean accuracy ``c/n``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["pass_at_k", "pass_at_ks", "powers_of_two"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with ``c`` of ``n`` samples correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def powers_of_two(n: int) -> list[int]:
    """``[1, 2, 4, …, n]``: the k's reported for ``n`` samples (``n`` itself included)."""
    ks = [1 << i for i in range(max(n, 1).bit_length()) if 1 << i <= n]
    return ks if ks[-1] == n else ks + [n]


def pass_at_ks(correct: np.ndarray, ks: Sequence[int]) -> dict[int, np.ndarray]:
    """Per-problem pass@k for each ``k``, from a ``[P, n]`` boolean array of verdicts."""
    correct = np.asarray(correct, bool)
    n = correct.shape[1]
    counts = correct.sum(axis=1)
    return {k: np.asarray([pass_at_k(n, int(c), k) for c in counts]) for k in ks}
