"""Next-byte distributions from a token-level language model: one byte-level process.

Definition (what this module computes; ``tests/test_bytes.py`` checks it against brute force)
-------------------------------------------------------------------------------------------
*The prompt.* A plain-text prompt is not tokenized into a fixed head: its *head* H is only the
token(s) without bytes that the tokenizer puts first (BOS), or the expert's start token when there
is none, and its *tail* is the model's view of the whole text (``vocab.model_view``: the text's
UTF-8 bytes, after the dummy space for a SentencePiece tokenizer). A chat prompt's head is its
ids up to the last chat marker; the ordinary tokens after it become the tail. So the covering of
a prompt goes back as far as any token that ends inside it can start (to the head), and the
distribution of the next byte after a text x is the conditional of one distribution over texts:

    logprob(x, ab) = logprob(x, a) + logprob(x + a, b)     for every split, also inside a character,

and scoring a text from the start equals scoring it after any prefix. This holds at *any* beam
and threshold, not only with exact settings, because the tracker's state after a text is a
function of the text's bytes alone (forcing a prompt and scoring the same bytes take the same
steps; see "Why not a canonical head" below). What remains is float rounding of batched
forwards: measured on the zoo (code, math, facts_a; six texts of English, code, digits, unicode;
float32) the gap is at most 8e-5 nats; the stated bound is :data:`CHAIN_BOUND` = 1e-3
(``tests/test_bytes_chain.py``). With ``beam=None, prune=0`` and float64 it is exact (< 1e-9 on
every supported real tokenizer family).

*Which tokenizations count:* all of them (every token sequence whose bytes spell the text),
pruned as below; ``beam=None, prune=0`` is the exact marginal. Canonical-only counting (the
"valid covering tree" of ByteSampler) is not built here; ``experiments/bytes_vs_bytesampler.py``
measures it through ByteSampler itself. Reasons for the default (measured on the zoo, see the
README section "Byte level vs ByteSampler"): counting all tokenizations has no mass leak between
steps (canonical-only renormalises away the mass the model puts on non-canonical splits, so its
byte process does not telescope to the model's probability of the text), needs no canonicality
test (pre-tokeniser rules, digit groups, SentencePiece normalisation). The default threshold
(:data:`DEFAULT_PRUNE` = 1e-3, beam 8) comes from ``experiments/bytes_default_choice.py`` (code +
math experts, four prompts, against brute force of the exact marginal; expert rows and time of
64 greedy bytes at batch 8): prune 1e-2 → max |Δp| 1.9e-3, 297 rows; 1e-3 → 2.7e-4, 442 rows;
1e-4 → 1.6e-4, 937 rows (2.5× the time of 1e-3); 1e-6 → 4.2e-4 (beam-limited), 1139 rows. 1e-3
costs half of 1e-4 for an error far below the differences between experts. (At 1e-4 the
facts_a expert, whose sp2k vocabulary spreads mass over ~10^4 tokenizations of "café au lait",
was 0.04 from brute force there.) The chain rule is no criterion: it holds at every setting.

*Why not a canonical head.* Encoding the prompt canonically and re-deriving only its last token
(the earlier definition, and ByteSampler's) makes the distribution depend on where the prompt
ends: a longer token that starts before the last canonical token is lost, and the same text
scored in one piece or as context + continuation differs (0.09–0.33 nats mean, up to 2.8, on the
zoo). The price of covering from the head is that a prompt is forced byte by byte (one batched
model call per byte position where some kept path ends, instead of one prefill).

Let y be the bytes after the head (tail, then the generated or scored text). A *path* is a
sequence of ordinary tokens s = s1..sk with bytes(s) a prefix of y; P(s) = Π P(s_t | H s_<t).
All tokenizations count, not only the canonical one. Let R_0 = {empty path} and, for j ≥ 1,

    C_j = { s·t : s ∈ R_i, i < j, bytes(t) = y[i:j] }          (candidate paths ending at j)
    M_j = Σ_{s ∈ C_j} P(s) + Σ_{i < j} Σ_{s ∈ R_i} P(s) Σ_{t : y[i:j] ⊏ bytes(t)} P(t | H s)
                                   (mass of y[:j]: paths ending at j, plus paths whose next token
                                    covers y[i:j] and goes on; ⊏ = proper prefix)
    R_j = the ``beam`` most probable paths of C_j whose probability is at least
          ``prune`` × M_j                                         (kept paths ending at j)

(if that leaves no live path at all, the most probable candidate is kept). So a path that ends
in the middle of what the model mostly treats as one longer token (a non-canonical split such as
"hel"+"lo" while "hello" carries the mass) is not run, and the model runs about once per *token*
of the text, not once per byte. With beam = ∞ and prune = 0, R_j is every tokenization of y[:j]
(the exact marginal).

*Dormant paths.* Up to ``beam`` of the candidates below the threshold are remembered without
running the model (their parent's KV cache is kept). They carry no mass. If the live paths give
the next byte of y no mass at all — the text left every longer token the live paths were inside,
e.g. "helix" after "hel" when only "hello"/"help" were live — the dormant paths are revived (one
batched forward), become ordinary paths of R_j, and the distribution is recomputed with them. So
a byte that the exact marginal allows is never given probability zero by pruning, as long as a
dormant path explains it. (Scoring asks for this before reading a byte's probability; decoding
needs it only when advancing, since a sampled byte has mass under some expert.)

*Re-anchoring* (last resort). Dormant paths cannot grow chains of several tokens, so pruning can
still lose every path that explains the text (seen on runs of whitespace and newlines in code).
When a byte then has no mass after revival, the state's paths are replaced by one path: the head
plus a greedy longest-match tokenization of y[:n] (one prefill), with probability 1 relative to
nothing else. Its next-token distribution gives every byte the vocabulary can spell some mass.
This is an approximation and is counted (``ByteTrack.reanchored``); with prune = 0 it never
happens.

The mass
of byte b after y[:n], and of STOP, is

    m(b)    = Σ_{j ≤ n} Σ_{s ∈ R_j} P(s) Σ_{t : y[j:n]·b ⊑ bytes(t)} P(t | H s)
    m(STOP) = Σ_{s ∈ R_n} P(s) Σ_{t ∈ stop ids} P(t | H s)

and p(u | y[:n]) = m(u) / Σ_u' m(u') over the 257 units (256 bytes + STOP). Tokens with no
bytes that are not stop tokens (padding, chat markers) carry mass that is dropped by this
normalisation. With no pruning, m(b) summed over the continuation's bytes telescopes to the
marginal probability of the text under the model, so byte-level scores are exact.

Cost: each kept path is one node in the expert's KV cache (one forward of one token); the
in-flight mass of a path is a difference of two entries of its node's cumulative sorted
probabilities; the binning is a bincount over the vocabulary slice that still matches the pending bytes
(contiguous because the vocabulary is sorted by bytes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

#: Stated bound (nats) on the chain-rule gap |logprob(x, ab) − logprob(x, a) − logprob(x + a, b)| at
#: any settings: the process is one function of the bytes, so only float rounding of batched
#: forwards remains (measured on the zoo: see the module docstring).
CHAIN_BOUND = 1e-3
#: Default pruning (module docstring, "Which tokenizations count"; experiments/bytes_default_choice.py).
DEFAULT_BEAM = 8
DEFAULT_PRUNE = 1e-3
N_UNITS = 257  # 256 byte values + STOP
STOP = 256


@dataclass
class _Path:
    node: int  # expert node whose token sequence is this path (a dormant path: its parent's)
    j: int  # byte position where the path ends
    logp: float  # log P(path), relative to the state's reference
    lo: int  # sorted-vocab range of tokens whose bytes start with y[j:n]
    hi: int
    tok: int = -1  # dormant path: the last token, not yet run (node is then the parent)


@dataclass
class ByteState:
    """Paths of one text for one expert. Children are new objects; reviving dormant paths
    replaces ``paths`` in place (it only adds information, so sharing a state stays safe)."""

    n: int
    paths: tuple[_Path, ...]
    head: tuple[int, ...] = ()  # the prompt's head ids (shared by all states of one prompt)
    y: bytes = b""  # the bytes after the head so far (for re-anchoring)


class ByteTrack:
    """Byte-level view of one expert: builds :class:`ByteState` objects and their distributions.

    Args:
        expert: an expert with ``vocab_bytes``, ``prefill``, ``extend`` and a node ``store``.
        beam: paths kept per byte position (None = all).
        prune: keep a new path only if its probability is ≥ prune × the mass of the text so far
            carried by all live paths (M_j in the module docstring).
    """

    def __init__(self, expert, beam: int | None = DEFAULT_BEAM, prune: float = DEFAULT_PRUNE):
        self.expert = expert
        self.vb = expert.vocab_bytes
        self.beam = beam
        self.log_prune = math.log(prune) if prune > 0 else -math.inf
        self._lp_sorted: dict[int, np.ndarray] = {}  # node -> next-token log-probs, sorted-vocab order
        self._bins0: dict[int, np.ndarray] = {}  # node -> 257 masses of the first byte / STOP
        self._cum: dict[int, np.ndarray] = {}  # node -> [0, cumulative probs in sorted order]
        self.revived = 0  # dormant paths brought back to life (see the module docstring)
        self.reanchored = 0  # states re-anchored on a greedy tokenization (last resort)
        self._spelling = None  # (bytes -> token id, longest token) for re-anchoring
        self._refs: dict[int, int] = {}
        self._narrow_memo: dict[tuple[int, int, int], tuple[int, int, int]] = {}
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
        cum = torch.nn.functional.pad(probs.cumsum(1), (1, 0))
        lp_np = lp_s.cpu().numpy()
        bins_np = bins.cpu().numpy()
        cum_np = cum.cpu().numpy()
        for r, nid in enumerate(nodes):
            if nid in self._lp_sorted:  # shared node already known (dedup): drop the extra ref
                self.expert.store.release(nid)
                continue
            self._lp_sorted[nid] = lp_np[r]
            self._bins0[nid] = bins_np[r]
            self._cum[nid] = cum_np[r]
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
            del self._refs[node], self._lp_sorted[node], self._bins0[node], self._cum[node]
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
        for nid, head in zip(nodes, heads):
            self._ref(nid)
            states.append(ByteState(0, (_Path(nid, 0, 0.0, 0, self._n_sorted),), tuple(head)))
        # Force the tails, one byte position at a time across all prompts.
        for t in range(max((len(x) for x in tails), default=0)):
            idx = [i for i, x in enumerate(tails) if len(x) > t]
            new = self.advance([states[i] for i in idx], [tails[i][t] for i in idx])
            for i, s in zip(idx, new):
                self.release(states[i])
                states[i] = s
        return states

    def distributions(self, states: list[ByteState], require: list[int] | None = None) -> np.ndarray:
        """Normalised log-probabilities ``[len(states), 257]`` (float64) of the next unit.

        ``require``: per state, a unit that is about to be read (scoring); a state that gives it
        no mass has its dormant paths revived first.
        """
        masses = [self._mass(st) for st in states]
        if require is not None:
            need = [k for k, (m, u) in enumerate(zip(masses, require))
                    if m[u] <= 0 and any(p.tok >= 0 for p in states[k].paths)]
            if need:
                self._revive([states[k] for k in need])
                for k in need:
                    masses[k] = self._mass(states[k])
            dead = [k for k, (m, u) in enumerate(zip(masses, require)) if m[u] <= 0 and u != STOP]
            if dead:
                self._reanchor([states[k] for k in dead])
                for k in dead:
                    masses[k] = self._mass(states[k])
        out = np.empty((len(states), N_UNITS))
        for k, mass in enumerate(masses):
            total = mass.sum()
            with np.errstate(divide="ignore"):
                out[k] = np.log(mass / total) if total > 0 else np.full(N_UNITS, -np.inf)
        return out

    def _mass(self, st: ByteState) -> np.ndarray:
        """Unnormalised 257 masses of the next unit from the live paths of ``st``.

        Paths at a token boundary add their node's precomputed first-byte bins; the in-flight
        ones are binned together in one bincount over their vocabulary slices."""
        cols = self._cols_shift
        max_len = cols.shape[0]
        mass = np.zeros(N_UNITS)
        idx, wts = [], []
        for p in st.paths:
            if p.tok >= 0:
                continue  # dormant: no mass until revived
            m = st.n - p.j
            if m == 0:
                mass += math.exp(p.logp) * self._bins0[p.node]
            elif m < max_len:
                # Bin 0 collects tokens equal to y[j:n] (they ended; their mass lives in later paths).
                idx.append(cols[m, p.lo : p.hi])
                wts.append(self._lp_sorted[p.node][p.lo : p.hi].astype(np.float64) + p.logp)
        if idx:
            w = np.exp(np.concatenate(wts))
            mass[:256] += np.bincount(np.concatenate(idx), weights=w, minlength=257)[1:257]
        return mass

    def _revive(self, states: list[ByteState]) -> None:
        """Run the dormant paths of ``states`` (one batched forward) and make them live."""
        pair_index: dict[tuple[int, int], int] = {}
        parents, tokens = [], []
        for st in states:
            for p in st.paths:
                if p.tok >= 0 and (p.node, p.tok) not in pair_index:
                    pair_index[(p.node, p.tok)] = len(parents)
                    parents.append(p.node)
                    tokens.append(p.tok)
        if not parents:
            return
        new_nodes, lp = self.expert.extend(parents, tokens)
        self._adopt(new_nodes, lp)
        self.revived += len(parents)
        for st in states:
            paths = []
            for p in st.paths:
                if p.tok >= 0:
                    nid = new_nodes[pair_index[(p.node, p.tok)]]
                    self._ref(nid)
                    self._unref(p.node)
                    p = _Path(nid, p.j, p.logp, p.lo, p.hi)
                paths.append(p)
            st.paths = tuple(paths)
        self._drop_unused(new_nodes)

    def _reanchor(self, states: list[ByteState]) -> None:
        """Last resort when pruning has lost every path that explains the text: replace the
        paths of each state by one path, the head plus a greedy longest-match tokenization of
        y[:n] (one prefill), ending exactly at n. Its next-token distribution covers every byte
        the vocabulary can spell, so no byte gets probability zero because of pruning. States
        whose text the vocabulary cannot spell at all are left as they are."""
        seqs, todo = [], []
        for st in states:
            toks = self._spell(st.y[: st.n]) if st.head else None
            if toks is not None:
                seqs.append(list(st.head) + toks)
                todo.append(st)
        if not todo:
            return
        nodes, lp = self.expert.prefill(seqs)
        uniq: dict[int, int] = {}
        for r, nid in enumerate(nodes):
            uniq.setdefault(nid, r)
        fresh = [nid for nid in uniq if nid not in self._lp_sorted]
        self._adopt(fresh, lp[[uniq[nid] for nid in fresh]])
        for r, nid in enumerate(nodes):
            if uniq[nid] != r or nid not in fresh:  # extra retains from prefill: our own counting
                self.expert.store.release(nid)
        for st, nid in zip(todo, nodes):
            self._ref(nid)
            for p_ in st.paths:
                self._unref(p_.node)
            st.paths = (_Path(nid, st.n, 0.0, 0, self._n_sorted),)
        self.reanchored += len(todo)

    def _spell(self, y: bytes) -> list[int] | None:
        """Greedy longest-match token ids whose bytes are exactly ``y`` (None if impossible)."""
        if self._spelling is None:
            table: dict[bytes, int] = {}
            stops = set(self.vb.stop_ids)
            for tid, tb in enumerate(self.vb.token_bytes):
                if tb and tid not in stops and tb not in table:
                    table[tb] = tid
            self._spelling = (table, max((len(b) for b in table), default=1))
        table, longest = self._spelling
        out, i = [], 0
        while i < len(y):
            for k in range(min(longest, len(y) - i), 0, -1):
                tid = table.get(y[i : i + k])
                if tid is not None:
                    out.append(tid)
                    i += k
                    break
            else:
                return None
        return out

    def _drop_unused(self, new_nodes: list[int]) -> None:
        # Nodes created but not used by any state (keep refcounts honest).
        for nid in new_nodes:
            if self._refs.get(nid) == 0:
                self._refs[nid] = 1
                self._unref(nid)

    def advance(self, states: list[ByteState], units: list[int]) -> list[ByteState]:
        """Child states after appending one byte to each state (one batched forward for all)."""
        for b in units:
            if b == STOP or not 0 <= b < 256:
                raise ValueError(f"cannot append unit {b} as a byte")
        plans = [self._plan(st, b) for st, b in zip(states, units)]
        # A state whose live paths all leave the text: revive its dormant paths and plan again.
        stuck = [k for k, (kept, cands, _) in enumerate(plans)
                 if not kept and not cands and any(p.tok >= 0 for p in states[k].paths)]
        if stuck:
            self._revive([states[k] for k in stuck])
            for k in stuck:
                plans[k] = self._plan(states[k], units[k])
        # Still nothing (the chains that explained the text were pruned): re-anchor.
        dead = [k for k, (kept, cands, _) in enumerate(plans) if not kept and not cands]
        if dead:
            self._reanchor([states[k] for k in dead])
            for k in dead:
                plans[k] = self._plan(states[k], units[k])
        # One batched forward for every new path of every state; dedupe (parent, token).
        pair_index: dict[tuple[int, int], int] = {}
        parents, tokens = [], []
        for _, cands, _ in plans:
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
        for st, b, (kept, cands, dormant) in zip(states, units, plans):
            paths = list(kept)
            for logp, node, tok in cands:
                paths.append(_Path(new_nodes[pair_index[(node, tok)]], st.n + 1, logp, 0, self._n_sorted))
            live = [p for p in paths if p.tok < 0]
            if live:  # keep numbers in range: reference = best live path
                ref = max(p.logp for p in live)
                paths += dormant
                for p in paths:
                    p.logp -= ref
            for p in paths:
                self._ref(p.node)
            out.append(ByteState(st.n + 1, tuple(paths), st.head, st.y + bytes([b])))
        self._drop_unused(new_nodes)
        return out

    def _narrow(self, m: int, lo: int, hi: int, b: int) -> tuple[int, int, int]:
        """The sorted-vocabulary range [lo', hi') of tokens in [lo, hi) whose byte m is ``b``, and
        the end e of those among them that end there (length m + 1). Memoised: the ranges are
        the nodes of the vocabulary's byte trie, shared by every path, row and step."""
        key = (m, lo, b)
        got = self._narrow_memo.get(key)
        if got is None:
            col = self._cols[m, lo:hi]
            a = lo + int(np.searchsorted(col, b, side="left"))
            z = lo + int(np.searchsorted(col, b, side="right"))
            e, lengths = a, self.vb.lengths
            while e < z and lengths[e] == m + 1:
                e += 1
            got = self._narrow_memo[key] = (a, e, z)
        return got

    def _plan(self, st: ByteState, b: int):
        """What appending byte ``b`` does to ``st``: (kept paths, new candidates to run, dormant)."""
        sorted_ids = self.vb.sorted_ids
        max_len = self._cols.shape[0]
        kept, cands, dormant = [], [], []
        flight = 0.0  # in-flight mass (relative to the state's reference path)
        for p in st.paths:
            m = st.n - p.j
            if m >= max_len:
                continue
            lo, e, hi = self._narrow(m, p.lo, p.hi, b)
            if lo >= hi:
                continue
            if p.tok >= 0:  # dormant: only its token range follows the text
                dormant.append(_Path(p.node, p.j, p.logp, lo, hi, p.tok))
                continue
            # Tokens exactly y[j:n+1] sit first in the range, [lo, e) (shorter sorts first).
            if e > lo:
                lp_node = self._lp_sorted[p.node]
                for q in range(lo, e):
                    cands.append((p.logp + float(lp_node[q]), p.node, int(sorted_ids[q])))
            if e < hi:
                kept.append(_Path(p.node, p.j, p.logp, e, hi))
                cum = self._cum[p.node]
                flight += math.exp(p.logp) * max(float(cum[hi] - cum[e]), 0.0)
        if cands:
            cands.sort(key=lambda c: -c[0])
            if self.log_prune > -math.inf:
                total = flight + sum(math.exp(c[0]) for c in cands)
                floor = math.log(total) + self.log_prune if total > 0 else -math.inf
                survivors = [c for c in cands if c[0] >= floor]
                if not survivors and not kept:
                    survivors = cands[:1]
                below = cands[len(survivors):]
                cands = survivors
                # Remember the best of the rest without running them (see "Dormant paths").
                dormant += [_Path(node, st.n + 1, lp_, 0, self._n_sorted, tok) for lp_, node, tok in below]
                dormant.sort(key=lambda q: -q.logp)
                dormant = dormant[: self.beam if self.beam is not None else len(dormant)]
            if self.beam is not None:
                cands = cands[: self.beam]
        return kept, cands, dormant
