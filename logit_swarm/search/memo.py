"""Memoisation across swarm iterations for generated-text utilities.

Within one ``Ensemble.generate`` call the engine already shares states: rows whose (prompt,
generated prefix) are identical are computed once, whatever their weights. Across calls nothing
is kept, yet a swarm's particles move slowly and mostly decode the same prefixes iteration after
iteration. :class:`MemoExpert` keeps what an expert said — its next-token log-probabilities —
about every token sequence it has seen, keyed by the sequence alone (the weights never enter an
expert's own distribution), and answers repeated questions without a forward pass.

How it fits the engine. A :class:`MemoExpert` wraps an expert and is handed to the engine in its
place. The engine talks to experts through ``prefill(seqs)``, ``extend(parents, tokens)``,
``score_chunks`` and ``store.release`` on node ids; the wrapper issues its own ids:

* a *hit* returns a node that has the cached log-probabilities but no KV cache ("lazy");
* a *miss* whose parent has a KV cache extends it incrementally, as the engine would;
* a *miss* whose parent is lazy is computed by one prefill of the whole sequence (batched with
  the other such misses), which also gives that node a KV cache for its own children.

Memory is bounded: only log-probability rows are kept across calls (``max_bytes`` in total,
least recently used first out); KV caches live exactly as long as the engine holds their nodes,
as without the memo. The distributions served are those the expert computed, so outputs equal the
unmemoised ones up to float rounding between batched and incremental kernels (measured in the
tests; greedy outputs match).

Use :func:`memoize` on a list of experts; ``swarm_search(..., memo=None)`` does it by itself for
tasks that generate text and reports the hit rate.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["MemoExpert", "memoize", "memo_stats", "task_generates", "DEFAULT_MAX_BYTES"]

#: Default bound on the cached log-probabilities of one expert.
DEFAULT_MAX_BYTES = 256 * 2**20


@dataclass
class _Node:
    seq: tuple[int, ...]
    lp: torch.Tensor  # [V] next-token log-probabilities after seq
    real: int | None  # the wrapped expert's node (has a KV cache), or None (lazy)
    refs: int


class MemoStore:
    """The node store the engine sees through a :class:`MemoExpert` (ids are the wrapper's)."""

    def __init__(self, owner: MemoExpert) -> None:
        self._owner = owner

    def retain(self, node: int) -> None:
        """Add a reference to ``node``."""
        self._owner._nodes[node].refs += 1

    def release(self, node: int) -> None:
        """Drop a reference; the KV cache (if any) goes back to the wrapped expert at zero."""
        self._owner._release(node)

    def __len__(self) -> int:
        return len(self._owner._nodes)


class MemoExpert:
    """An expert whose next-token distributions are remembered across engine calls.

    Args:
        expert: the wrapped expert (any object with the HF expert's interface).
        max_bytes: bound on the remembered log-probabilities (LRU eviction).

    Every other attribute (tokenizer, vocab_size, fingerprint, forward_calls...) is the wrapped
    expert's. ``hits``/``misses`` count rows answered from the memo / by a forward pass.
    """

    def __init__(self, expert: Any, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.__dict__["_inner"] = expert
        self.__dict__.update(
            store=MemoStore(self), max_bytes=int(max_bytes), hits=0, misses=0, rematerialised=0,
            _memo=OrderedDict(), _memo_bytes=0, _nodes={}, _live={}, _next=0,
        )

    # -- identity: everything else is the wrapped expert's --------------------------------
    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_inner"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        # ``name`` (made unique by Ensemble) and the like belong to the wrapped expert.
        if name in self.__dict__:
            self.__dict__[name] = value
        else:
            setattr(self.__dict__["_inner"], name, value)

    @property
    def inner(self) -> Any:
        """The wrapped expert."""
        return self.__dict__["_inner"]

    def __repr__(self) -> str:
        return f"MemoExpert({self.inner.name!r}, entries={len(self._memo)}, hit_rate={self.hit_rate:.3f})"

    @property
    def hit_rate(self) -> float:
        """Fraction of rows answered without a forward pass (0 before any row)."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def stats(self) -> dict[str, Any]:
        """Hits, misses, hit rate, cached entries and bytes (JSON-able)."""
        return {"hits": self.hits, "misses": self.misses, "hit_rate": self.hit_rate,
                "rematerialised": self.rematerialised, "entries": len(self._memo),
                "bytes": self._memo_bytes}

    # -- bookkeeping ---------------------------------------------------------------------
    def _remember(self, seq: tuple[int, ...], lp: torch.Tensor) -> None:
        if seq in self._memo:
            self._memo.move_to_end(seq)
            return
        size = lp.numel() * lp.element_size()
        if size > self.max_bytes:
            return
        self._memo[seq] = lp
        self._memo_bytes += size
        while self._memo_bytes > self.max_bytes:
            _, old = self._memo.popitem(last=False)
            self._memo_bytes -= old.numel() * old.element_size()

    def _new(self, seq: tuple[int, ...], lp: torch.Tensor, real: int | None) -> int:
        nid = self._next
        self._next += 1
        self._nodes[nid] = _Node(seq, lp, real, 1)
        self._live[seq] = nid
        return nid

    def _release(self, node: int) -> None:
        n = self._nodes[node]
        n.refs -= 1
        if n.refs > 0:
            return
        del self._nodes[node]
        if self._live.get(n.seq) == node:
            del self._live[n.seq]
        if n.real is not None:
            self.inner.store.release(n.real)

    def _lookup(self, seq: tuple[int, ...]) -> int | None:
        """A node for ``seq`` without a forward pass (live node retained, or a lazy one), or None."""
        nid = self._live.get(seq)
        if nid is not None:
            self._nodes[nid].refs += 1
            if seq in self._memo:
                self._memo.move_to_end(seq)
            return nid
        lp = self._memo.get(seq)
        if lp is None:
            return None
        self._memo.move_to_end(seq)
        return self._new(seq, lp, None)

    def _prefill_misses(self, keys: list[tuple[int, ...]]) -> list[int]:
        nodes, lp = self.inner.prefill([list(k) for k in keys])
        out = []
        for r, (k, real) in enumerate(zip(keys, nodes)):
            row = lp[r].detach()
            self._remember(k, row)
            out.append(self._new(k, row, real))
        return out

    def _finish(self, slots: dict[tuple[int, ...], list[int]], made: dict[tuple[int, ...], int],
                out: list[int | None]) -> tuple[list[int], torch.Tensor]:
        for k, positions in slots.items():
            nid = made[k]
            for j, pos in enumerate(positions):
                if j:
                    self._nodes[nid].refs += 1  # one reference per returned id, as prefill does
                out[pos] = nid
        ids = [int(x) for x in out]  # type: ignore[arg-type]
        if not ids:
            return [], torch.empty(0, self.inner.vocab_size)
        return ids, torch.stack([self._nodes[i].lp for i in ids])

    # -- the engine's interface ------------------------------------------------------------
    def prefill(self, seqs: list[list[int]]) -> tuple[list[int], torch.Tensor]:
        """Like the expert's ``prefill``; remembered sequences cost no forward pass."""
        out: list[int | None] = [None] * len(seqs)
        slots: dict[tuple[int, ...], list[int]] = {}
        for i, s in enumerate(seqs):
            key = tuple(int(t) for t in s)
            if key in slots:
                slots[key].append(i)
                continue
            nid = self._lookup(key)
            if nid is not None:
                out[i] = nid
                self.hits += 1
            else:
                slots[key] = [i]
        self.misses += sum(len(v) for v in slots.values())
        made = dict(zip(slots, self._prefill_misses(list(slots)))) if slots else {}
        return self._finish(slots, made, out)

    def extend(self, parents: list[int], tokens: list[int]) -> tuple[list[int], torch.Tensor]:
        """Like the expert's ``extend``; remembered children cost no forward pass, children of
        lazy parents are computed by one batched prefill of their whole sequence."""
        out: list[int | None] = [None] * len(parents)
        slots: dict[tuple[int, ...], list[int]] = {}
        incremental: dict[tuple[int, ...], tuple[int, int]] = {}
        for i, (p, t) in enumerate(zip(parents, tokens)):
            parent = self._nodes[p]
            key = parent.seq + (int(t),)
            if key in slots:
                slots[key].append(i)
                continue
            nid = self._lookup(key)
            if nid is not None:
                out[i] = nid
                self.hits += 1
                continue
            slots[key] = [i]
            if parent.real is not None:
                incremental[key] = (parent.real, int(t))
        self.misses += sum(len(v) for v in slots.values())
        made: dict[tuple[int, ...], int] = {}
        if incremental:
            keys = list(incremental)
            nodes, lp = self.inner.extend([incremental[k][0] for k in keys], [incremental[k][1] for k in keys])
            for r, (k, real) in enumerate(zip(keys, nodes)):
                row = lp[r].detach()
                self._remember(k, row)
                made[k] = self._new(k, row, real)
        cold = [k for k in slots if k not in made]
        if cold:
            self.rematerialised += len(cold)
            made.update(zip(cold, self._prefill_misses(cold)))
        return self._finish(slots, made, out)

    def score_chunks(self, parents: list[int], chunks: list[list[int]]) -> list[torch.Tensor]:
        """The expert's ``score_chunks`` (not memoised); lazy parents get a KV cache first."""
        lazy = sorted({p for p in parents if self._nodes[p].real is None})
        if lazy:
            real, _ = self.inner.prefill([list(self._nodes[p].seq) for p in lazy])
            for p, r in zip(lazy, real):
                self._nodes[p].real = r
            self.rematerialised += len(lazy)
        return self.inner.score_chunks([self._nodes[p].real for p in parents], chunks)


def memoize(experts: Sequence[Any], max_bytes: int = DEFAULT_MAX_BYTES) -> list[MemoExpert]:
    """Wrap each expert in a :class:`MemoExpert` (already wrapped ones are kept as they are)."""
    return [e if isinstance(e, MemoExpert) else MemoExpert(e, max_bytes) for e in experts]


def memo_stats(experts: Sequence[Any]) -> dict[str, Any]:
    """Hit rate over all memoised experts, and per expert."""
    mem = [e for e in experts if isinstance(e, MemoExpert)]
    hits = sum(e.hits for e in mem)
    misses = sum(e.misses for e in mem)
    return {"hits": hits, "misses": misses, "hit_rate": hits / (hits + misses) if hits + misses else 0.0,
            "experts": {e.inner.name: e.stats() for e in mem}}


def task_generates(task: Any) -> bool:
    """Whether evaluating ``task`` decodes text (the case the memo is for)."""
    kind = getattr(task, "kind", "")
    if kind == "multi":
        return any(task_generates(t) for t in getattr(task, "parts", []) or [])
    if kind == "multiple_choice":
        return getattr(task, "scoring_name", "") == "generate"
    return getattr(task, "gen", None) is not None
