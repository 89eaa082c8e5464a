"""Batched ensemble decoding over rows (particle × prompt), with prefix sharing.

A *row* is one prompt with one weight vector. Rows whose (prompt, generated prefix) are identical
share one *state*, whatever their weights: every expert computes each state's next-unit
distribution once per step, in one batched forward for all states that need it. When rows that
shared a state pick different units, the state forks (its KV cache is shared up to the fork).

Per step:
  1. each expert gives the distributions of all live states ([S, U] per expert);
  2. each row mixes its state's distributions with its own weights (mixing.py) and picks a unit;
  3. (state, unit) pairs are deduplicated into child states, and each expert advances them in
     one batched call (one decode forward at token level; the byte-level tracker's new paths at
     byte level).

Units are tokens when all experts share one tokenizer (``TokenTrack``) and bytes + STOP
otherwise (``ByteTrack`` in align/bytes.py).

Per-row settings (used by the server, which decodes many requests in one call): ``max_new_tokens``,
``temperature``, ``top_p``, ``stop`` and ``seed`` take one value for every row or one value per
row. A row's output depends only on its own prompt, weights and settings, never on the other rows
of the call (its random stream is its own, see :func:`generate_rows`). ``on_step`` receives a
:class:`Step` after every step: the units just picked, their log-probabilities and the whole
mixture distributions, which is what streaming and top-k log-probabilities need.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .align.bytes import DEFAULT_BEAM, DEFAULT_PRUNE
from .align.bytes import STOP as BYTE_STOP
from .align.prompt import split_prompt
from .align.view import make_byte_track
from .mixing import greedy_probs, mix_logprobs, sample_units
from .windows import fit_prompt, truncation_run


class TokenTrack:
    """Token-level view of one expert: a state is a node of its KV cache."""

    def __init__(self, expert):
        self.expert = expert
        self._lp: dict[int, tuple[torch.Tensor, int]] = {}  # node -> (batch tensor, row)
        self._refs: dict[int, int] = {}

    def _adopt(self, nodes, lp):
        for r, nid in enumerate(nodes):
            if nid in self._lp:
                self._refs[nid] += 1
                self.expert.store.release(nid)  # prefill's extra retain; we count ourselves
            else:
                self._lp[nid] = (lp, r)
                self._refs[nid] = 1

    def start(self, prompt_ids: list[list[int]]) -> list[int]:
        """States (nodes) after each prompt; identical prompts share one node."""
        nodes, lp = self.expert.prefill(prompt_ids)
        self._adopt(nodes, lp)
        return nodes

    def distributions(self, states: list[int]) -> torch.Tensor:
        """Next-token log-probabilities ``[len(states), V]``."""
        srcs = [self._lp[s] for s in states]
        first = srcs[0][0]
        if all(t is first for t, _ in srcs):
            rows = [r for _, r in srcs]
            if rows == list(range(first.shape[0])):
                return first
            return first.index_select(0, torch.tensor(rows, device=first.device))
        return torch.stack([t[r] for t, r in srcs])

    def advance(self, states: list[int], units: list[int]) -> list[int]:
        """Child states after one token each (one batched forward)."""
        nodes, lp = self.expert.extend(states, units)
        self._adopt(nodes, lp)
        return nodes

    def release(self, state: int) -> None:
        """Done with one reference to ``state``."""
        self._refs[state] -= 1
        if self._refs[state] == 0:
            del self._refs[state], self._lp[state]
            self.expert.store.release(state)


@dataclass
class Generation:
    """One row's output: text, the units it picked, their mixture log-probs, why it stopped."""

    text: str
    units: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str = "length"  # "stop" (STOP unit or stop string) or "length"


@dataclass
class Step:
    """What one decode step did, passed to ``generate_rows(on_step=...)``.

    Attributes:
        step: 0-based step number.
        rows: the rows that picked a unit at this step, in order.
        units: the unit each of those rows picked.
        logprobs: the mixture log-probability of each picked unit.
        dists: ``[len(rows), U]`` mixture log-probabilities of the step (before temperature and
            top_p), one row per entry of ``rows``.
        finished: rows that finished at this step; their :class:`Generation` in ``outputs`` is
            final (text, units, finish reason).
        outputs: every row's :class:`Generation` so far.
    """

    step: int
    rows: list[int]
    units: list[int]
    logprobs: list[float]
    dists: torch.Tensor
    finished: list[int]
    outputs: list[Generation]


