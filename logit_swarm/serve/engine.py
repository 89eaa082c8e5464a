"""A step-wise ensemble decoder whose batch changes between steps (continuous batching).

:func:`~logit_swarm.decode.generate_rows` decodes a fixed set of rows from start to end. The
server needs rows that *join* the running batch at the next step and *leave* when they finish or
their client hangs up. :class:`StepDecoder` keeps the per-expert states of the live rows between
calls: :meth:`StepDecoder.add` prefills new rows (one batched prefill per expert for all rows that
join together), :meth:`StepDecoder.step` decodes one unit for every live row (one batched forward
per expert for all rows, whatever their weights, mode, temperature or stop strings) and
:meth:`StepDecoder.cancel` drops a row and frees its states.

It uses the same pieces as ``generate_rows`` (``TokenTrack`` / ``ByteTrack`` states shared by rows
with identical prompts, :func:`~logit_swarm.mixing.mix_logprobs`, ``greedy_probs`` and
``sample_units``, one random stream per row), so a row decodes exactly as it would alone: its
picks depend only on its own prompt, weights, settings and random stream.

Text follows the OpenAI / vLLM convention rather than ``Ensemble.generate``'s: a token row's text is
the decoding of (prompt tail + generated tokens) minus the decoding of the prompt tail, so the
leading space of a SentencePiece token is kept and ``prompt text + completion text`` decodes as
the whole; stop strings are matched in that text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..align.bytes import DEFAULT_BEAM, DEFAULT_PRUNE
from ..align.bytes import STOP as BYTE_STOP
from ..align.prompt import split_prompt
from ..align.view import make_byte_track
from ..decode import Generation, TokenTrack
from ..mixing import greedy_probs, mix_logprobs, sample_units

#: Prompt tokens decoded before the generated ones, so the first generated token keeps its
#: leading space (SentencePiece strips it at the start of a decoded sequence).
PROMPT_TAIL = 4


@dataclass
class RowSpec:
    """One row to decode.

    Attributes:
        ids: per expert, the prompt's token ids (already checked against the context window).
        empty: the prompt is the empty text (byte units start from the expert's start token).
        weights: [N] mixing weights; mode: "probs" or "logits".
        max_new: units to generate at most (≥ 1).
        temperature, top_p: sampling settings (temperature 0 = greedy).
        seed: (seed, stream) of the row's random stream, None for fresh entropy.
        stop: stop strings (the text is cut before the first occurrence).
        want_dist: whether :meth:`StepDecoder.step` should return the row's mixture distribution.
    """

    ids: list[list[int]]
    empty: bool
    weights: np.ndarray
    mode: str
    max_new: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: tuple[int, int] | None = None
    stop: list[str] = field(default_factory=list)
    want_dist: bool = False


@dataclass
class RowStep:
    """What one step did for one row."""

    row: int
    unit: int
    logprob: float
    dist: torch.Tensor | None  # [U] mixture log-probs (before temperature / top_p), if wanted
    expert_logprobs: list[float]  # log p_e(unit) of every expert
    finished: bool
    out: Generation  # the row's output so far (final when finished)
    text: str | None  # the row's text so far (None when it was not rendered this step)


@dataclass
class _Row:
    spec: RowSpec
    key: int
    rng: np.random.Generator | None
    tail: list[int]
    base: str  # decoding of the prompt tail
    out: Generation = field(default_factory=lambda: Generation(text=""))
    kept: list[int] = field(default_factory=list)  # units that are text (no STOP/EOS)


class StepDecoder:
    """Live rows of one ensemble, decoded one unit per :meth:`step` (see the module docstring).

    Args:
        experts, unit: the ensemble's experts and unit ("token" or "byte").
        byte_beam, byte_prune: byte-level pruning (align/bytes.py).
    """

    def __init__(self, experts, unit: str, byte_beam: int | None = DEFAULT_BEAM, byte_prune: float = DEFAULT_PRUNE):
        self.experts = list(experts)
        self.unit = unit
        if unit == "token":
            self.tracks = [TokenTrack(e) for e in self.experts]
            self.stop_units = {s for e in self.experts for s in e.stop_ids}
        else:
            self.tracks = [make_byte_track(e, beam=byte_beam, prune=byte_prune) for e in self.experts]
            self.stop_units = {BYTE_STOP}
        self.tokenizer = self.experts[0].tokenizer if unit == "token" else None
        self.rows: dict[int, _Row] = {}
        self.states: list[dict[int, object]] = [{} for _ in self.experts]  # per expert: key -> state
        self._next_row = 0
        self._next_key = 0

    def __len__(self) -> int:
        return len(self.rows)

    # ------------------------------------------------------------------ rows in and out
    def add(self, specs: list[RowSpec]) -> list[int]:
        """Prefill new rows (rows with identical prompts share one state); returns their ids."""
        keys: dict[tuple, int] = {}
        uniq: list[RowSpec] = []
        for s in specs:
            k = (repr(s.ids), s.empty)
            if k not in keys:
                keys[k] = self._next_key + len(uniq)
                uniq.append(s)
        if uniq:
            self._start(uniq, list(range(self._next_key, self._next_key + len(uniq))))
            self._next_key += len(uniq)
        ids = []
        for s in specs:
            rid = self._next_row
            self._next_row += 1
            rng = None
            if s.temperature > 0:
                rng = np.random.default_rng() if s.seed is None else np.random.default_rng([int(x) for x in s.seed])
            tail = list(s.ids[0][-PROMPT_TAIL:]) if self.unit == "token" else []
            self.rows[rid] = _Row(s, keys[(repr(s.ids), s.empty)], rng, tail, self._render_ids(tail))
            ids.append(rid)
        return ids

    def _start(self, uniq: list[RowSpec], keys: list[int]) -> None:
        for e_i, (e, tr) in enumerate(zip(self.experts, self.tracks)):
            ids = [s.ids[e_i] for s in uniq]
            if self.unit == "token":
                st = tr.start(ids)
            else:
                splits = [split_prompt(e, x, s.empty) for x, s in zip(ids, uniq)]
                st = tr.start([h for h, _ in splits], [t for _, t in splits])
            for k, s in zip(keys, st):
                self.states[e_i][k] = s

    def cancel(self, row: int) -> None:
        """Drop a live row (its client went away) and free the states nobody else uses."""
        r = self.rows.pop(row, None)
        if r is not None and all(o.key != r.key for o in self.rows.values()):
            self._release_key(r.key)

    def close(self) -> None:
        """Drop every row and free every state."""
        self.rows.clear()
        for k in list(self.states[0]):
            self._release_key(k)

    def _release_key(self, key: int) -> None:
        for e_i, tr in enumerate(self.tracks):
            s = self.states[e_i].pop(key, None)
            if s is not None:
                tr.release(s)

    # ------------------------------------------------------------------ one step
    def step(self, render: set[int] | None = None) -> list[RowStep]:
        """Decode one unit for every live row; finished rows leave. ``render``: rows whose text
        should be rendered this step (rows with stop strings always are)."""
        if not self.rows:
            return []
        active = list(self.rows)
        keys = sorted({self.rows[r].key for r in active})
        kpos = {k: i for i, k in enumerate(keys)}
        per_expert = [torch.as_tensor(tr.distributions([self.states[e_i][k] for k in keys]))
                      for e_i, tr in enumerate(self.tracks)]
        dtype = torch.float64 if any(d.dtype == torch.float64 for d in per_expert) else torch.float32
        lp = torch.stack([d.to(dtype).cpu() for d in per_expert])  # [N, S, U]
        pos = [kpos[self.rows[r].key] for r in active]
        if pos != list(range(lp.shape[1])):
            lp = lp.index_select(1, torch.tensor(pos))
        picks, chosen, dists = self._pick(active, lp)
        exp_lp = lp.gather(2, torch.tensor(picks)[None, :, None].expand(lp.shape[0], -1, 1))[:, :, 0].T.tolist()
        results, child_of = [], {}
        for i, r in enumerate(active):
            row = self.rows[r]
            done, text = self._advance_row(row, picks[i], chosen[i], render is not None and r in render)
            results.append(RowStep(r, picks[i], chosen[i], dists.get(i), exp_lp[i], done, row.out, text))
            if done:
                del self.rows[r]
                continue
            pair = (row.key, picks[i])
            if pair not in child_of:
                child_of[pair] = self._next_key
                self._next_key += 1
            row.key = child_of[pair]
        self._grow(child_of)
        for k in keys:
            self._release_key(k)
        return results

    def _pick(self, active: list[int], lp: torch.Tensor):
        """Per row: the picked unit, its mixture log-prob, and (rows that want it) the distribution."""
        specs = [self.rows[r].spec for r in active]
        picks, chosen = [0] * len(active), [0.0] * len(active)
        dists: dict[int, torch.Tensor] = {}
        for mode in sorted({s.mode for s in specs}):
            sel = [i for i, s in enumerate(specs) if s.mode == mode]
            W = np.stack([specs[i].weights for i in sel])
            sub = lp[:, sel] if len(sel) < len(active) else lp
            if mode == "probs" and all(specs[i].temperature == 0 and not specs[i].want_dist for i in sel):
                p_t, c_t = greedy_probs(sub, W)  # one exp pass, no log of the whole mixture
                for i, p, c in zip(sel, p_t.tolist(), c_t.tolist()):
                    picks[i], chosen[i] = p, c
                continue
            mixed = mix_logprobs(sub, W, mode)
            for t0, p0 in sorted({(specs[i].temperature, specs[i].top_p) for i in sel}):
                grp = [j for j, i in enumerate(sel) if (specs[i].temperature, specs[i].top_p) == (t0, p0)]
                u = np.array([self.rows[active[sel[j]]].rng.random() for j in grp]) if t0 > 0 else None
                got = sample_units(mixed[grp], t0, p0, u).tolist()
                for j, g in zip(grp, got):
                    picks[sel[j]] = g
            lps = mixed.gather(1, torch.tensor([picks[i] for i in sel])[:, None])[:, 0].tolist()
            for j, i in enumerate(sel):
                chosen[i] = lps[j]
                if specs[i].want_dist:
                    dists[i] = mixed[j]
        return picks, chosen, dists

    def _advance_row(self, row: _Row, u: int, lp_u: float, render: bool) -> tuple[bool, str | None]:
        """Record one picked unit; returns (finished, text if rendered)."""
        out, spec = row.out, row.spec
        out.units.append(u)
        out.logprobs.append(float(lp_u))
        if u in self.stop_units:
            out.finish_reason = "stop"
            out.text = self.text_of(row)
            return True, out.text
        row.kept.append(u)
        text = None
        if spec.stop or render or len(out.units) >= spec.max_new:
            text = self.text_of(row)
        if spec.stop:
            cuts = [text.find(s) for s in spec.stop if s in text]
            if cuts:
                out.finish_reason = "stop"
                out.text = text[: min(cuts)]
                return True, out.text
        if len(out.units) >= spec.max_new:
            out.text = text
            return True, text
        return False, text

    def _grow(self, child_of: dict[tuple[int, int], int]) -> None:
        """Advance every expert once for all new (state, unit) pairs."""
        if not child_of:
            return
        pairs = list(child_of)
        for e_i, tr in enumerate(self.tracks):
            new = tr.advance([self.states[e_i][k] for k, _ in pairs], [u for _, u in pairs])
            for pair, s in zip(pairs, new):
                self.states[e_i][child_of[pair]] = s

    # ------------------------------------------------------------------ text
    def _render_ids(self, ids: list[int]) -> str:
        if self.unit == "token":
            return self.tokenizer.decode(ids, skip_special_tokens=True)
        return bytes(ids).decode("utf-8", errors="replace")

    def prefix_lengths(self, units: list[int], tail: list[int] | None = None) -> list[int]:
        """``text_offset`` of each unit: the length of the text of the units before it (rendered
        after ``tail`` like a row's text), so offsets index into the returned text."""
        kept = [u for u in units if u not in self.stop_units]
        if self.unit != "token":
            return [len(self._render_ids(kept[:j])) for j in range(len(units))]
        tail = list(tail or [])
        base = self._render_ids(tail)
        texts = self.tokenizer.batch_decode([tail + kept[:j] for j in range(len(units))], skip_special_tokens=True)
        return [len(t) - len(base) if base and t.startswith(base) else len(self._render_ids(kept[:j]))
                for j, t in enumerate(texts)]

    def text_of(self, row: _Row) -> str:
        """The row's completion text (OpenAI convention, see the module docstring)."""
        if self.unit != "token":
            return self._render_ids(row.kept)
        whole = self._render_ids(row.tail + row.kept)
        if row.base and whole.startswith(row.base):
            return whole[len(row.base):]
        return self._render_ids(row.kept)


def topk(dist: torch.Tensor, k: int) -> list[tuple[int, float]]:
    """The ``k`` most probable units of a 1-D log-distribution (``-1`` = all), best first; ties go
    to the lower unit id, so the order never depends on the batch."""
    n = dist.shape[0]
    if k == 0:
        return []
    if k == -1 or k >= n:
        vals, idx = torch.sort(dist, descending=True, stable=True)
    else:
        vals, idx = torch.topk(dist, k)
    pairs = list(zip(idx.tolist(), vals.tolist()))
    pairs.sort(key=lambda p: (-p[1], p[0]))
    return pairs
