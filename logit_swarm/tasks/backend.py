"""How tasks reach the engine: shared decoding batches and per-expert likelihood tables.

A swarm evaluation has ``P`` particles (rows of ``W``) and ``n`` prompts. Generation-based
utilities decode all ``P x n`` rows in one call to ``Ensemble.generate`` with one weight vector
per row, so the experts' forward passes are batched across particles. Rows with the same prompt
and the same weights (identical particles, common after PSO restarts) are decoded once.

Likelihood-based utilities never decode: the experts score every (context, continuation) pair
once into a table (``Ensemble.table``, i.e. ``logit_swarm.score.build_table``), cached on the
task by expert identity, split and content; any later ``W`` is a cheap mixture of that table,
with no forward pass.

This is the only module of ``logit_swarm.tasks`` that imports the engine, and it does so
lazily, so that specs, parsers and metrics work without torch models.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..budget import check_budget_unit
from ..windows import check_policy, effective_policy

MODES = ("probs", "logits")
#: How many numbers a likelihood mixture may hold at once (see ``pair_logprobs``).
MIX_ELEMENTS = 1 << 24


def ensemble_class() -> Any:
    """The engine's ``Ensemble``, imported on first use (tasks build one per expert set)."""
    from logit_swarm.ensemble import Ensemble

    return Ensemble


def is_url(ref: str) -> bool:
    """Whether ``ref`` names an endpoint rather than a directory (the engine's own rule)."""
    from logit_swarm.experts.remote import is_url as engine_is_url

    return engine_is_url(str(ref))


def load_expert(path_or_url: str, model: str | None = None) -> Any:
    """An expert loaded by the engine's ``load_expert`` from a local model directory, or from an
    OpenAI-compatible endpoint URL (``model`` picks the served model)."""
    from logit_swarm.ensemble import load_expert as engine_load_expert

    if model is not None:
        return engine_load_expert(path_or_url, model=model)
    return engine_load_expert(path_or_url)


# --------------------------------------------------------------------------------------------
# Pools and weight matrices


@dataclass
class Pool:
    """What an evaluation runs on: the experts, one weight row per particle, and the mode."""

    experts: list[Any]
    W: np.ndarray  # [P, N]
    mode: str

    @property
    def key(self) -> tuple[int, ...]:
        """Identity of the expert list (object ids; the cache keeps the objects alive)."""
        return tuple(id(e) for e in self.experts)


