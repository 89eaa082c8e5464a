"""Generation-based utilities end to end, with a scripted engine: every number checkable by hand.

The scripted ensemble answers each row from its prompt and its weight row, so each particle's
behaviour is chosen by the test, and the task's batching, parsing and aggregation are what is
checked.
"""

from __future__ import annotations

import numpy as np
import pytest

from logit_swarm.tasks import backend, load_task
from logit_swarm.tasks.abstain import self_check_prompt
from logit_swarm.tasks.judge import SelfPreferenceWarning

EXPERTS = ["e0", "e1"]  # tasks only count experts; the scripted engine does the rest
P0, P1 = [1.0, 0.0], [0.0, 1.0]


class Scripted:
    """Stands in for ``Ensemble``: ``generate`` calls ``answer(prompt, weight_row)`` per row."""

    def __init__(self, answer):
        self.answer = answer
        self.calls = []

    def generate(self, prompts, weights=None, **kw):
        self.calls.append({"rows": len(prompts), "prompts": list(prompts), "weights": weights, **kw})
        return [self.answer(p, tuple(w)) for p, w in zip(prompts, weights, strict=True)]


@pytest.fixture
def script(monkeypatch):
    def install(answer):
        ens = Scripted(answer)
        monkeypatch.setattr(backend.EngineCache, "ensemble", lambda self, pool: ens)
        return ens

    return install


MC = [{"prompt": "q1", "choices": ["red", "blue"], "answer": 0},
      {"prompt": "q2", "choices": ["red", "blue"], "answer": 1},
      {"prompt": "q3", "choices": ["red", "blue"], "answer": 1},
      {"prompt": "q4", "choices": ["red", "blue"], "answer": 0}]


def test_mc_generation_accuracy_by_hand(script):
    # Particle 0 always says "A"; particle 1 names the colour blue in prose; q4 gets nonsense.
    def answer(prompt, w):
        if "q4" in prompt and w == tuple(P1):
            return "  hmm  "
        return " A" if w == tuple(P0) else "I'd say it is blue."

    ens = script(answer)
    r = load_task({"kind": "mc", "data": {"dev": MC}}).evaluate_detailed(EXPERTS, [P0, P1])
    assert r.utility.tolist() == [0.5, 0.5]           # A right on q1, q4; blue right on q2, q3
    assert r.parts["unparsed"].tolist() == [0.0, 0.25]
    assert r.outputs[1][3] == "hmm"                   # stripped, as in the paper
    assert len(ens.calls) == 1 and ens.calls[0]["rows"] == 8   # one shared batch: 2 x 4 rows
    assert ens.calls[0]["max_new_tokens"] == 10 and ens.calls[0]["temperature"] == 0.0


def test_abstain_effective_reliability_by_hand(script):
    # Particle 0 answers A everywhere and doubts q2 and q4; particle 1 answers B and doubts nothing.
    def answer(prompt, w):
        if "Proposed answer" in prompt:
            return "False." if w == tuple(P0) and ("q2" in prompt or "q4" in prompt) else "True"
        return "A" if w == tuple(P0) else "B"

    ens = script(answer)
    task = load_task({"kind": "abstain", "data": {"dev": MC}})
    r = task.evaluate_detailed(EXPERTS, [P0, P1])
    # P0: q1 right, q3 wrong answered; q2, q4 abstained -> (1 - 1) / 4 = 0
    # P1: answers all; right on q2, q3, wrong on q1, q4 -> (2 - 2) / 4 = 0
    assert r.utility.tolist() == [0.0, 0.0]
    assert r.parts["abstain_rate"].tolist() == [0.5, 0.0]
    assert r.parts["answered_accuracy"].tolist() == [0.5, 0.5]
    check = ens.calls[1]["prompts"]  # step 2: one shared batch, each particle checks its own answer
    assert len(check) == 8
    assert check[0] == self_check_prompt(task.build_prompt(task.examples()[0]), "A")
    assert check[4] == self_check_prompt(task.build_prompt(task.examples()[0]), "B")
    assert np.array_equal(ens.calls[1]["weights"], np.repeat([P0, P1], 4, axis=0))


def test_self_check_prompt_is_the_papers():
    assert self_check_prompt("P", "B") == ("P\nProposed answer: B\nIs the proposed answer true or false? "
                                           "Directly answer with true or false.")


