"""The mixing rules (DESIGN.md §3), as small pure functions on tensors.

Shapes: ``logp`` is ``[N, R, U]`` (experts × rows × units) of normalised log-probabilities;
``weights`` is ``[R, N]`` (one weight vector per row). Inputs are never modified.

* mode ``"probs"``: p(u) = Σ_i w̃_i p_i(u), w̃ = max(w, 0) / Σ max(w, 0). A row whose weights are
  all ≤ 0 is an error, never a silent uniform.
* mode ``"logits"``: log p(u) = Σ_i w_i log p_i(u) − log Z, any real w (negative = anti-expert).
  Log-probabilities are floored at :data:`LOGP_FLOOR` first, because at byte level some units have
  probability exactly 0 and ``w · (−inf)`` is undefined for w ≤ 0. The floor is part of the
  definition (the float64 reference applies it too); it only affects units some expert rules out.
"""

from __future__ import annotations

import numpy as np
import torch

MODES = ("probs", "logits")
LOGP_FLOOR = -50.0  # nats; e^-50 ≈ 2e-22


def check_mode(mode: str) -> str:
    """Return ``mode`` if it is a known mixing mode, else raise a ValueError naming the choices."""
    if mode not in MODES:
        raise ValueError(f"unknown mixing mode {mode!r}; use one of {', '.join(MODES)}")
    return mode


def as_weight_matrix(weights, n_experts: int, n_rows: int | None = None, mode: str = "probs") -> np.ndarray:
    """Validate weights and return a float64 matrix ``[rows, n_experts]``.

    Args:
        weights: one vector of length ``n_experts`` (broadcast to every row) or a matrix
            ``[n_rows, n_experts]`` (one vector per row).
        n_experts: number of experts.
        n_rows: number of rows the weights must cover (None: one vector, returned as [1, N]).
        mode: mixing mode, for the "all weights ≤ 0" check in "probs".
    """
    check_mode(mode)
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim == 1:
        if w.shape[0] != n_experts:
            raise ValueError(f"got {w.shape[0]} weights for {n_experts} experts; give one weight per expert")
        w = np.broadcast_to(w, (n_rows or 1, n_experts)).copy()
    elif w.ndim == 2:
        if w.shape[1] != n_experts:
            raise ValueError(
                f"weight matrix has {w.shape[1]} columns for {n_experts} experts; give one column per expert"
            )
        if n_rows is not None and w.shape[0] != n_rows:
            raise ValueError(f"weight matrix has {w.shape[0]} rows for {n_rows} prompts; give one row per prompt")
    else:
        raise ValueError(f"weights must be a vector or a matrix, got shape {w.shape}")
    if not np.isfinite(w).all():
        raise ValueError("weights contain NaN or inf; give finite numbers")
    if mode == "probs":
        bad = np.where((w > 0).sum(axis=1) == 0)[0]
        if len(bad):
            raise ValueError(
                f"in mode 'probs' every weight vector needs at least one positive weight (row {int(bad[0])} "
                "has none); negative weights only make sense in mode 'logits'"
            )
    return w


def normalised_probs_weights(w: np.ndarray) -> np.ndarray:
    """w̃ = max(w, 0) / Σ max(w, 0), row-wise (rows must have a positive entry)."""
    c = np.clip(np.asarray(w, dtype=np.float64), 0.0, None)
    c = c / c.max(axis=-1, keepdims=True)  # scale first: a sum of huge weights would overflow
    return c / c.sum(axis=-1, keepdims=True)