def weight_matrix(W: Any, n_experts: int, mode: str) -> np.ndarray:
    """``W`` as a float [P, N] matrix, checked: a vector is one particle; rows must be finite;
    in mode "probs" every row needs a positive weight (all-non-positive rows are an error, never
    silently uniform, as in the engine's mixing rule)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    arr = np.asarray(W, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != n_experts:
        raise ValueError(f"W must have shape [particles, {n_experts}] (one column per expert), "
                         f"got {tuple(np.shape(W))}")
    if arr.shape[0] == 0:
        raise ValueError("W has no rows: pass at least one particle")
    if not np.all(np.isfinite(arr)):
        bad = np.where(~np.all(np.isfinite(arr), axis=1))[0]
        raise ValueError(f"W rows {bad.tolist()[:10]} contain NaN or inf")
    if mode == "probs":
        bad = np.where(~np.any(arr > 0, axis=1))[0]
        if bad.size:
            raise ValueError(f"W rows {bad.tolist()[:10]} have no positive weight; mode 'probs' "
                             "mixes max(w, 0)/sum, so each row needs at least one w_i > 0")
    return arr


def resolve_pool(experts: Any, W: Any, mode: str | None) -> Pool:
    """Accept a list of experts with ``W``, or an ``Ensemble`` (``W``/``mode`` default to its own)."""
    if hasattr(experts, "experts") and hasattr(experts, "weights"):
        ens = experts
        expert_list = list(ens.experts)
        if W is None:
            W = np.asarray(ens.weights, dtype=np.float64)
            mode = mode or getattr(ens, "mode", "probs")
    else:
        expert_list = list(experts)
    if not expert_list:
        raise ValueError("no experts given")
    if W is None:
        raise ValueError("W is required with a list of experts: one row of weights per particle")
    mode = mode or "probs"
    return Pool(expert_list, weight_matrix(W, len(expert_list), mode), mode)


# --------------------------------------------------------------------------------------------
# The cache a task keeps


@dataclass
class EngineCache:
    """Per-task cache: ensembles by (experts, mode) and likelihood tables by (experts, key).

    Entries hold the expert objects themselves, so an id in a key cannot be reused by a new
    object while the entry lives. ``clear()`` drops everything.
    """

    ensembles: dict[tuple, tuple[list[Any], Any]] = field(default_factory=dict)
    tables: dict[tuple, tuple[list[Any], Any]] = field(default_factory=dict)
    table_builds: int = 0
    digests: dict[tuple, tuple[Any, Any, str]] = field(default_factory=dict)

    def clear(self) -> None:
        """Forget every cached ensemble and table."""
        self.ensembles.clear()
        self.tables.clear()
        self.digests.clear()

    def ensemble(self, pool: Pool) -> Any:
        """An ``Ensemble`` over the pool's experts (uniform weights; rows bring their own)."""
        k = (pool.key, pool.mode)
        if k not in self.ensembles:
            Ensemble = ensemble_class()
            n = len(pool.experts)
            ens = Ensemble(list(pool.experts), weights=[1.0 / n] * n, mode=pool.mode)
            self.ensembles[k] = (list(pool.experts), ens)
        return self.ensembles[k][1]

    def _digest(self, contexts: Sequence[str], continuations: Sequence[str]) -> str:
        """Content hash of the pairs; remembered for the same two list objects (a search passes
        the same lists every iteration; the entry keeps them alive, so ids cannot be reused)."""
        memo = self.digests
        key = (id(contexts), id(continuations))
        hit = memo.get(key)
        if hit is not None and hit[0] is contexts and hit[1] is continuations:
            return hit[2]
        digest = hashlib.sha256()
        for c, t in zip(contexts, continuations, strict=True):
            digest.update(c.encode("utf-8", "surrogatepass") + b"\x00")
            digest.update(t.encode("utf-8", "surrogatepass") + b"\x01")
        if len(memo) > 64:  # bounded: a few splits per task
            memo.clear()
        memo[key] = (contexts, continuations, digest.hexdigest())
        return memo[key][2]

    def table(self, pool: Pool, split_key: str, contexts: Sequence[str],
              continuations: Sequence[str]) -> Any:
        """The per-expert likelihood table for these pairs, built at most once per expert set.

        Mode "logits" needs each expert's full next-unit distribution at every scored unit (its
        normaliser depends on the weights), so its table keeps them; such a table also serves
        mode "probs". The table is built by the pool's ensemble so that it uses the same units
        (and byte-alignment settings) as generation.
        """
        # The policy in force is part of the key: a table cut under "left" is not the "error" one.
        base = (pool.key, split_key, len(contexts), self._digest(contexts, continuations), effective_policy())
        full = pool.mode == "logits"
        for keep_full in ((True,) if full else (False, True)):
            if base + (keep_full,) in self.tables:
                return self.tables[base + (keep_full,)][1]
        table = self.ensemble(pool).table(list(contexts), list(continuations), keep_full=full)
        self.tables[base + (full,)] = (list(pool.experts), table)
        self.table_builds += 1
        return table