def _row_rngs(seed, n: int, sampled: list[bool]):
    """One random stream per row (None for rows that never sample).

    ``seed`` is an int or None (row r uses the stream (seed, r); None draws a fresh seed), or a
    sequence with one entry per row: a (seed, stream) pair, or None for fresh entropy.
    """
    if seed is None or isinstance(seed, (int, np.integer)):
        if seed is None:
            seed = int(np.random.SeedSequence().entropy % (2**63))
        return [np.random.default_rng([int(seed), r]) if sampled[r] else None for r in range(n)]
    seeds = list(seed)
    if len(seeds) != n:
        raise ValueError(f"got {len(seeds)} per-row seeds for {n} rows; give one per row")
    out = []
    for r, s in enumerate(seeds):
        if not sampled[r]:
            out.append(None)
        elif s is None:
            out.append(np.random.default_rng())
        else:
            out.append(np.random.default_rng([int(x) for x in s]))
    return out


def _per_row(value, n: int, name: str) -> list:
    """Broadcast a scalar to ``n`` rows, or check that a per-row sequence has ``n`` entries."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        return [value] * n
    vals = list(value)
    if len(vals) != n:
        raise ValueError(f"got {len(vals)} values of {name} for {n} rows; give one value or one per row")
    return vals


def _per_row_stops(stop, n: int) -> list[list[str]]:
    """``stop``: None, a list of strings (every row), or one list (or None) per row."""
    if stop is None:
        return [[] for _ in range(n)]
    if isinstance(stop, str):
        stop = [stop]
    stop = list(stop)
    if all(isinstance(s, str) for s in stop):
        shared = [s for s in stop if s]
        return [shared for _ in range(n)]
    if len(stop) == n and all(s is None or isinstance(s, (list, tuple)) for s in stop):
        return [[x for x in (s or []) if x] for s in stop]
    raise ValueError("stop must be a list of strings (every row) or one list of strings per row")


def _is_token_ids(prompt) -> bool:
    return (isinstance(prompt, (list, tuple)) and len(prompt) > 0
            and all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in prompt))


def prompt_ids_for(expert, prompt) -> list[int]:
    """Token ids of one prompt for one expert: plain text, chat messages via its own template, or
    a non-empty list of token ids of the expert's vocabulary (used as they are)."""
    if isinstance(prompt, str):
        return expert.encode(prompt)
    if _is_token_ids(prompt):
        ids = [int(t) for t in prompt]
        bad = [t for t in ids if not 0 <= t < expert.vocab_size]
        if bad:
            raise ValueError(
                f"token id {bad[0]} is outside expert {expert.name!r}'s vocabulary (0..{expert.vocab_size - 1})"
            )
        return ids
    if isinstance(prompt, (list, tuple)) and all(isinstance(m, dict) for m in prompt):
        return expert.render_chat(list(prompt))
    raise ValueError(
        "a prompt must be a string, a list of chat messages ({'role': ..., 'content': ...}) or a "
        "list of token ids; "
        f"got {type(prompt).__name__}"
    )


