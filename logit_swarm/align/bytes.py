"""Exact next-byte distributions from a token-level language model.

Definition (what this module computes; ``tests/test_bytes.py`` checks it against brute force)
-------------------------------------------------------------------------------------------
A prompt is encoded canonically into token ids. Its last token, if it is an ordinary (non-special)
token, is taken back off: its bytes become the *tail*, and the remaining ids are the *head* H (if
the head would be empty, it is the expert's BOS/EOS start token). The tail is re-derived at byte
level, so the model may extend the prompt's last word with a longer token ("prompt boundary" fix).
For a SentencePiece tokenizer with a dummy prefix and an empty prompt, the tail is the one space
the tokenizer puts before the first word.

Let y be the bytes after the head (tail, then the generated or scored text). A *path* is a
sequence of ordinary tokens s = s1..sk with bytes(s) a prefix of y; P(s) = Π P(s_t | H s_<t).
All tokenizations count, not only the canonical one. Let R_0 = {empty path} and, for j ≥ 1,

    C_j = { s·t : s ∈ R_i, i < j, bytes(t) = y[i:j] }          (candidate paths ending at j)
    R_j = the ``beam`` most probable paths of C_j whose probability is at least
          ``prune`` × the most probable one                      (kept paths ending at j)

With beam = ∞ and prune = 0, R_j is every tokenization of y[:j] (the exact marginal). The mass
of byte b after y[:n], and of STOP, is

    m(b)    = Σ_{j ≤ n} Σ_{s ∈ R_j} P(s) Σ_{t : y[j:n]·b ⊑ bytes(t)} P(t | H s)
    m(STOP) = Σ_{s ∈ R_n} P(s) Σ_{t ∈ stop ids} P(t | H s)

and p(u | y[:n]) = m(u) / Σ_u' m(u') over the 257 units (256 bytes + STOP). Tokens with no
bytes that are not stop tokens (padding, chat markers) carry mass that is dropped by this
normalisation. With no pruning, m(b) summed over the continuation's bytes telescopes to the
marginal probability of the text under the model, so byte-level scores are exact.

Cost: each kept path is one node in the expert's KV cache (one forward of one token); the
binning is a bincount over the vocabulary slice that still matches the pending bytes
(contiguous because the vocabulary is sorted by bytes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

N_UNITS = 257  # 256 byte values + STOP
STOP = 256


@dataclass
class _Path:
    node: int  # expert node whose token sequence is this path
    j: int  # byte position where the path ends
    logp: float  # log P(path), relative to the state's reference
    lo: int  # sorted-vocab range of tokens whose bytes start with y[j:n]
    hi: int


@dataclass
class ByteState:
    """Live paths of one text for one expert. Immutable once built (children are new objects)."""

    n: int
    paths: tuple[_Path, ...]


class ByteTrack:
    """Byte-level view of one expert: builds :class:`ByteState` objects and their distributions.

    Args:
        expert: an expert with ``vocab_bytes``, ``prefill``, ``extend`` and a node ``store``.
        beam: paths kept per byte position (None = all).
        prune: keep a path only if its probability is ≥ prune × the best at the same position.
    """

    def __init__(self, expert, beam: int | None = 8, prune: float = 1e-4):
        self.expert = expert
        self.vb = expert.vocab_bytes
        self.beam = beam
        self.log_prune = math.log(prune) if prune > 0 else -math.inf
        self._lp_sorted: dict[int, np.ndarray] = {}  # node -> next-token log-probs, sorted-vocab order
        self._bins0: dict[int, np.ndarray] = {}  # node -> 257 masses of the first byte / STOP
        self._refs: dict[int, int] = {}
        sid = torch.as_tensor(self.vb.sorted_ids)
        self._sorted_ids_t = sid
        self._first_sorted = torch.as_tensor(self.vb.byte_table[:, 0].astype(np.int64))
        self._stop_ids = torch.as_tensor(list(self.vb.stop_ids), dtype=torch.long)
        self._n_sorted = len(self.vb.sorted_ids)
        # Column-major copy: bt_cols[m, lo:hi] is a contiguous slice (fast searchsorted/bincount).
        self._cols = np.ascontiguousarray(self.vb.byte_table.T).astype(np.int16)
        self._cols_shift = self._cols.astype(np.int64) + 1  # -1 (token ended) -> bin 0

    # ------------------------------------------------------------------ node bookkeeping
    def _adopt(self, nodes: list[int], lp: torch.Tensor) -> None:
        """Record per-node data for freshly computed nodes (one forward's output rows)."""
        dev = lp.device
        acc = torch.float64
        lp_s = lp.index_select(1, self._sorted_ids_t.to(dev))
        probs = lp_s.to(acc).exp()
        bins = torch.zeros(lp.shape[0], N_UNITS, dtype=acc, device=dev)
        bins[:, :256].scatter_add_(1, self._first_sorted.to(dev).expand(lp.shape[0], -1), probs)
        if len(self._stop_ids):
            bins[:, STOP] = lp.index_select(1, self._stop_ids.to(dev)).to(acc).exp().sum(1)
        lp_np = lp_s.cpu().numpy()
        bins_np = bins.cpu().numpy()
        for r, nid in enumerate(nodes):
            if nid in self._lp_sorted:  # shared node already known (dedup): drop the extra ref
                self.expert.store.release(nid)
                continue
            self._lp_sorted[nid] = lp_np[r]
            self._bins0[nid] = bins_np[r]
            self._refs[nid] = 0

    def _ref(self, node: int) -> None:
        self._refs[node] += 1

    def release(self, state: ByteState) -> None:
        """Drop ``state``'s references to its nodes (call once per state you are done with)."""
        for p in state.paths:
            self._unref(p.node)

    def _unref(self, node: int) -> None:
        self._refs[node] -= 1
        if self._refs[node] == 0:
            del self._refs[node], self._lp_sorted[node], self._bins0[node]
            self.expert.store.release(node)

    # ------------------------------------------------------------------ building states
    def start(self, heads: list[list[int]], tails: list[bytes]) -> list[ByteState]:
        """States after each (head ids, tail bytes) prompt; the tail bytes are forced."""
        nodes, lp = self.expert.prefill(heads)
        # prefill returns one (retained) id per head; adopt unique ones.
        uniq: dict[int, int] = {}
        for r, nid in enumerate(nodes):
            uniq.setdefault(nid, r)
        rows = list(uniq.values())
        self._adopt([nodes[r] for r in rows], lp[rows])
        for r, nid in enumerate(nodes):
            if uniq[nid] != r:  # prefill retained duplicates: hand that ref to our own counting
                self.expert.store.release(nid)
        states = []
        for nid in nodes:
            self._ref(nid)
            states.append(ByteState(0, (_Path(nid, 0, 0.0, 0, self._n_sorted),)))
        # Force the tails, one byte position at a time across all prompts.
        for t in range(max((len(x) for x in tails), default=0)):
            idx = [i for i, x in enumerate(tails) if len(x) > t]
            new = self.advance([states[i] for i in idx], [tails[i][t] for i in idx])
            for i, s in zip(idx, new):
                self.release(states[i])
                states[i] = s
        return states

    def distributions(self, states: list[ByteState]) -> np.ndarray:
        """Normalised log-probabilities ``[len(states), 257]`` (float64) of the next unit."""
        out = np.empty((len(states), N_UNITS))
        cols = self._cols_shift
        max_len = cols.shape[0]
        for k, st in enumerate(states):
            mass = np.zeros(N_UNITS)
            for p in st.paths:
                m = st.n - p.j
                scale = math.exp(p.logp)
                if m == 0:
                    mass += scale * self._bins0[p.node]
                    continue
                if m >= max_len:
                    continue
                w = np.exp(self._lp_sorted[p.node][p.lo : p.hi].astype(np.float64))
                # Bin 0 collects tokens equal to y[j:n] (they ended; their mass lives in later paths).
                mass[:256] += scale * np.bincount(cols[m, p.lo : p.hi], weights=w, minlength=257)[1:]
            total = mass.sum()
            with np.errstate(divide="ignore"):
                out[k] = np.log(mass / total) if total > 0 else np.full(N_UNITS, -np.inf)
        return out

    def advance(self, states: list[ByteState], units: list[int]) -> list[ByteState]:
        """Child states after appending one byte to each state (one batched forward for all)."""
        cols, lengths, sorted_ids = self._cols, self.vb.lengths, self.vb.sorted_ids
        max_len = cols.shape[0]
        plans = []  # per state: (kept old paths, candidates)
        for st, b in zip(states, units):
            if b == STOP or not 0 <= b < 256:
                raise ValueError(f"cannot append unit {b} as a byte")
            kept, cands = [], []
            for p in st.paths:
                m = st.n - p.j
                if m >= max_len:
                    continue
                col = cols[m, p.lo : p.hi]
                lo = p.lo + int(np.searchsorted(col, b, side="left"))
                hi = p.lo + int(np.searchsorted(col, b, side="right"))
                if lo >= hi:
                    continue
                # Tokens exactly y[j:n+1] sit first in the range (shorter sorts first).
                e = lo
                while e < hi and lengths[e] == m + 1:
                    tok = int(sorted_ids[e])
                    cands.append((p.logp + float(self._lp_sorted[p.node][e]), p.node, tok))
                    e += 1
                if e < hi:
                    kept.append(_Path(p.node, p.j, p.logp, e, hi))
            if cands:
                cands.sort(key=lambda c: -c[0])
                best = cands[0][0]
                cands = [c for c in cands if c[0] >= best + self.log_prune]
                if self.beam is not None:
                    cands = cands[: self.beam]
            plans.append((kept, cands))
        # One batched forward for every new path of every state; dedupe (parent, token).
        pair_index: dict[tuple[int, int], int] = {}
        parents, tokens = [], []
        for _, cands in plans:
            for _, node, tok in cands:
                if (node, tok) not in pair_index:
                    pair_index[(node, tok)] = len(parents)
                    parents.append(node)
                    tokens.append(tok)
        new_nodes: list[int] = []
        if parents:
            new_nodes, lp = self.expert.extend(parents, tokens)
            self._adopt(new_nodes, lp)
        out = []
        for st, (kept, cands) in zip(states, plans):
            paths = list(kept)
            for logp, node, tok in cands:
                paths.append(_Path(new_nodes[pair_index[(node, tok)]], st.n + 1, logp, 0, self._n_sorted))
            if paths:  # keep numbers in range: reference = best live path
                ref = max(p.logp for p in paths)
                for p in paths:
                    p.logp -= ref
            for p in paths:
                self._ref(p.node)
            out.append(ByteState(st.n + 1, tuple(paths)))
        # Nodes created but not used by any state (none today, but keep refcounts honest).
        for nid in new_nodes:
            if self._refs.get(nid) == 0:
                self._refs[nid] = 1
                self._unref(nid)
        return out


def split_prompt(expert, ids: list[int], text_is_empty: bool) -> tuple[list[int], bytes]:
    """Head ids and tail bytes of a canonically encoded prompt (see the module definition)."""
    vb = expert.vocab_bytes
    head, tail = list(ids), b""
    if head and vb.token_bytes[head[-1]] is not None and head[-1] < len(vb.token_bytes):
        tail = vb.token_bytes[head[-1]]
        head = head[:-1]
    if not head:
        head = [expert.start_id]
    if text_is_empty and vb.dummy_prefix and not tail:
        tail = b" "
    return head, tail