# --------------------------------------------------------------------------------------------
# Batched decoding and scoring


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings of a task.

    ``max_new_tokens`` counts ``budget_unit`` (:mod:`logit_swarm.budget`): by default tokens of
    the reference tokenizer ``budget_tokenizer`` (expert index or name, default 0, the first).
    ``strip`` trims outputs as the paper does after decoding; ``chat`` sends each prompt as one
    user message (the engine applies each expert's chat template), as the paper does for the
    reward-model and human-interest objectives.
    """

    max_new_tokens: int = 10
    temperature: float = 0.0
    seed: int | None = 0
    stop: tuple[str, ...] | None = None
    strip: bool = True
    max_rows: int | None = None  # rows per engine call; None lets the engine batch everything
    chat: bool = False
    # "left": an expert whose window is too short sees the prompt's end; "error" refuses;
    # None: the task's / run's policy (default "left"). See logit_swarm/windows.py.
    truncation: str | None = None
    # What max_new_tokens counts (logit_swarm.budget): reference-tokenizer tokens, bytes or units.
    budget_unit: str = "tokens"
    budget_tokenizer: int | str = 0

    @classmethod
    def from_spec(cls, spec: dict, **defaults: Any) -> GenerationSettings:
        """Read ``max_new_tokens``, ``temperature``, ``seed``, ``stop``, ``strip``, ``max_rows``,
        ``chat``, ``truncation`` from a spec; ``defaults`` fill what the spec leaves out."""
        vals = {**defaults}
        for key in ("max_new_tokens", "temperature", "seed", "stop", "strip", "max_rows", "chat",
                    "truncation", "budget_unit", "budget_tokenizer"):
            if key in spec:
                vals[key] = spec[key]
        if isinstance(vals.get("stop"), str):
            vals["stop"] = (vals["stop"],)
        elif vals.get("stop") is not None:
            vals["stop"] = tuple(vals["stop"])
        out = cls(**vals)
        if int(out.max_new_tokens) < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {out.max_new_tokens}")
        check_budget_unit(out.budget_unit)
        check_policy(out.truncation)
        if float(out.temperature) < 0:
            raise ValueError(f"temperature must be >= 0 (0 is greedy), got {out.temperature}")
        return out


def _prompt_key(prompt: Any) -> Any:
    return prompt if isinstance(prompt, str) else repr(prompt)


def generate_flat(cache: EngineCache, pool: Pool, prompts: Sequence[Any], row_weights: np.ndarray,
                  gen: GenerationSettings) -> list[str]:
    """Decode one prompt per row, each with its own weight row, in shared engine batches.

    Rows with the same prompt and the same weights are decoded once (with temperature 0 they
    would decode identically; with sampling, the engine's seeding decides, and reusing one draw
    is what evaluating that particle alone would give).
    """
    if len(prompts) != row_weights.shape[0]:
        raise ValueError(f"{len(prompts)} prompts but {row_weights.shape[0]} weight rows")
    if not prompts:
        return []
    if gen.chat:
        prompts = [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in prompts]
    slot: dict[tuple, int] = {}
    keep: list[int] = []
    where = []
    for i, p in enumerate(prompts):
        k = (_prompt_key(p), row_weights[i].tobytes())
        if k not in slot:
            slot[k] = len(keep)
            keep.append(i)
        where.append(slot[k])
    rows = [prompts[i] for i in keep]
    row_w = row_weights[keep]
    ens = cache.ensemble(pool)
    step = gen.max_rows or len(rows)
    texts: list[str] = []
    for start in range(0, len(rows), step):
        texts.extend(ens.generate(
            rows[start:start + step],
            max_new_tokens=int(gen.max_new_tokens),
            temperature=float(gen.temperature),
            seed=gen.seed,
            stop=list(gen.stop) if gen.stop else None,
            weights=row_w[start:start + step],
            truncation=gen.truncation,
            budget_unit=gen.budget_unit,
            budget_tokenizer=gen.budget_tokenizer,
        ))
    if len(texts) != len(rows):
        raise RuntimeError(f"engine returned {len(texts)} outputs for {len(rows)} rows")
    if gen.strip:
        texts = [t.strip() for t in texts]
    return [texts[j] for j in where]


def generate_rows(cache: EngineCache, pool: Pool, prompts: Sequence[Any],
                  gen: GenerationSettings) -> list[list[str]]:
    """Decode every (particle, prompt) row in shared batches; returns ``out[p][i]`` as text.

    Rows are particle-major: row ``p * n + i`` is particle ``p`` on prompt ``i``, with that
    particle's weights.
    """
    W = pool.W
    n = len(prompts)
    if n == 0:
        return [[] for _ in range(W.shape[0])]
    rows = [p for _ in range(W.shape[0]) for p in prompts]
    flat = generate_flat(cache, pool, rows, np.repeat(W, n, axis=0), gen)
    return [flat[p * n:(p + 1) * n] for p in range(W.shape[0])]


def pair_logprobs(cache: EngineCache, pool: Pool, split_key: str, contexts: Sequence[str],
                  continuations: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Log P(continuation | context) in nats for every particle and pair: ([P, n_pairs], bytes).

    The experts run only the first time these pairs are seen with these experts; afterwards this
    is arithmetic on the cached table. ``bytes`` is each continuation's UTF-8 length.
    """
    if len(contexts) != len(continuations):
        raise ValueError("contexts and continuations must have the same length")
    if not contexts:
        return np.zeros((pool.W.shape[0], 0)), np.zeros(0, dtype=np.int64)
    table = cache.table(pool, split_key, contexts, continuations)
    # The mixture materialises [particles, units, experts]; bound it by scoring particles in
    # chunks of about MIX_ELEMENTS numbers (1,000 particles x 16k units x 10 experts would
    # otherwise need 1.3 GB at once).
    units = getattr(table, "unit_logprobs", None)
    per_particle = max(1, (units.shape[0] * units.shape[1]) if units is not None else 1)
    chunk = max(1, MIX_ELEMENTS // per_particle)
    lp = np.concatenate([np.asarray(table.logprob(pool.W[i:i + chunk], mode=pool.mode), dtype=np.float64)
                         for i in range(0, pool.W.shape[0], chunk)], axis=0)
    if lp.shape != (pool.W.shape[0], len(contexts)):
        raise RuntimeError(f"table.logprob returned shape {lp.shape}, expected "
                           f"{(pool.W.shape[0], len(contexts))}")
    nb = getattr(table, "num_bytes", None)
    num_bytes = (np.asarray(nb, dtype=np.int64) if nb is not None
                 else np.array([len(c.encode("utf-8")) for c in continuations], dtype=np.int64))
    return lp, num_bytes