def generate_rows(
    experts,
    unit: str,
    prompts: list,
    weights: np.ndarray,
    mode: str,
    max_new_tokens,
    temperature=0.0,
    top_p=1.0,
    seed=None,
    stop=None,
    truncation: str | None = None,
    byte_beam: int | None = DEFAULT_BEAM,
    byte_prune: float = DEFAULT_PRUNE,
    progress=None,
    on_step=None,
    budget=None,
) -> list[Generation]:
    """Decode every row; see the module docstring. ``weights`` is ``[len(prompts), N]``.

    Args:
        prompts: per row a string, a list of chat messages, or (token units only) a list of
            token ids.
        max_new_tokens, temperature, top_p: one value, or one value per row.
        seed: an int or None (row r samples from the stream (seed, r)), or one entry per row:
            a (seed, stream) pair or None (fresh entropy). Rows with temperature 0 draw nothing.
        stop: None, a list of strings (every row), or one list of strings (or None) per row.
        truncation: "left" (default: an expert whose window is too short sees the prompt's
            end, keeping room for the new units), "error", or None (the enclosing run's); see
            logit_swarm/windows.py.
        on_step: called with a :class:`Step` after the units of each step are picked.
        budget: None, or a :class:`logit_swarm.budget.BudgetRule` asked before a row emits a
            unit; a row whose budget (in another unit than the ensemble's) would be exceeded
            finishes without that unit (reason "length"; it is still listed in the Step).
    """
    n_rows = len(prompts)
    max_new = [int(m) for m in _per_row(max_new_tokens, n_rows, "max_new_tokens")]
    temps = [float(t) for t in _per_row(temperature, n_rows, "temperature")]
    tops = [float(p) for p in _per_row(top_p, n_rows, "top_p")]
    stops = _per_row_stops(stop, n_rows)
    if unit != "token" and any(_is_token_ids(p) for p in prompts):
        raise ValueError("token-id prompts need token units (experts that share one tokenizer); "
                         "give this ensemble text prompts")
    # Rows with the same prompt share the initial state.
    prompt_key: dict[str, int] = {}
    row_key = []
    uniq_prompts = []
    reserve: list[int] = []  # per unique prompt: the most new tokens any of its rows asks for
    for r, p in enumerate(prompts):
        k = repr(p)
        if k not in prompt_key:
            prompt_key[k] = len(uniq_prompts)
            uniq_prompts.append(p)
            reserve.append(0)
        row_key.append(prompt_key[k])
        reserve[prompt_key[k]] = max(reserve[prompt_key[k]], max_new[r])

    # Each expert's prompts, fitted to its window; cuts are reported once for the whole call.
    with truncation_run(truncation) as policy:
        starts = [[_fit(e, prompt_ids_for(e, p), unit, reserve[i], p if isinstance(p, str) else None, policy)
                   for i, p in enumerate(uniq_prompts)] for e in experts]
    tracks, states = [], []  # states[e][key] = that expert's state for state key
    try:
        for e, fitted in zip(experts, starts):
            if unit == "token":
                tr = TokenTrack(e)
                st = tr.start(fitted)
            else:
                tr = make_byte_track(e, beam=byte_beam, prune=byte_prune)
                st = tr.start([h for h, _ in fitted], [t for _, t in fitted])
            tracks.append(tr)
            states.append(dict(enumerate(st)))
        next_key = len(uniq_prompts)

        if unit == "token":
            stop_units = set()
            for e in experts:
                stop_units.update(e.stop_ids)
        else:
            stop_units = {BYTE_STOP}
        sampled = [t > 0 for t in temps]
        rngs = _row_rngs(seed, n_rows, sampled) if any(sampled) else None
        # One (temperature, top_p) for all rows is the common case: one sampling call per step.
        settings = sorted({(t, p) for t, p in zip(temps, tops)})
        outs = [Generation(text="") for _ in range(n_rows)]
        buf: list[list[int]] = [[] for _ in range(n_rows)]
        active = [r for r in range(n_rows) if max_new[r] > 0]
        W = np.asarray(weights, dtype=np.float64)
        dec = experts[0].tokenizer if unit == "token" else None

        for step in range(max(max_new, default=0)):
            if not active:
                break
            keys = sorted({row_key[r] for r in active})
            kpos = {k: i for i, k in enumerate(keys)}
            per_expert = [torch.as_tensor(tr.distributions([states[e_i][k] for k in keys]))
                          for e_i, tr in enumerate(tracks)]
            dtype = torch.float64 if any(d.dtype == torch.float64 for d in per_expert) else torch.float32
            lp = torch.stack([d.to(dtype).cpu() for d in per_expert])  # [N, S, U]
            rows_states = [kpos[row_key[r]] for r in active]
            if rows_states != list(range(lp.shape[1])):  # rows sharing a state: one row each
                lp = lp.index_select(1, torch.tensor(rows_states))
            if mode == "probs" and on_step is None and settings == [(0.0, settings[0][1])]:
                # Greedy in mode "probs" with nobody asking for the distributions: the argmax of
                # Σ w̃ p and the log of the chosen entry are all that is needed (one exp pass).
                picks_t, chosen_t = greedy_probs(lp, W[active])
                picks, chosen_lp = picks_t.tolist(), chosen_t.tolist()
                mixed = None
            else:
                mixed = mix_logprobs(lp, W[active], mode)
            if mixed is None:
                pass
            elif len(settings) == 1:
                t0, p0 = settings[0]
                uniforms = np.array([rngs[r].random() for r in active]) if t0 > 0 else None
                picks = sample_units(mixed, t0, p0, uniforms).tolist()
            else:
                picks = [0] * len(active)
                for t0, p0 in settings:
                    sel = [i for i, r in enumerate(active) if temps[r] == t0 and tops[r] == p0]
                    if not sel:
                        continue
                    uniforms = np.array([rngs[active[i]].random() for i in sel]) if t0 > 0 else None
                    got = sample_units(mixed[sel], t0, p0, uniforms).tolist()
                    for i, u in zip(sel, got):
                        picks[i] = u
            if mixed is not None:
                chosen_lp = mixed.gather(1, torch.tensor(picks)[:, None]).squeeze(1).tolist()

            child_of: dict[tuple[int, int], int] = {}
            still, finished = [], []
            for r, u, lp_u in zip(active, picks, chosen_lp):
                if budget is not None and u not in stop_units and budget.over(r, buf[r], u):
                    outs[r].text = _render(unit, dec, buf[r])
                    finished.append(r)
                    continue
                outs[r].units.append(u)
                outs[r].logprobs.append(float(lp_u))
                if u in stop_units:
                    outs[r].finish_reason = "stop"
                    outs[r].text = _render(unit, dec, buf[r])
                    finished.append(r)
                    continue
                buf[r].append(u)
                if stops[r] and _tail_has_stop(unit, dec, buf[r], stops[r]):
                    text = _render(unit, dec, buf[r])
                    cut = _first_stop(text, stops[r])
                    if cut is not None:
                        outs[r].finish_reason = "stop"
                        outs[r].text = text[:cut]
                        finished.append(r)
                        continue
                if step == max_new[r] - 1:
                    outs[r].text = _render(unit, dec, buf[r])
                    finished.append(r)
                    continue
                old = row_key[r]
                if (old, u) not in child_of:
                    child_of[(old, u)] = next_key
                    next_key += 1
                row_key[r] = child_of[(old, u)]
                still.append(r)
            if on_step is not None:  # before the forward pass, so a stream gets its unit sooner
                on_step(Step(step, list(active), picks, chosen_lp, mixed, finished, outs))
            # Advance every expert once for all new states, then free the old ones: every row
            # that is still active has moved to a child key, so no old key is used again.
            if child_of:
                pairs = list(child_of)
                for e_i, tr in enumerate(tracks):
                    new = tr.advance([states[e_i][k] for k, _ in pairs], [u for _, u in pairs])
                    for pair, s in zip(pairs, new):
                        states[e_i][child_of[pair]] = s
            for e_i, tr in enumerate(tracks):
                for k in keys:
                    tr.release(states[e_i].pop(k))
            active = still
            if progress is not None:
                progress(step + 1, len(active))

    finally:
        # Every state still held is released, also when an expert or a stop check raised
        # midway: a failed request must not leave its KV caches behind (a server lives on).
        for e_i, tr in enumerate(tracks):
            for k in list(states[e_i]):
                tr.release(states[e_i].pop(k))
    return outs


