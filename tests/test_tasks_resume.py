"""Exact resume for every utility kind: a search killed after iteration k and resumed in a fresh
task object (as a new process would build it) ends with the same history and recipe as an
uninterrupted run.

Multiple choice, exact match and abstain run on tiny real experts; the reward, judge and multi
kinds (whose utility depends on state built while evaluating: normalisation constants, the
judge's remembered replies) run on a scripted engine whose answers depend on the particle's
weights, so the swarm really moves and every number is checkable.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import logit_swarm as ls
from logit_swarm.tasks import backend, load_task
from logit_swarm.tasks.judge import SelfPreferenceWarning

CONFIG = {"swarm_size": 4, "max_iter": 4, "patience": 10}
MC = [{"prompt": "The quick brown fox jumps over the lazy", "choices": ["dog.", "cat.", "river"], "answer": 0},
      {"prompt": "Hello world! Hello there, general", "choices": ["Kenobi.", "apples", "12"], "answer": 0},
      {"prompt": "Numbers: 0 1 2 3", "choices": ["4 5", "9 9", "x"], "answer": 0}]
EM = [{"prompt": "Alice bought 12 apples and 7 pears. Total fruit:", "answer": "19"},
      {"prompt": "def add(a, b):", "answer": "return a + b"}]
PROMPTS = [{"prompt": f"p{i}"} for i in range(4)]


class Killed(RuntimeError):
    """Stands in for the process dying."""


def share0(w) -> float:
    """Expert 0's share of a mode-"probs" weight row."""
    c = np.clip(np.asarray(w, dtype=float), 0, None)
    return float(c[0] / c.sum())


def scripted_answer(prompt, w):
    """Responses depend on the weights (quantised share of expert 0); the judge rates by it."""
    text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
    if text.startswith("For the following instruction"):
        digit = text.rsplit("Response: ", 1)[1][:1]
        return f"Rating: {int(digit) + 1}/10" if digit.isdigit() else "no rating"
    if "Proposed answer" in text:
        return "false" if share0(w) < 0.3 else "true"
    k = int(round(9 * share0(w)))
    if text.startswith("q"):  # abstain's multiple-choice step
        return "A" if k >= int(text[1]) else "B"
    return str(k) + "x" * k


class Scripted:
    """Stands in for the engine's Ensemble: one scripted reply per row."""

    def generate(self, prompts, weights=None, **kw):
        return [scripted_answer(p, w) for p, w in zip(prompts, weights, strict=True)]


SCRIPTED_SPECS = {
    "reward": {"kind": "reward", "data": {"dev": PROMPTS}, "scorer": lambda t: [float(len(s)) for s in t],
               "scorer_input": "response", "normalise": "dev"},
    "judge": {"kind": "judge", "data": {"dev": PROMPTS}, "judge": {"expert": 1}, "chat": False},
    "abstain": {"kind": "abstain", "data": {"dev": [{"prompt": f"q{i}", "choices": ["a", "b"], "answer": 0}
                                                    for i in range(1, 9)]}, "prompt": "{prompt}"},
    "multi": {"kind": "multi", "aggregate": "mean", "tasks": [
        {"kind": "reward", "name": "r", "data": {"dev": PROMPTS}, "scorer": lambda t: [float(len(s)) for s in t],
         "scorer_input": "response"},
        {"kind": "judge", "name": "j", "data": {"dev": PROMPTS}, "judge": {"expert": 0}, "chat": False}]},
}
REAL_SPECS = {
    "multiple_choice": {"kind": "multiple_choice", "data": {"dev": MC}, "scoring": "loglik_per_byte"},
    "exact_match": {"kind": "exact_match", "data": {"dev": EM}, "max_new_tokens": 3, "match": "substring"},
    "abstain_real": {"kind": "abstain", "data": {"dev": MC}, "max_new_tokens": 2, "check_max_new_tokens": 2},
}


@pytest.fixture(scope="module")
def pair(experts):
    return [experts["gpt2_a"], experts["llama_bl"]]


