"""Experts whose backend answers for whole token sequences: the shared half of remote and vLLM experts.

A local :class:`~logit_swarm.experts.hf.HFExpert` keeps a KV cache per node and extends it one
token at a time. A remote endpoint or an in-process vLLM engine works differently: it is asked
about a whole token sequence at a time (it keeps its own prefix cache, if any) and it answers
with the top-k log-probabilities of the next token, not the full distribution. This module
turns such a backend into the engine's expert interface (``prefill``, ``extend``,
``score_chunks``, a node ``store``), the way :class:`~logit_swarm.search.memo.MemoExpert` serves
nodes that are token sequences rather than KV caches:

* a *node* is a token sequence; the engine's ``extend(parent, token)`` is the parent's sequence
  plus the token, answered by one backend query for all new sequences of the call;
* every answer is converted to a full distribution by the stated leftover-mass rule
  (:mod:`logit_swarm.experts.topk`) and kept in a bounded LRU keyed by the token sequence, so each
  (prompt, prefix) is asked once while it stays in the cache;
* teacher-forced scoring (``score_chunks``) asks for the prompt positions of parent + chunk in
  one query (``echo``/``prompt_logprobs``); those rows also carry the exact log-probability of
  the token that follows (the backend always reports the prompt's own token, the "k+1" entry),
  so they are cached apart from the next-token rows: a distribution served by ``prefill`` or
  ``extend`` never depends on what was scored before (same inputs, same outputs). When k covers
  the vocabulary and only a few tokens are scored after a long context, next-token queries of
  each prefix are used instead (both exact; fewer rows travel); see ``score_mode``.

Where small k is exact: a scored token's own log-probability is exact in every teacher-forced
row (the k+1 entry), i.e. for all tokens of a continuation except its first (answered by the
next-token query after the context) and its last (the generated position of the scoring query,
whose token the backend is not told). Everything else is the leftover-mass rule's estimate.

``forward_calls`` counts backend queries (HTTP requests, ``LLM.generate`` calls) and
``forward_rows`` the sequences they covered, so the search's cost accounting sees remote work
like local forward passes; cache hits cost nothing and are counted in ``cache_hits``.

Subclasses implement :meth:`SequenceExpert._query_next`, :meth:`SequenceExpert._query_forced`
and :meth:`SequenceExpert.describe`.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from .text import TokenizerSide
from .topk import TopK, dense_logprobs

__all__ = ["SequenceExpert", "SequenceStore", "DEFAULT_CACHE_BYTES", "SCORE_MODES", "read_model_config"]

#: Ways ``score_chunks`` may ask the backend (see :class:`SequenceExpert`).
SCORE_MODES = ("auto", "echo", "prefixes")

#: Default bound on one expert's cached next-token rows (float32, V values per row).
DEFAULT_CACHE_BYTES = 256 * 2**20

# Config attribute names under which architectures store their context window (as in hf.py).
_WINDOW_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def read_model_config(directory: str | Path | None) -> dict[str, Any]:
    """What a tokenizer directory may also say about the model: ``eos_token_id``/``bos_token_id``
    from ``config.json`` and ``generation_config.json``, and the context window. Empty if absent."""
    out: dict[str, Any] = {"eos": [], "bos": None, "context_window": None}
    if directory is None:
        return out
    d = Path(directory)
    for fname in ("config.json", "generation_config.json"):
        f = d / fname
        if not f.is_file():
            continue
        try:
            cfg = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue  # a broken optional file only loses optional information
        if not isinstance(cfg, dict):
            continue
        # Composite configs (e.g. multimodal) keep the language model's under text_config.
        sub = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else {}
        for c in (cfg, sub):
            eos = c.get("eos_token_id")
            if eos is not None:
                out["eos"].extend(eos if isinstance(eos, list) else [eos])
            if out["bos"] is None and isinstance(c.get("bos_token_id"), int):
                out["bos"] = c["bos_token_id"]
            if out["context_window"] is None and fname == "config.json":
                for key in _WINDOW_KEYS:
                    val = c.get(key)
                    if isinstance(val, int) and val > 0:
                        out["context_window"] = val
                        break
    return out


class _LRU:
    """Tensor rows by key, least recently used first out, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self._d: OrderedDict[Any, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._d)

    def get(self, key: Any) -> torch.Tensor | None:
        row = self._d.get(key)
        if row is not None:
            self._d.move_to_end(key)
        return row

    def put(self, key: Any, row: torch.Tensor) -> None:
        size = row.numel() * row.element_size()
        if key in self._d or size > self.max_bytes:
            return
        self._d[key] = row
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self._d.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()

    def clear(self) -> None:
        self._d.clear()
        self.bytes = 0