def _render(unit: str, tokenizer, units: list[int]) -> str:
    if unit == "token":
        return tokenizer.decode(units, skip_special_tokens=True)
    return bytes(units).decode("utf-8", errors="replace")


def _tail_has_stop(unit: str, tokenizer, units: list[int], stop: list[str]) -> bool:
    """Whether a stop string appears in the text of the last few units.

    A stop string that was not in the text one unit ago ends in the newest unit, and every
    ordinary unit carries at least one byte, so it lies within the last ``len(stop bytes) + 1``
    units; the window adds slack for multi-byte characters split across units. Decoding only
    this window each step (instead of the whole text) keeps stop checks O(1) per step; the
    whole text is decoded only when a stop string is found.
    """
    window = max(len(x.encode("utf-8")) for x in stop) + 8
    tail = _render(unit, tokenizer, units[-window:])
    return any(x in tail for x in stop)


def _first_stop(text: str, stop: list[str]) -> int | None:
    cuts = [text.find(s) for s in stop if s in text]
    return min(cuts) if cuts else None


def _fit(expert, ids: list[int], unit: str, max_new: int, text: str | None, policy: str | None):
    """The start of one prompt for one expert, fitted to its window (windows.fit_prompt).

    Token units: the prompt keeps room for ``max_new`` tokens. Byte units: (head ids, tail
    bytes) of align/prompt.py; a prompt that does not fit is cut on the left in tokens, keeping
    room for ``min(max_new, window // 2)`` new bytes (each token carries at least one byte), and
    its cut ids are then covered from their own bytes; an uncut plain-text prompt is covered
    from its text (one definition for every split of a text).
    """
    what = f"prompt ({len(ids)} tokens) plus {max_new} new tokens" if unit == "token" else "prompt"
    if unit == "token":
        return fit_prompt(expert, ids, max_new, policy, what)
    window = expert.context_window
    # Room for the new bytes and for paths that spell the kept text with more tokens than its
    # canonical encoding: half the window (the covering runs over the whole kept prompt).
    fitted = fit_prompt(expert, ids, window // 2 if window else max_new, policy, what)
    return split_prompt(expert, fitted, text=text if len(fitted) == len(ids) else None)