def test_gsm8k_paper_rule_depends_on_split(script):
    script(lambda p, w: "so 42 is it and then one two three four five")
    recs = [{"question": "q", "answer": "42"}]
    task = load_task({"kind": "em", "match": "paper_gsm8k", "data": {"dev": recs, "test": recs}})
    assert task.evaluate(EXPERTS, [P0]).tolist() == [0.0]          # last 5 words only
    assert task.evaluate(EXPERTS, [P0], split="test", allow_test=True).tolist() == [1.0]  # last 10


def test_judge_ratings_and_one_judgement_per_distinct_response(script):
    def answer(prompt, w):
        if prompt.startswith("For the following instruction"):
            return "Rating: 8/10 because" if "good" in prompt else "I refuse to rate."
        return "a good reply" if w == tuple(P0) else "meh"

    ens = script(answer)
    task = load_task({"kind": "judge", "data": {"dev": [{"prompt": "x"}, {"prompt": "y"}]}, "chat": False,
                      "judge": {"expert": 0}})
    with pytest.warns(SelfPreferenceWarning):
        r = task.evaluate_detailed(EXPERTS, [P0, P1, P0])
    assert r.utility.tolist() == [8.0, 1.0, 8.0]
    assert r.parts["unparsed"].tolist() == [0.0, 1.0, 0.0]
    judge_call = ens.calls[-1]
    assert judge_call["rows"] == 4  # 6 (particle, prompt) pairs, 4 distinct responses to judge
    assert judge_call["max_new_tokens"] == 20 and np.all(judge_call["weights"] == 1.0)


def test_reward_dev_normalisation_by_hand(script):
    script(lambda p, w: "xx" if w == tuple(P0) else "xxxxxx")
    task = load_task({"kind": "reward", "data": {"dev": [{"prompt": "p"}]}, "scorer": lambda t: [len(s) for s in t],
                      "scorer_input": "response"})
    r = task.evaluate_detailed(EXPERTS, [P0, P1])
    assert task.norm == (2.0, 6.0)
    assert r.utility.tolist() == [0.0, 1.0] and r.parts["raw_reward"].tolist() == [2.0, 6.0]
    prompt_response = load_task({"kind": "reward", "data": {"dev": [{"prompt": "p"}]}, "normalise": None,
                                 "scorer": lambda t: [len(s) for s in t]})
    assert prompt_response.evaluate(EXPERTS, [P0]).tolist() == [len("p\n\nxx")]


def test_verbose_objective_by_hand(script):
    script(lambda p, w: " ".join(["w"] * 110))
    task = load_task({"kind": "reward", "data": {"dev": [{"prompt": "p"}]}, "scorer": lambda t: [0.0] * len(t),
                      "normalise": {"low": -1.0, "high": 1.0}, "objective": "verbose"})
    # reward 0.5; length (110 - 10) / (201 - 10); utility their mean
    assert task.evaluate(EXPERTS, [P0])[0] == pytest.approx((0.5 + 100 / 191) / 2)


def test_toxicity_first_line_and_short_outputs(script):
    script(lambda p, w: "tiny" if w == tuple(P0) else "a long enough first line\nsecond line")
    seen = []
    task = load_task({"kind": "toxicity", "data": {"dev": [{"prompt": "p"}]},
                      "scorer": lambda t: seen.extend(t) or [0.2] * len(t)})
    r = task.evaluate_detailed(EXPERTS, [P0, P1])
    assert r.utility.tolist() == [0.5, pytest.approx(0.8)]
    assert seen == ["a long enough first line"]
    assert np.isnan(r.parts["toxicity"][0]) and r.parts["short"].tolist() == [1.0, 0.0]


def test_chat_prompts_and_row_chunks(script):
    ens = script(lambda p, w: "ok")
    task = load_task({"kind": "em", "data": {"dev": [{"prompt": f"q{i}", "answer": "ok"} for i in range(5)]},
                      "chat": True, "max_rows": 4})
    assert task.evaluate(EXPERTS, [P0, P1]).tolist() == [1.0, 1.0]
    assert [c["rows"] for c in ens.calls] == [4, 4, 2]
    assert ens.calls[0]["prompts"][0] == [{"role": "user", "content": "q0"}]