class SequenceStore:
    """The node store of a :class:`SequenceExpert`: node id -> token sequence, reference counted."""

    def __init__(self) -> None:
        self._seq: dict[int, tuple[int, ...]] = {}
        self._refs: dict[int, int] = {}
        self._next = 0

    def __len__(self) -> int:
        return len(self._seq)

    def add(self, seq: tuple[int, ...]) -> int:
        """A new node for ``seq`` with one reference."""
        nid = self._next
        self._next += 1
        self._seq[nid] = seq
        self._refs[nid] = 1
        return nid

    def seq(self, node: int) -> tuple[int, ...]:
        """The token sequence of ``node``."""
        return self._seq[node]

    def length(self, node: int) -> int:
        """Number of tokens in ``node``'s sequence."""
        return len(self._seq[node])

    def retain(self, node: int) -> None:
        """Add a reference to ``node``."""
        self._refs[node] += 1

    def release(self, node: int) -> None:
        """Drop a reference; the node is forgotten at zero (its rows stay in the expert's cache)."""
        self._refs[node] -= 1
        if self._refs[node] == 0:
            del self._refs[node], self._seq[node]


class SequenceExpert(TokenizerSide):
    """Base class: an expert served by a backend that answers top-k for whole token sequences.

    Args:
        tokenizer: the model's fast Hugging Face tokenizer (held locally: it defines the
            vocabulary, the token bytes, the stop ids and the fingerprint).
        name: short name.
        top_k: how many log-probabilities to ask for per position; -1 = the whole vocabulary.
        device: where returned tensors live (match the other experts of an ensemble).
        dtype: dtype of returned log-probabilities (float32 like local experts, or float64).
        model_info: what :func:`read_model_config` found next to the tokenizer (extra EOS ids,
            BOS, context window).
        context_window: overrides the context window (None: from ``model_info``, else unknown).
        cache_bytes: bound on the cached rows (LRU); 0 disables caching.
        score_mode: how ``score_chunks`` asks: "echo" (one teacher-forced query of the whole
            text; its rows also carry the exact log-probability of each next token), "prefixes"
            (a next-token query per scored prefix, all in one batch), or "auto" (echo, except
            when k covers the vocabulary and a few tokens are scored after a long context, where
            both are exact and prefixes transfer less).

    Attributes (besides the expert interface): ``cache_hits``/``cache_misses`` count rows
    answered from the cache / by the backend.
    """

    def __init__(self, tokenizer, name: str, top_k: int = 20, device="cpu", dtype=None,
                 model_info: dict | None = None, context_window: int | None = None,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, score_mode: str = "auto") -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(f"expert {name!r}: only fast tokenizers (tokenizer.json) are supported")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not (top_k == -1 or top_k >= 1):
            raise ValueError(f"top_k must be a positive integer or -1 (the whole vocabulary), got {top_k!r}")
        if score_mode not in SCORE_MODES:
            raise ValueError(f"score_mode must be one of {SCORE_MODES}, got {score_mode!r}")
        if cache_bytes < 0:
            raise ValueError(f"cache_bytes must be >= 0, got {cache_bytes}")
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype, None)
        if dtype is None:
            dtype = torch.float32
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype of a top-k expert's log-probabilities must be float32 or float64, got {dtype}")
        self.tokenizer = tokenizer
        self.name = name
        self.path: str | None = None
        self.top_k = top_k
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was asked for but CUDA is not available; use device='cpu'")
        self.dtype = dtype
        self.vocab_size = len(tokenizer)
        info = model_info or {}
        self._extra_eos = [int(x) for x in info.get("eos", []) if isinstance(x, int)]
        self._bos = info.get("bos")
        self.context_window = context_window if context_window is not None else info.get("context_window")
        self.score_mode = score_mode
        self.store = SequenceStore()
        self.forward_calls = 0
        self.forward_rows = 0
        self.cache_hits = 0
        self.cache_misses = 0
        self._next_cache = _LRU(cache_bytes)
        self._forced_cache = _LRU(cache_bytes)

    # ----------------------------------------------------------------------------- identity
    @cached_property
    def stop_ids(self) -> tuple[int, ...]:
        """EOS / end-of-turn ids: the tokenizer's EOS plus those of config files shipped with it."""
        ids: set[int] = set(self._extra_eos)
        eos = self.tokenizer.eos_token_id
        if isinstance(eos, int):
            ids.add(eos)
        return tuple(sorted(i for i in ids if 0 <= i < self.vocab_size))

    @cached_property
    def start_id(self) -> int:
        """Token used to condition on an empty text (BOS, else EOS), as for local experts."""
        return self.first_start_id(self.tokenizer.bos_token_id, self._bos, self.tokenizer.eos_token_id)

    def describe(self) -> dict:
        """A JSON-able reference to this expert (for recipes); subclasses say what reloads it."""
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        """Backend queries, rows, cache hits/misses and cache sizes (JSON-able)."""
        return {"forward_calls": self.forward_calls, "forward_rows": self.forward_rows,
                "cache_hits": self.cache_hits, "cache_misses": self.cache_misses,
                "cached_rows": len(self._next_cache) + len(self._forced_cache),
                "cached_bytes": self._next_cache.bytes + self._forced_cache.bytes}

    def clear_cache(self) -> None:
        """Forget every cached answer (e.g. after the model behind the endpoint changed)."""
        self._next_cache.clear()
        self._forced_cache.clear()

    # ----------------------------------------------------------------------------- backend
    def _query_next(self, seqs: list[tuple[int, ...]]) -> list[TopK]:
        """Top-k answer for the token after each sequence (one entry per sequence).

        Implementations batch the sequences into as few backend calls as they can and add to
        ``forward_calls`` / ``forward_rows``.
        """
        raise NotImplementedError

    def _query_forced(self, seqs: list[tuple[int, ...]], starts: list[int]) -> list[list[TopK]]:
        """Teacher-forced answers: for sequence ``s`` and start ``a``, the top-k of the token
        after ``s[:j]`` for ``j = a .. len(s)`` (``len(s) - a + 1`` entries), each including the
        entry of ``s[j]`` itself when ``j < len(s)``. Counts calls like :meth:`_query_next`."""
        raise NotImplementedError

    def _dense(self, top: TopK) -> torch.Tensor:
        return dense_logprobs(top[0], top[1], self.vocab_size, self.dtype)

    def _next_rows(self, keys: list[tuple[int, ...]]) -> list[torch.Tensor]:
        """Next-token rows for each key, from the cache or one batched backend query."""
        rows: list[torch.Tensor | None] = [None] * len(keys)
        missing: dict[tuple[int, ...], list[int]] = {}
        for i, k in enumerate(keys):
            row = self._next_cache.get(k)
            if row is not None:
                rows[i] = row
                self.cache_hits += 1
            else:
                missing.setdefault(k, []).append(i)
        if missing:
            todo = list(missing)
            self.cache_misses += len(todo)
            answers = self._query_next(todo)
            if len(answers) != len(todo):
                raise RuntimeError(
                    f"expert {self.name!r}: asked about {len(todo)} sequences, got {len(answers)} answers")
            for k, top in zip(todo, answers):
                row = self._dense(top)
                self._next_cache.put(k, row)
                for i in missing[k]:
                    rows[i] = row
        return rows  # type: ignore[return-value]

    # ----------------------------------------------------------------------------- the engine's interface
    def _stack(self, rows: list[torch.Tensor]) -> torch.Tensor:
        if not rows:
            return torch.empty(0, self.vocab_size, dtype=self.dtype, device=self.device)
        return torch.stack(rows).to(self.device)

    def prefill(self, seqs: list[list[int]]) -> tuple[list[int], torch.Tensor]:
        """Nodes for whole token sequences and their next-token log-probs ``[len(seqs), V]``.

        Identical sequences share one node (retained once per extra caller, as local experts do).
        """
        keys = []
        for s in seqs:
            if len(s) == 0:
                raise ValueError("cannot prefill an empty token sequence")
            # +1: every query asks the server for one generated token (prompt + max_tokens must
            # fit the server's window), unlike a local forward pass.
            self.check_length(len(s) + 1, what="prompt plus the one token a query generates")
            keys.append(tuple(int(t) for t in s))
        rows = self._next_rows(keys)
        nodes: list[int] = []
        made: dict[tuple[int, ...], int] = {}
        for k in keys:
            if k in made:
                self.store.retain(made[k])
            else:
                made[k] = self.store.add(k)
            nodes.append(made[k])
        return nodes, self._stack(rows)

    def extend(self, parents: list[int], tokens: list[int]) -> tuple[list[int], torch.Tensor]:
        """One new token after each parent node; returns (new node ids, log-probs ``[M, V]``)."""
        keys = []
        for p, t in zip(parents, tokens):
            k = self.store.seq(p) + (int(t),)
            if self.context_window is not None and len(k) + 1 > self.context_window:
                raise ValueError(
                    f"generation reached expert {self.name!r}'s context window of {self.context_window} "
                    "tokens; lower max_new_tokens or shorten the prompt"
                )
            keys.append(k)
        rows = self._next_rows(keys)
        return [self.store.add(k) for k in keys], self._stack(rows)

    def _effective_top_k(self) -> int:
        """The k actually asked for (a subclass may lower it to a cap the backend imposes)."""
        return self.top_k

    def covers_vocab(self) -> bool:
        """Whether every answer lists the whole vocabulary (then results are exact)."""
        k = self._effective_top_k()
        return k == -1 or k >= self.vocab_size

    def _score_by_prefixes(self, full: tuple[int, ...], start: int) -> bool:
        """Score ``full`` from ``start`` by next-token queries of each prefix instead of one
        teacher-forced query (see ``score_mode``)."""
        if self.score_mode == "prefixes":
            return True
        if self.score_mode == "echo":
            return False
        # "auto": a teacher-forced row also carries the exact entry of the next token, which
        # matters when k is small; when k covers the vocabulary both ways are exact and the
        # cheaper one is the one that transfers fewer rows (a long context scored for a few
        # tokens: prefixes; most of the sequence scored: one teacher-forced query).
        return self.covers_vocab() and 2 * (len(full) - start + 1) < len(full) + 1

    def score_chunks(self, parents: list[int], chunks: list[list[int]]) -> list[torch.Tensor]:
        """Teacher-forced log-probs after each parent: for chunk c a tensor ``[len(c), V]`` whose
        row t is the distribution of the token after ``c[t]`` (as local experts)."""
        return self._forced(parents, chunks, predict=False)

    def forced_logprobs(self, prefixes: list[list[int]], chunks: list[list[int]]) -> list[torch.Tensor]:
        """For each (prefix, chunk): ``[len(c), V]`` whose row t is the distribution that
        *predicts* ``c[t]`` (after ``prefix + c[:t]``), from one echoed request per sequence.

        Scoring uses this instead of prefill + score_chunks: every row then carries the scored
        token's own log-probability as the server reported it (the echoed entry), so a
        continuation's score is exact at any k; only the rest of each row is top-k + leftover.
        """
        nodes = [self.store.add(tuple(int(t) for t in p)) for p in prefixes]
        try:
            return self._forced(nodes, chunks, predict=True)
        finally:
            for n in nodes:
                self.store.release(n)

    def _forced(self, parents: list[int], chunks: list[list[int]], predict: bool) -> list[torch.Tensor]:
        # Rows j = a .. len(full) are "after full[:j]" (informed by full[j]'s own entry); predict
        # shifts the window one token earlier and drops the row after the last token.
        fulls, starts = [], []
        for p, c in zip(parents, chunks):
            full = self.store.seq(p) + tuple(int(t) for t in c)
            self.check_length(len(full) + 1, what="text plus the one token a query generates")
            fulls.append(full)
            starts.append(len(full) - len(c) + (0 if predict else 1))

        def key(full: tuple[int, ...], j: int) -> tuple:
            # Row after full[:j], informed by the exact entry of full[j] (-1: nothing follows).
            return (full[:j], full[j] if j < len(full) else -1)

        out: list[list[torch.Tensor | None]] = []
        missing: dict[tuple, tuple[tuple[int, ...], int]] = {}  # (full, start) -> itself, ordered
        by_prefix: list[tuple[int, list[tuple[int, ...]]]] = []  # (chunk index, prefix keys)
        for i, (full, a) in enumerate(zip(fulls, starts)):
            rows: list[torch.Tensor | None] = []
            if self._score_by_prefixes(full, a):
                by_prefix.append((i, [full[:j] for j in range(a, len(full) + 1)]))
                rows = [None] * (len(full) - a + 1)
            else:
                for j in range(a, len(full) + 1):
                    row = self._forced_cache.get(key(full, j))
                    if row is None:
                        missing[(full, a)] = (full, a)
                    else:
                        self.cache_hits += 1
                    rows.append(row)
            out.append(rows)
        if by_prefix:
            flat = [k for _, keys in by_prefix for k in keys]
            got = self._next_rows(flat)
            pos = 0
            for i, keys in by_prefix:
                out[i] = got[pos : pos + len(keys)]
                pos += len(keys)
        if missing:
            todo = list(missing.values())
            answers = self._query_forced([f for f, _ in todo], [a for _, a in todo])
            if len(answers) != len(todo):
                raise RuntimeError(
                    f"expert {self.name!r}: asked to score {len(todo)} sequences, got {len(answers)} answers")
            fresh: dict[tuple, torch.Tensor] = {}
            for (full, a), tops in zip(todo, answers):
                if len(tops) != len(full) - a + 1:
                    raise RuntimeError(f"expert {self.name!r}: expected {len(full) - a + 1} scored positions, "
                                       f"got {len(tops)}")
                for j, top in zip(range(a, len(full) + 1), tops):
                    k = key(full, j)
                    if k not in fresh:
                        self.cache_misses += 1
                        fresh[k] = self._dense(top)
                        self._forced_cache.put(k, fresh[k])
            for full, a, rows in zip(fulls, starts, out):
                for r, j in enumerate(range(a, len(full) + 1)):
                    if rows[r] is None:
                        rows[r] = fresh[key(full, j)]
        if predict:
            out = [rows[:-1] for rows in out]
        return [self._stack(rows) for rows in out]  # type: ignore[arg-type]