def killing(task, after: int):
    """Make ``task.evaluate`` raise on call ``after + 1`` (iterations 0..after are checkpointed)."""
    inner = task.evaluate
    calls = [0]

    def evaluate(*a, **kw):
        if calls[0] > after:
            raise Killed(f"killed after iteration {after}")
        calls[0] += 1
        return inner(*a, **kw)

    task.evaluate = evaluate
    return task


def strip_elapsed(history):
    return [{k: v for k, v in h.items() if k != "elapsed"} for h in history]


def run(pair, spec, out, resume=False, task=None):
    with pytest.warns(SelfPreferenceWarning) if spec.get("kind") in ("judge", "multi") else _nothing():
        return ls.swarm_search(pair, task if task is not None else load_task(spec), seed=3, config=CONFIG,
                               out_dir=out, resume=resume, progress=False)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def assert_resume_exact(pair, spec, tmp_path, after):
    whole = run(pair, spec, tmp_path / "whole")
    with pytest.raises(Killed):
        run(pair, spec, tmp_path / "cut", task=killing(load_task(spec), after))
    resumed = run(pair, spec, tmp_path / "cut", resume=True)
    assert strip_elapsed(resumed.history) == strip_elapsed(whole.history)
    assert len(whole.history) == CONFIG["max_iter"] + 1
    np.testing.assert_array_equal(resumed.weights, whole.weights)
    assert (tmp_path / "cut" / "recipe.json").read_bytes() == (tmp_path / "whole" / "recipe.json").read_bytes()
    return whole, resumed


@pytest.mark.parametrize("kind", sorted(SCRIPTED_SPECS))
@pytest.mark.parametrize("after", [0, 2])
def test_resume_equals_uninterrupted_scripted(pair, kind, after, tmp_path, monkeypatch):
    monkeypatch.setattr(backend.EngineCache, "ensemble", lambda self, pool: Scripted())
    whole, _ = assert_resume_exact(pair, SCRIPTED_SPECS[kind], tmp_path, after)
    utilities = [u for h in whole.history for u in h["utilities"]]
    assert len(set(utilities)) > 1  # the utility really varies over the swarm


@pytest.mark.parametrize("kind", sorted(REAL_SPECS))
def test_resume_equals_uninterrupted_real_experts(pair, kind, tmp_path):
    assert_resume_exact(pair, REAL_SPECS[kind], tmp_path, after=1)


def test_reward_normalisation_is_in_the_checkpoint(pair, tmp_path, monkeypatch):
    monkeypatch.setattr(backend.EngineCache, "ensemble", lambda self, pool: Scripted())
    spec = SCRIPTED_SPECS["reward"]
    with pytest.raises(Killed):
        run(pair, spec, tmp_path, task=killing(load_task(spec), 1))
    state = json.loads((tmp_path / "checkpoint.json").read_text())["task_state"]
    # The initial swarm holds both experts one-hot: responses "0" and "9xxxxxxxxx" (1 and 10 long).
    assert state == {"norm": [1.0, 10.0]}
    fresh = load_task(spec)
    fresh.restore_state(state)
    assert fresh.norm == (1.0, 10.0)


def test_judge_replies_are_restored_not_asked_again(pair, tmp_path, monkeypatch):
    monkeypatch.setattr(backend.EngineCache, "ensemble", lambda self, pool: Scripted())
    spec = SCRIPTED_SPECS["judge"]
    whole_task = load_task(spec)
    run(pair, spec, tmp_path / "whole", task=whole_task)
    first = killing(load_task(spec), 1)
    with pytest.raises(Killed):
        run(pair, spec, tmp_path / "cut", task=first)
    second = load_task(spec)
    run(pair, spec, tmp_path / "cut", resume=True, task=second)
    # Every judge prompt is asked once over both sessions, as in the uninterrupted run.
    assert first.judge_calls + second.judge_calls == whole_task.judge_calls
    assert second.replies == whole_task.replies
    saved = json.loads((tmp_path / "cut" / "checkpoint.json").read_text())["task_state"]
    assert [k for k, _ in saved["replies"]] == list(whole_task.replies)


def test_stateless_kinds_checkpoint_nothing(pair):
    for spec in REAL_SPECS.values():
        task = load_task(spec)
        assert task.checkpoint_state() == {}
        task.restore_state({})
