"""Per-expert context windows: what an expert sees when a text is longer than its window.

Experts in one pool often have different windows (a 2k-token model beside a 128k one). The
policy is per expert and the same for scoring, generation, tasks, the search and the server:

* ``"left"`` (the default): an expert whose window is too short sees the most recent part of the
  text that fits — left truncation *at that expert only*; the others see everything. A leading
  special token the tokenizer adds (BOS) is kept in front of the kept part, as the tokenizer's
  own ``truncation_side="left"`` does. Truncated rows are counted per expert and reported once
  per run as a :class:`TruncationWarning` naming the expert and how many rows were cut.
* ``"error"``: a text that does not fit is an error naming the expert, its window and the need.

Scoring at token level: a pair whose context plus continuation does not fit is scored with the
context's end; a continuation that alone needs more than half the window is scored in blocks of
``window // 2`` tokens, each after the ``window - window // 2`` tokens before it (a sliding
window; every scored token sees at least half a window of text, or all of it when there is
less). Generation reserves room for the new units: the prompt keeps its last
``window - max_new_tokens`` tokens (at byte level, where new bytes are not yet tokens, the room
kept is the bytes to score, or ``min(max_new_tokens, window // 2)`` when generating).

A *run* (:func:`truncation_run`) is what one report covers: one ``Ensemble`` call, one task
evaluation, or a whole search (the search opens a run around all its iterations, so each
expert is reported once however many tables and decodes it took). With nothing truncated the
policy changes nothing: one-hot reproduction stays exact.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

#: The policies, in the order the CLI lists them (the first is the default).
POLICIES = ("left", "error")
DEFAULT = POLICIES[0]


class TruncationWarning(UserWarning):
    """An expert saw only the end of some texts because its context window is too short."""


def check_policy(policy: str | None) -> str | None:
    """``policy`` if it is a known policy or None (inherit the run's), else a ValueError."""
    if policy is None or policy in POLICIES:
        return policy
    raise ValueError(f"unknown truncation policy {policy!r}; use one of {', '.join(POLICIES)} "
                     f"({DEFAULT!r} lets an expert with a short window see the end of the text)")


@dataclass
class _Run:
    policy: str | None = None
    rows: dict[str, int] = field(default_factory=dict)  # expert name -> rows cut
    windows: dict[str, int] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)  # expert name -> fewest tokens kept


_RUN: ContextVar[_Run | None] = ContextVar("logit_swarm_truncation_run", default=None)


def effective_policy(policy: str | None = None) -> str:
    """The policy that applies: ``policy`` if given, else the current run's, else the default."""
    check_policy(policy)
    if policy is not None:
        return policy
    run = _RUN.get()
    return run.policy if run is not None and run.policy is not None else DEFAULT


@contextmanager
def truncation_run(policy: str | None = None) -> Iterator[str]:
    """Scope of one truncation report; yields the policy in force inside it.

    Nested runs share the outermost one's counts (so a search reports once); ``policy`` None
    inherits the enclosing run's policy. The report is issued when the outermost run ends,
    also when it ends with an exception or an interrupt (what was cut so far is still said).
    """
    check_policy(policy)
    outer = _RUN.get()
    if outer is not None:
        if policy is None:
            yield effective_policy()
            return
        saved = outer.policy
        outer.policy = policy
        try:
            yield policy
        finally:
            outer.policy = saved
        return
    run = _RUN.set(_Run(policy))
    try:
        yield effective_policy()
    finally:
        done = _RUN.get()
        _RUN.reset(run)
        _report(done)


def _report(run: _Run) -> None:
    for name, n in run.rows.items():
        warnings.warn(
            f"expert {name!r} has a context window of {run.windows[name]} tokens: it saw only the end of "
            f"{n} text{'s' if n != 1 else ''} (at least its last {run.kept[name]} tokens); the other "
            "experts saw them whole. Pass truncation='error' (task spec `truncation: error`, CLI "
            "`--truncation error`) to refuse such texts instead",
            TruncationWarning, stacklevel=4,
        )