def mix_logprobs(logp: torch.Tensor, weights: torch.Tensor | np.ndarray, mode: str) -> torch.Tensor:
    """Mix per-expert log-distributions ``[N, R, U]`` with per-row weights ``[R, N]``.

    Returns normalised log-probabilities ``[R, U]`` in the dtype of ``logp``.
    """
    check_mode(mode)
    w = torch.as_tensor(np.asarray(weights, dtype=np.float64), dtype=logp.dtype, device=logp.device)
    if mode == "probs":
        wt = torch.as_tensor(normalised_probs_weights(np.asarray(weights)), dtype=logp.dtype, device=logp.device)
        # log Σ_i w̃_i exp(lp_i), shifted by the per-unit max over experts so nothing underflows.
        # One exp pass and a weighted sum: ~3x faster than logsumexp over [N, R, U], which
        # materialises log w̃ + lp first. A mixture of normalised distributions is normalised: no
        # second pass needed. (An expert with no mass at all, a dead byte-level state, is handled
        # by the byte tracker.) Units that every expert rules out (-inf) stay -inf.
        m = logp.amax(dim=0)  # [R, U]
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        mixed = torch.einsum("rn,nru->ru", wt, (logp - m).exp())
        return m + torch.log(mixed)
    lp = logp.clamp(min=LOGP_FLOOR)
    s = (w.T[:, :, None] * lp).sum(dim=0)
    return torch.log_softmax(s, dim=-1)


def greedy_probs(logp: torch.Tensor, weights) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy pick under mode "probs" without the whole mixed distribution.

    Returns (argmax of Σ_i w̃_i p_i per row, log of that mixture probability), for ``logp``
    ``[N, R, U]`` and per-row weights ``[R, N]``. The argmax needs no log and no shift (the top
    mixture probability is at least 1/U, far from underflow); ties go to the lowest id, as in
    :func:`sample_units`.
    """
    wt = torch.as_tensor(normalised_probs_weights(np.asarray(weights)), dtype=logp.dtype, device=logp.device)
    probs = torch.einsum("rn,nru->ru", wt, logp.exp())
    top, picks = probs.max(dim=-1)
    return picks, torch.log(top)


def mix_reference(logp: np.ndarray, w: np.ndarray, mode: str) -> np.ndarray:
    """Plain-loop float64 reference of :func:`mix_logprobs` for one row: logp [N, U], w [N]."""
    logp = np.asarray(logp, dtype=np.float64)
    n, u = logp.shape
    out = np.empty(u)
    if mode == "probs":
        wt = normalised_probs_weights(w)
        for k in range(u):
            out[k] = sum(wt[i] * np.exp(logp[i, k]) for i in range(n))
        with np.errstate(divide="ignore"):
            return np.log(out / out.sum())
    for k in range(u):
        out[k] = sum(w[i] * max(logp[i, k], LOGP_FLOOR) for i in range(n))
    m = out.max()
    return out - (m + np.log(np.exp(out - m).sum()))


def sample_units(logp: torch.Tensor, temperature: float, top_p: float, uniforms: np.ndarray | None) -> torch.Tensor:
    """Pick one unit per row from log-probabilities ``[R, U]``.

    temperature 0 → argmax (ties go to the lowest id). Otherwise inverse-CDF sampling from the
    tempered, top-p-truncated distribution with one uniform number per row (``uniforms``), so
    each row's draw depends only on its own random stream.
    """
    if temperature == 0:
        return logp.argmax(dim=-1)
    lp = logp.double()
    # Shift by the row max before tempering: a tiny temperature would otherwise turn every
    # value into -inf (and the softmax into NaN) instead of approaching greedy.
    lp = (lp - lp.max(dim=-1, keepdim=True).values) / temperature
    probs = torch.softmax(lp, dim=-1)
    if top_p < 1.0:
        sp, idx = probs.sort(dim=-1, descending=True)
        keep = (sp.cumsum(-1) - sp) < top_p  # always keeps the first
        sp = sp * keep
        probs = torch.zeros_like(probs).scatter_(1, idx, sp)
    probs = probs / probs.sum(-1, keepdim=True)
    cdf = probs.cumsum(-1)
    u = torch.as_tensor(uniforms, dtype=cdf.dtype, device=cdf.device)[:, None] * cdf[:, -1:]
    choice = torch.searchsorted(cdf, u, right=True).squeeze(1)  # first unit with cdf > u
    # Never pick a zero-probability unit at the top end because of rounding.
    return choice.clamp(max=probs.shape[1] - 1)
