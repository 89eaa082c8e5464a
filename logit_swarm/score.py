"""Continuation log-likelihoods, and per-expert tables computed once.

``score(context, continuation)`` is log P(continuation | context) in nats, summed over the
continuation's units (DESIGN.md §3).

Token units (shared tokenizer): the text ``context + continuation`` is tokenized canonically
once; tokens that lie entirely inside the context condition, the rest (including a token that
straddles the boundary) are scored. If no token lies inside the context (empty context, or a
first token that crosses the boundary) the expert's BOS/EOS start token conditions instead.
With one-hot weights this is exactly the expert's own log-likelihood of its canonical tokens.

Byte units (different tokenizers): the context is the prompt of align/bytes.py and each of the
continuation's UTF-8 bytes is scored with the exact next-byte distribution defined there.

A :class:`ScoreTable` keeps what the experts said about a fixed set of pairs, so any number of
weight vectors can be evaluated with no further forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .align.bytes import DEFAULT_BEAM, DEFAULT_PRUNE
from .align.prompt import split_prompt, text_prompt
from .align.view import make_byte_track
from .align.vocab import choose_unit
from .mixing import LOGP_FLOOR, check_mode, normalised_probs_weights
from .windows import fit_pair, fit_prompt, truncation_run


@dataclass
class ScoreTable:
    """Per-expert log-probabilities of every scored unit of a set of (context, continuation) pairs.

    Attributes:
        unit: "token" or "byte".
        unit_logprobs: float64 [T, N]: log p_i(unit_t | prefix) for every scored unit t.
        groups: int64 [T]: the pair each unit belongs to (non-decreasing).
        num_units: int64 [pairs]: scored units per pair.
        num_bytes: int64 [pairs]: UTF-8 bytes of each continuation.
        full: optional float32/64 [T, N, U]: each expert's whole next-unit distribution at every
            scored unit (needed only for mode "logits", whose normaliser depends on the weights).
    """

    unit: str
    unit_logprobs: np.ndarray
    groups: np.ndarray
    num_units: np.ndarray
    num_bytes: np.ndarray
    full: np.ndarray | None = None

    @property
    def n_pairs(self) -> int:
        """Number of (context, continuation) pairs."""
        return int(len(self.num_units))

    def _segment_sum(self, x: np.ndarray) -> np.ndarray:
        """Sum [P, T] over units into [P, pairs]; pairs with no unit score 0.

        Units are stored pair after pair, so a pair's sum is a difference of two prefix sums
        (one vectorised pass instead of a scatter-add)."""
        ends = np.cumsum(self.num_units)
        cs = np.zeros((x.shape[0], x.shape[1] + 1))
        np.cumsum(x, axis=1, out=cs[:, 1:])
        return cs[:, ends] - cs[:, ends - self.num_units]

    def _shifted_probs(self) -> tuple[np.ndarray, np.ndarray]:
        """(exp(L − m), m) with m the per-unit max over experts, computed once per table: every
        mode-"probs" evaluation is then one [T, N] × [N, P] product."""
        cached = self.__dict__.get("_shifted")
        if cached is None:
            L = self.unit_logprobs
            m = L.max(axis=1, initial=-np.inf) if L.shape[1] else np.zeros(L.shape[0])
            m = np.where(np.isfinite(m), m, 0.0)
            cached = (np.exp(L - m[:, None]), m)
            self.__dict__["_shifted"] = cached
        return cached

    def unit_scores(self, W, mode: str = "probs") -> np.ndarray:
        """Mixture log-probability of every scored unit, [P, T], for weight vectors W [P, N]."""
        check_mode(mode)
        W = np.atleast_2d(np.asarray(W, dtype=np.float64))
        L = self.unit_logprobs
        if mode == "probs":
            wt = normalised_probs_weights(W)  # [P, N]
            E, m = self._shifted_probs()  # [T, N], [T]
            with np.errstate(divide="ignore"):
                return (m[:, None] + np.log(E @ wt.T)).T
        if self.full is None:
            raise ValueError(
                "this table has no full distributions, which mode 'logits' needs for its normaliser; "
                "build it with build_table(..., keep_full=True)"
            )
        full = np.maximum(self.full.astype(np.float64), LOGP_FLOOR)  # [T, N, U]
        Lf = np.maximum(L, LOGP_FLOOR)
        out = np.empty((W.shape[0], L.shape[0]))
        for p in range(W.shape[0]):  # chunk by particle to bound memory ([T, U] at a time)
            s = np.einsum("tnu,n->tu", full, W[p])
            m = s.max(axis=1)
            logz = m + np.log(np.exp(s - m[:, None]).sum(axis=1))
            out[p] = Lf @ W[p] - logz
        return out

    def logprob(self, W, mode: str = "probs") -> np.ndarray:
        """log P(continuation | context) for every pair and weight vector: [P, pairs] nats."""
        return self._segment_sum(self.unit_scores(W, mode))

    def logprob_rows(self, W, mode: str = "probs") -> np.ndarray:
        """One weight vector per pair (W [pairs, N]): returns [pairs]."""
        W = np.asarray(W, dtype=np.float64)
        if W.shape[0] != self.n_pairs:
            raise ValueError(f"need one weight row per pair ({self.n_pairs}), got {W.shape[0]}")
        out = np.zeros(self.n_pairs)
        for uw in np.unique(W, axis=0):  # rows sharing a vector are evaluated together
            sel = np.where((W == uw).all(axis=1))[0]
            out[sel] = self.logprob(uw[None], mode)[0, sel]
        return out


def _token_pairs(expert, contexts, continuations):
    """(prefix ids, continuation ids) per pair from one canonical tokenization of the whole text."""
    out = []
    special = set(getattr(expert.tokenizer, "all_special_ids", []) or [])
    for ctx, cont in zip(contexts, continuations):
        ids, offs = expert.encode_with_offsets(ctx + cont)
        n_ctx = 0
        while n_ctx < len(ids) and offs[n_ctx][1] <= len(ctx):
            if offs[n_ctx][1] == 0 and ids[n_ctx] not in special and len(ctx) == 0:
                break  # an ordinary token of an empty context cannot be context
            n_ctx += 1
        rest = [(i, o) for i, o in zip(ids[n_ctx:], offs[n_ctx:])
                if not (i in special and o == (0, 0))]  # post-processor EOS etc. is not text
        prefix = ids[:n_ctx] or [expert.start_id]
        if not cont:
            rest = []
        out.append((prefix, [i for i, _ in rest]))
    return out


def _segment_dists(e, segs) -> list[torch.Tensor]:
    """Per segment (conditioning ids, scored ids): ``[len(scored), V]`` next-token log-probs,
    row t being the distribution of scored token t. One batched pass over all segments."""
    if hasattr(e, "forced_logprobs"):
        # Experts that answer with top-k (remote, vLLM): one teacher-forced call whose rows
        # carry each scored token's own exact log-probability.
        return list(e.forced_logprobs([p for p, _ in segs], [c for _, c in segs]))
    nodes, first = e.prefill([p for p, _ in segs])
    try:
        # Feed all scored tokens but the last: row t predicts token t+1.
        feed = [c[:-1] for _, c in segs]
        with_rest = [k for k, f in enumerate(feed) if f]
        rest = e.score_chunks([nodes[k] for k in with_rest], [feed[k] for k in with_rest]) if with_rest else []
        rest_of = dict(zip(with_rest, rest))
        return [torch.cat([first[k : k + 1], rest_of[k]], 0) if k in rest_of else first[k : k + 1]
                for k in range(len(segs))]
    finally:
        for nid in nodes:
            e.store.release(nid)


def token_tables(experts, contexts, continuations, keep_full: bool = False, truncation: str | None = None):
    """Per-expert unit log-probs (and optionally full distributions) at token level.

    A pair that does not fit an expert's window is scored by that expert in segments (see
    windows.fit_pair); with everything fitting, each pair is one segment."""
    per_expert_lp, per_expert_full, units_ref = [], [], None
    for e in experts:
        pairs = _token_pairs(e, contexts, continuations)
        units = [c for _, c in pairs]
        if units_ref is None:
            units_ref = units
        elif units != units_ref:
            raise ValueError(
                f"expert {e.name!r} tokenizes the continuations differently from {experts[0].name!r}; "
                "token-level scoring needs one shared tokenizer (use byte units)"
            )
        segs, owner = [], []
        for i, (p, c) in enumerate(pairs):
            if c:
                for seg in fit_pair(e, p, c, truncation):
                    segs.append(seg)
                    owner.append(i)
        lp_units = [np.zeros(0)] * len(pairs)
        full_units = [None] * len(pairs)
        parts: dict[int, list[torch.Tensor]] = {}
        for i, d in zip(owner, _segment_dists(e, segs) if segs else []):
            parts.setdefault(i, []).append(d)
        for i, ds in parts.items():
            dist = torch.cat(ds, 0) if len(ds) > 1 else ds[0]
            tok = torch.tensor(pairs[i][1], device=dist.device)
            lp_units[i] = dist.gather(1, tok[:, None])[:, 0].double().cpu().numpy()
            if keep_full:
                full_units[i] = dist.cpu().numpy()
        per_expert_lp.append(lp_units)
        per_expert_full.append(full_units)
    return per_expert_lp, per_expert_full


def _byte_context(e, context, room: int, truncation: str | None):
    """Head ids and tail bytes of one scoring context for expert ``e``, fitted to its window."""
    if isinstance(context, bytes):
        return text_prompt(e, context)
    ids = e.encode(context)
    window = e.context_window
    # Paths may spell the kept context with more tokens than its canonical encoding (the covering
    # runs over the whole kept text): keep at least half the window free.
    fitted = fit_prompt(e, ids, max(room, window // 2) if window else room, truncation, "context plus continuation")
    return text_prompt(e, context) if len(fitted) == len(ids) else split_prompt(e, fitted)


def byte_tables(experts, contexts, continuations, keep_full: bool = False, beam=DEFAULT_BEAM, prune=DEFAULT_PRUNE,
                truncation: str | None = None):
    """Per-expert unit log-probs (and optionally full 257-way distributions) at byte level.

    An expert whose window cannot hold a context plus room for its continuation (one token per
    byte at most) sees the context's end (windows.fit_prompt), covered from the cut ids' bytes;
    otherwise the context is covered from its text (align/prompt.py)."""
    conts = [c if isinstance(c, bytes) else c.encode("utf-8") for c in continuations]
    per_expert_lp, per_expert_full = [], []
    for e in experts:
        tr = make_byte_track(e, beam=beam, prune=prune)
        splits = [_byte_context(e, c, len(x), truncation) for c, x in zip(contexts, conts)]
        states = tr.start([h for h, _ in splits], [t for _, t in splits])
        lp_units = [np.zeros(len(c)) for c in conts]
        full_units = [np.zeros((len(c), 257)) for c in conts] if keep_full else None
        for t in range(max((len(c) for c in conts), default=0)):
            idx = [i for i, c in enumerate(conts) if len(c) > t]
            # require: a byte the live paths give no mass revives the dormant ones (align/bytes.py).
            d = tr.distributions([states[i] for i in idx], require=[conts[i][t] for i in idx])
            for k, i in enumerate(idx):
                lp_units[i][t] = d[k, conts[i][t]]
                if keep_full:
                    full_units[i][t] = d[k]
            grow = [i for i in idx if len(conts[i]) > t + 1]  # no forward after the last byte
            new = tr.advance([states[i] for i in grow], [conts[i][t] for i in grow])
            for i, s in zip(grow, new):
                tr.release(states[i])
                states[i] = s
        for s in states:
            tr.release(s)
        per_expert_lp.append(lp_units)
        per_expert_full.append(full_units)
    return per_expert_lp, per_expert_full


def build_table(experts, contexts, continuations, unit: str | None = None, keep_full: bool = False,
                byte_beam: int | None = DEFAULT_BEAM, byte_prune: float = DEFAULT_PRUNE,
                truncation: str | None = None) -> ScoreTable:
    """Run the experts once over (context, continuation) pairs and keep what they said.

    Args:
        experts: the experts (same order as the columns of later weight matrices).
        contexts, continuations: equal-length lists of strings.
        unit: "token" or "byte"; default: token if all experts share a tokenizer, else byte.
        keep_full: also keep full distributions (needed to evaluate mode "logits").
        truncation: "left" (default: an expert whose window is too short sees the end of the
            text; reported once per run), "error", or None (the enclosing run's policy); see
            logit_swarm/windows.py.
    """
    contexts, continuations = list(contexts), list(continuations)
    if len(contexts) != len(continuations):
        raise ValueError(f"{len(contexts)} contexts but {len(continuations)} continuations; pair them up")
    if not contexts:
        raise ValueError("no (context, continuation) pairs to score")
    for x in contexts + continuations:
        if not isinstance(x, str):
            raise ValueError(f"contexts and continuations must be strings, got {type(x).__name__}")
    unit = unit or choose_unit(experts)
    if unit not in ("token", "byte"):
        raise ValueError(f"unknown unit {unit!r}; use 'token' or 'byte'")
    with truncation_run(truncation) as policy:
        if unit == "token":
            lps, fulls = token_tables(experts, contexts, continuations, keep_full, policy)
        else:
            lps, fulls = byte_tables(experts, contexts, continuations, keep_full, byte_beam, byte_prune, policy)
    n = len(contexts)
    num_units = np.array([len(lps[0][i]) for i in range(n)], dtype=np.int64)
    if num_units.sum():
        L = np.stack([np.concatenate([lp[i] for i in range(n)]) for lp in lps], axis=1)
    else:
        L = np.zeros((0, len(experts)))
    groups = np.repeat(np.arange(n), num_units)
    full = None
    if keep_full and num_units.sum():
        full = np.stack(
            [np.concatenate([f[i] for i in range(n) if num_units[i]], 0) for f in fulls], axis=1
        )
    num_bytes = np.array([len(c.encode("utf-8")) for c in continuations], dtype=np.int64)
    return ScoreTable(unit, L, groups, num_units, num_bytes, full)
