"""From top-k log-probabilities to a full next-token distribution (the leftover-mass rule).

Remote endpoints and vLLM return, for one position, the log-probabilities of a few tokens only:
the k most probable, sometimes one more (the sampled or the teacher-forced token, "k+1"),
sometimes fewer (a server that caps k, post-sampling lists). The engine mixes full distributions
over the vocabulary, so the missing part has to be filled in. The rule, stated once and used by
every such expert (:class:`~logit_swarm.experts.remote.RemoteExpert`,
:class:`~logit_swarm.experts.vllm.VLLMExpert`):

1. An entry whose log-probability is NaN, ``-inf`` or at most :data:`SENTINEL` (-9999, the value
   OpenAI and vLLM put where there is no usable number) is treated as *not listed*.
2. Entries for ids outside ``[0, vocab_size)`` (padded embedding rows of the model) are dropped
   and their probability is removed from the total, as a local expert masks those logits and
   renormalises over real tokens.
3. An id listed twice (the k+1 entry repeating a top-k one) keeps its largest value.
4. The leftover mass ``r = max(0, total - Σ listed)`` is **spread uniformly over the tokens not
   listed** (``total`` = 1 minus the dropped mass of rule 2). If every token is listed (k covers
   the vocabulary) nothing is spread.
5. The result is renormalised to sum to 1 (this only removes the float rounding of the server's
   values when k covers the vocabulary).

So with k covering the vocabulary the distribution is the model's own, exactly (up to the float
rounding of what was sent); with smaller k, the listed tokens keep their true probabilities and
each unlisted one gets the average of what is left. Uniform spreading is the maximum-entropy
choice given only the remaining total; it never gives an unlisted token more than a listed one
when the listed entries really are the top k (each unlisted token has at most the k-th value, so
their average does too).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

__all__ = ["SENTINEL", "TopK", "dense_logprobs", "dense_rows", "merge_topk"]

#: Log-probabilities at or below this are placeholders, not values (OpenAI's and vLLM's -9999.0).
SENTINEL = -9999.0

#: One position's answer: (token ids, log-probabilities), two equal-length 1-D arrays.
TopK = tuple[np.ndarray, np.ndarray]


def merge_topk(parts: Iterable[tuple[Sequence[int], Sequence[float]]]) -> TopK:
    """Concatenate several (ids, logprobs) lists of one position (e.g. the top-k dict and the
    sampled token's own entry); duplicates are resolved later by :func:`dense_logprobs`."""
    ids: list[int] = []
    lps: list[float] = []
    for i, lp in parts:
        ids.extend(int(x) for x in i)
        lps.extend(float(x) for x in lp)
    return np.asarray(ids, dtype=np.int64), np.asarray(lps, dtype=np.float64)


def _dense_probs(ids: np.ndarray, logprobs: np.ndarray, vocab_size: int) -> np.ndarray:
    """float64 probabilities [vocab_size] by the module's rule (see the module docstring)."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    lp = np.asarray(logprobs, dtype=np.float64).reshape(-1)
    if ids.shape != lp.shape:
        raise ValueError(f"top-k ids ({ids.shape[0]}) and log-probabilities ({lp.shape[0]}) differ in length")
    usable = np.isfinite(lp) & (lp > SENTINEL)
    # A log-probability above 0 is rounding (or a broken server); as probability it is 1 at most.
    ids, lp = ids[usable], np.minimum(lp[usable], 0.0)
    inside = (ids >= 0) & (ids < vocab_size)
    # Rule 2: mass on ids the tokenizer does not have leaves the total (not double-counted).
    out_ids, out_lp = ids[~inside], lp[~inside]
    dropped = 0.0
    if out_ids.size:
        _, first = np.unique(out_ids, return_index=True)
        dropped = float(np.exp(out_lp[first]).sum())
    ids, lp = ids[inside], lp[inside]
    # Rule 3: duplicates keep their largest value (sort by value, first occurrence per id wins).
    order = np.argsort(-lp, kind="stable")
    ids, lp = ids[order], lp[order]
    _, first = np.unique(ids, return_index=True)
    ids, lp = ids[first], lp[first]
    p = np.exp(lp)
    total = max(1.0 - dropped, 0.0)
    unlisted = vocab_size - ids.size
    fill = 0.0
    if unlisted > 0:
        fill = max(total - float(p.sum()), 0.0) / unlisted
    probs = np.full(vocab_size, fill, dtype=np.float64)
    probs[ids] = p
    s = probs.sum()
    if not s > 0:
        # Nothing usable at all (every entry a sentinel, or the listed ids carried no mass):
        # the only distribution consistent with "no information" is uniform.
        return np.full(vocab_size, 1.0 / vocab_size)
    return probs / s


def dense_logprobs(ids: Sequence[int] | np.ndarray, logprobs: Sequence[float] | np.ndarray, vocab_size: int,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Full next-token log-probabilities ``[vocab_size]`` from one position's top-k answer.

    Args:
        ids: token ids of the listed entries (any order; duplicates and out-of-range ids allowed).
        logprobs: their natural-log probabilities (sentinels and NaN allowed, see rule 1).
        vocab_size: size of the expert's vocabulary (``len(tokenizer)``).
        dtype: dtype of the result (the engine works in float32 like local experts).

    Returns:
        A tensor whose ``exp`` sums to 1; unlisted tokens share the leftover mass equally, so an
        unlisted token's log-probability is ``-inf`` only when nothing is left over.
    """
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    probs = _dense_probs(np.asarray(ids), np.asarray(logprobs), vocab_size)
    with np.errstate(divide="ignore"):
        return torch.from_numpy(np.log(probs)).to(dtype)


def dense_rows(rows: Sequence[TopK], vocab_size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """:func:`dense_logprobs` for many positions at once: ``[len(rows), vocab_size]``."""
    if not rows:
        return torch.empty(0, vocab_size, dtype=dtype)
    return torch.stack([dense_logprobs(i, lp, vocab_size, dtype) for i, lp in rows])
