"""Synthetic tasks with known structure, for tests, benchmarks and demos (built in code, no files).

Head inputs h come from a few clusters; errors e = softmax(z) − onehot(y) put their mass on a
cluster-specific set of tokens. When ``coupled`` the token set follows h's cluster (F ≠ A⊗G,
δ far from 0); otherwise it is drawn independently of h (F = A⊗G in population, δ = 0).
"""
from __future__ import annotations

import numpy as np

CLUSTERS = 6
TOKENS_PER_CLUSTER = 8


def make_task(seed: int, n: int = 1000, d: int = 16, K: int = 200, coupled: bool = True,
              shift: float = 0.0, vocab_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return (h, e): (n, d) and (n, K) float64 arrays of one synthetic task."""
    rng = np.random.default_rng(seed)
    shared = np.random.default_rng(vocab_seed)  # tasks with the same vocab_seed share clusters/tokens
    centers = shared.normal(size=(CLUSTERS, d))
    token_groups = shared.permutation(K)[: CLUSTERS * TOKENS_PER_CLUSTER].reshape(CLUSTERS, TOKENS_PER_CLUSTER)
    cluster = rng.integers(0, CLUSTERS, n)
    h = centers[cluster] + 0.5 * rng.normal(size=(n, d)) + shift
    token_cluster = cluster if coupled else rng.integers(0, CLUSTERS, n)
    logits = 0.5 * rng.normal(size=(n, K))
    logits[np.arange(n)[:, None], token_groups[token_cluster]] += 3.0
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = token_groups[token_cluster, rng.integers(0, TOKENS_PER_CLUSTER, n)]
    e = p.copy()
    e[np.arange(n), y] -= 1.0
    return h, e