def _record(expert, kept: int) -> None:
    """Count one truncated row of ``expert`` in the current run (a one-row run if none)."""
    run = _RUN.get()
    if run is None:
        _report(_Run(rows={expert.name: 1}, windows={expert.name: expert.context_window},
                     kept={expert.name: kept}))
        return
    run.rows[expert.name] = run.rows.get(expert.name, 0) + 1
    run.windows[expert.name] = expert.context_window
    run.kept[expert.name] = min(kept, run.kept.get(expert.name, kept))


def _refuse(expert, need: int, what: str) -> ValueError:
    return ValueError(
        f"{what} needs {need} tokens but expert {expert.name!r} has a context window of "
        f"{expert.context_window}; shorten it, or pass truncation='left' (task spec `truncation: left`, "
        "CLI `--truncation left`) to let that expert see only the end of the text"
    )


def _keep_tail(expert, ids: list[int], keep: int) -> list[int]:
    """The last ``keep`` tokens of ``ids``, after the leading special token (BOS) if there is one."""
    special = set(getattr(expert.tokenizer, "all_special_ids", None) or [])
    if keep >= 2 and ids and ids[0] in special:
        return ids[:1] + ids[len(ids) - (keep - 1):]
    return ids[len(ids) - keep:]


def fit_prompt(expert, ids: list[int], reserve: int, policy: str | None, what: str = "prompt") -> list[int]:
    """``ids`` cut on the left so that ``reserve`` more tokens fit in ``expert``'s window.

    Under "error" (or when even an empty prompt leaves no room) a text that does not fit
    raises; under "left" the cut is counted in the current run.
    """
    window = getattr(expert, "context_window", None)
    if window is None or len(ids) + reserve <= window:
        return ids
    if effective_policy(policy) == "error":
        raise _refuse(expert, len(ids) + reserve, what)
    if reserve >= window:
        raise ValueError(
            f"expert {expert.name!r} has a context window of {window} tokens, which cannot hold "
            f"the {reserve} new units asked for even after an empty prompt; lower max_new_tokens "
            "(or the continuation's length) below that"
        )
    kept = _keep_tail(expert, ids, window - reserve)
    _record(expert, len(kept))
    return kept


def fit_pair(expert, prefix: list[int], cont: list[int], policy: str | None) -> list[tuple[list[int], list[int]]]:
    """Segments ``(conditioning ids, scored ids)`` that together score ``cont`` after ``prefix``.

    One segment ``(prefix, cont)`` when it fits; under "left" otherwise the context's end, or
    blocks of ``window // 2`` scored tokens each after the tokens just before it (see the module
    docstring); under "error" a ValueError.
    """
    window = getattr(expert, "context_window", None)
    if window is None or len(prefix) + len(cont) <= window:
        return [(prefix, cont)]
    if effective_policy(policy) == "error":
        raise _refuse(expert, len(prefix) + len(cont), "context plus continuation")
    if window < 2:
        raise ValueError(f"expert {expert.name!r} has a context window of {window}; it cannot score text")
    block = window // 2
    if len(cont) <= block:
        kept = _keep_tail(expert, prefix, window - len(cont))
        _record(expert, len(kept))
        return [(kept, cont)]
    text = list(prefix) + list(cont)
    segs, start = [], len(prefix)
    while start < len(text):
        ctx = _keep_tail(expert, text[:start], window - block) if start > window - block else text[:start]
        segs.append((ctx, text[start:start + block]))
        start += block
    _record(expert, min(len(c) for c, _ in segs))
    return segs


def add_truncation_argument(parser) -> None:
    """``--truncation {left,error}`` for commands that score, generate, search or serve."""
    parser.add_argument(
        "--truncation", choices=POLICIES, default=None,
        help="what an expert whose context window is too short sees: 'left' (default: the end of the "
             "text that fits, at that expert only, reported once per run) or 'error' (refuse the text); "
             "a task spec's own `truncation:` wins",
    )
