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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .align.bytes import STOP as BYTE_STOP
from .align.bytes import ByteTrack, split_prompt
from .mixing import mix_logprobs, sample_units


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


def _row_rngs(seed: int | None, n: int):
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**63))
    return [np.random.default_rng([seed, r]) for r in range(n)]


def prompt_ids_for(expert, prompt) -> list[int]:
    """Token ids of one prompt for one expert: plain text, or chat messages via its own template."""
    if isinstance(prompt, str):
        return expert.encode(prompt)
    if isinstance(prompt, (list, tuple)) and all(isinstance(m, dict) for m in prompt):
        return expert.render_chat(list(prompt))
    raise ValueError(
        "a prompt must be a string or a list of chat messages ({'role': ..., 'content': ...}); "
        f"got {type(prompt).__name__}"
    )


def generate_rows(
    experts,
    unit: str,
    prompts: list,
    weights: np.ndarray,
    mode: str,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    stop: list[str] | None = None,
    truncation: str | None = None,
    byte_beam: int | None = 8,
    byte_prune: float = 1e-4,
    progress=None,
) -> list[Generation]:
    """Decode every row; see the module docstring. ``weights`` is ``[len(prompts), N]``."""
    n_rows = len(prompts)
    stop = [s for s in (stop or []) if s]
    # Rows with the same prompt share the initial state.
    prompt_key: dict[str, int] = {}
    row_key = []
    uniq_prompts = []
    for p in prompts:
        k = repr(p)
        if k not in prompt_key:
            prompt_key[k] = len(uniq_prompts)
            uniq_prompts.append(p)
        row_key.append(prompt_key[k])

    tracks, states = [], []  # states[e][key] = that expert's state for state key
    for e in experts:
        ids = [prompt_ids_for(e, p) for p in uniq_prompts]
        ids = [_truncate(e, x, max_new_tokens if unit == "token" else 0, truncation) for x in ids]
        if unit == "token":
            tr = TokenTrack(e)
            st = tr.start(ids)
        else:
            tr = ByteTrack(e, beam=byte_beam, prune=byte_prune)
            splits = [split_prompt(e, x, isinstance(p, str) and p == "") for x, p in zip(ids, uniq_prompts)]
            st = tr.start([h for h, _ in splits], [t for _, t in splits])
        tracks.append(tr)
        states.append(dict(enumerate(st)))
    next_key = len(uniq_prompts)

    if unit == "token":
        stop_units = set()
        for e in experts:
            stop_units.update(e.stop_ids)
    else:
        stop_units = {BYTE_STOP}
    rngs = _row_rngs(seed, n_rows) if temperature > 0 else None
    outs = [Generation(text="") for _ in range(n_rows)]
    cut_rows: set[int] = set()  # rows whose text was already cut at a stop string
    buf: list[list[int]] = [[] for _ in range(n_rows)]
    active = list(range(n_rows))
    W = np.asarray(weights, dtype=np.float64)
    dec = experts[0].tokenizer if unit == "token" else None

    for step in range(max_new_tokens):
        if not active:
            break
        keys = sorted({row_key[r] for r in active})
        kpos = {k: i for i, k in enumerate(keys)}
        per_expert = [torch.as_tensor(tr.distributions([states[e_i][k] for k in keys]))
                      for e_i, tr in enumerate(tracks)]
        dtype = torch.float64 if any(d.dtype == torch.float64 for d in per_expert) else torch.float32
        lp = torch.stack([d.to(dtype).cpu() for d in per_expert])  # [N, S, U]
        idx = torch.tensor([kpos[row_key[r]] for r in active])
        mixed = mix_logprobs(lp.index_select(1, idx), W[active], mode)
        uniforms = np.array([rngs[r].random() for r in active]) if rngs else None
        picks = sample_units(mixed, temperature, top_p, uniforms).tolist()
        chosen_lp = mixed.gather(1, torch.tensor(picks)[:, None]).squeeze(1).tolist()

        last_step = step == max_new_tokens - 1
        child_of: dict[tuple[int, int], int] = {}
        still = []
        for r, u, l in zip(active, picks, chosen_lp):
            outs[r].units.append(u)
            outs[r].logprobs.append(float(l))
            if u in stop_units:
                outs[r].finish_reason = "stop"
                continue
            buf[r].append(u)
            if stop:
                text = _render(unit, dec, buf[r])
                cut = _first_stop(text, stop)
                if cut is not None:
                    outs[r].finish_reason = "stop"
                    outs[r].text = text[:cut]
                    cut_rows.add(r)
                    continue
            if last_step:
                continue
            old = row_key[r]
            if (old, u) not in child_of:
                child_of[(old, u)] = next_key
                next_key += 1
            row_key[r] = child_of[(old, u)]
            still.append(r)
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

    for e_i, tr in enumerate(tracks):  # states of rows cut by max_new_tokens == 0
        for k in list(states[e_i]):
            tr.release(states[e_i].pop(k))
    for r in range(n_rows):
        if r not in cut_rows:
            outs[r].text = _render(unit, dec, buf[r])
    return outs


def _render(unit: str, tokenizer, units: list[int]) -> str:
    if unit == "token":
        return tokenizer.decode(units, skip_special_tokens=True)
    return bytes(units).decode("utf-8", errors="replace")


def _first_stop(text: str, stop: list[str]) -> int | None:
    cuts = [text.find(s) for s in stop if s in text]
    return min(cuts) if cuts else None


def _truncate(expert, ids: list[int], reserve: int, truncation: str | None) -> list[int]:
    """Apply the truncation policy to a prompt's ids (None: raise when it does not fit)."""
    window = expert.context_window
    if window is None or len(ids) + reserve <= window:
        return ids
    if truncation == "left":
        keep = max(1, window - reserve)
        return ids[-keep:]
    if truncation not in (None, "error"):
        raise ValueError(f"unknown truncation policy {truncation!r}; use None or 'left'")
    expert.check_length(len(ids) + reserve, what=f"prompt ({len(ids)} tokens) plus {reserve} new tokens")
    return ids
