"""Metrics as small pure functions on arrays: one value per particle (row), vectorised.

Shapes: ``P`` particles (rows of W), ``n`` examples, ``C`` choices. Every function here is
free of models so it can be tested by hand.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

LN2 = math.log(2.0)

# Two choice scores closer than this count as a tie. Per-byte normalisation divides sums of
# float32-derived log-probabilities, so exact float equality would be too brittle.
TIE_ATOL = 1e-9


def choice_credit(scores: np.ndarray, answer: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Credit for picking the best-scoring choice: 1 if the gold choice is the unique maximum,
    1/k if it is one of k tied maxima (the expected accuracy of a random tie-break), else 0.

    ``scores``: [P, n, C] (or [n, C]); ``answer``: [n] gold index; ``valid``: [n, C] mask for
    questions with fewer than C options (invalid entries never win). Returns [P, n] (or [n]).
    Splitting ties keeps results independent of choice order, unlike ``argmax`` which always
    favours option A when every option scores the same (an untrained model).
    """
    s = np.asarray(scores, dtype=np.float64)
    squeeze = s.ndim == 2
    if squeeze:
        s = s[None]
    if valid is not None:
        s = np.where(np.asarray(valid, bool)[None], s, -np.inf)
    best = s.max(axis=-1, keepdims=True)
    tied = s >= best - TIE_ATOL
    n_tied = tied.sum(axis=-1)
    idx = np.asarray(answer, dtype=np.int64)
    gold_tied = np.take_along_axis(tied, np.broadcast_to(idx[None, :, None], tied.shape[:2] + (1,)), -1)[..., 0]
    out = np.where(gold_tied, 1.0 / np.maximum(n_tied, 1), 0.0)
    # A question whose every option is -inf (impossible under every expert) earns nothing.
    out = np.where(np.isfinite(best[..., 0]), out, 0.0)
    return out[0] if squeeze else out


def effective_reliability(correct: np.ndarray, abstain: np.ndarray) -> np.ndarray:
    """AbstainQA's effective reliability: (answered correct − answered wrong) / N, per row.

    ``correct`` and ``abstain``: [P, n] booleans. Ranges from −1 (always answers, always wrong)
    to 1; abstaining on everything gives 0. Empty input gives 0.
    """
    c = np.asarray(correct, bool)
    a = np.asarray(abstain, bool)
    n = c.shape[-1]
    if n == 0:
        return np.zeros(c.shape[:-1])
    answered = ~a
    return ((answered & c).sum(-1) - (answered & ~c).sum(-1)) / n


def harmonic_mean(parts: np.ndarray) -> np.ndarray:
    """Harmonic mean over the last axis ([P, K] -> [P]); 0 where any part is 0.

    Utilities must be non-negative: the harmonic mean of signed numbers has no meaning, so a
    negative part raises ``ValueError`` (use the weighted mean for signed utilities). The paper
    replaces an all-zero pair by 0.01 before averaging; we return 0 there, which ranks the same.
    """
    x = np.asarray(parts, dtype=np.float64)
    if np.any(x < 0):
        raise ValueError(
            "harmonic mean needs non-negative part utilities; use aggregate: mean for signed ones"
        )
    k = x.shape[-1]
    with np.errstate(divide="ignore"):
        inv = np.where(x > 0, 1.0 / np.where(x > 0, x, 1.0), np.inf)
    out = k / inv.sum(-1)
    return np.where(np.isfinite(out), out, 0.0)


def weighted_mean(parts: np.ndarray, weights: Sequence[float] | None = None) -> np.ndarray:
    """Weighted mean over the last axis ([P, K] -> [P]); equal weights when ``weights`` is None."""
    x = np.asarray(parts, dtype=np.float64)
    w = np.ones(x.shape[-1]) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (x.shape[-1],) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be {x.shape[-1]} non-negative numbers with a positive sum")
    return x @ (w / w.sum())


def bits_per_byte(logprob_nats: np.ndarray, num_bytes: np.ndarray) -> np.ndarray:
    """Corpus bits per byte: −Σ log p / (ln 2 · Σ bytes), summed over the last axis.

    Bytes, not tokens, are the denominator so that experts with different tokenizers (and mixtures
    over them) are comparable. ``logprob_nats``: [P, n]; ``num_bytes``: [n]. Returns [P].
    """
    lp = np.asarray(logprob_nats, dtype=np.float64)
    total = float(np.sum(num_bytes))
    if total <= 0:
        raise ValueError("bits per byte needs at least one byte of target text")
    return -lp.sum(-1) / (LN2 * total)


def minmax_normalise(x: np.ndarray, low: float, high: float, clip: bool = True) -> np.ndarray:
    """(x − low) / (high − low), clipped to [0, 1] by default (the paper's reward-model rule)."""
    if not high > low:
        raise ValueError(f"min-max normalisation needs high > low, got low={low}, high={high}")
    y = (np.asarray(x, dtype=np.float64) - low) / (high - low)
    return np.clip(y, 0.0, 1.0) if clip else y
