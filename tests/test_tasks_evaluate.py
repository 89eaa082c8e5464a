"""Batched evaluation of whole swarms on tiny experts: rows = particles, tables built once."""

from __future__ import annotations

import math

import numpy as np
import pytest

import logit_swarm as ls
from logit_swarm.tasks import TestSplitError, load_task
from logit_swarm.tasks.judge import SelfPreferenceWarning

MC_RECORDS = [
    {"prompt": "The quick brown fox jumps over the lazy", "choices": ["dog.", "cat.", "river"], "answer": 0},
    {"prompt": "Hello world! Hello there, general", "choices": ["Kenobi.", "apples", "12"], "answer": 0},
    {"prompt": "Numbers: 0 1 2 3", "choices": ["4 5", "9 9", "x"], "answer": 0},
    {"prompt": "café naïve über", "choices": ["日本語 😀", "melons", "print(i)"], "answer": 0},
]
EM_RECORDS = [
    {"prompt": "Alice bought 12 apples and 7 pears. Total fruit:", "answer": "19"},
    {"prompt": "Is the sky green? Answer yes or no:", "answer": "no"},
    {"prompt": "def add(a, b):", "answer": "return a + b"},
]
TEXT_RECORDS = [{"text": "The quick brown fox jumps over the lazy dog."},
                {"text": "for i in range(10):\n    print(i * i)\n"},
                {"text": "café naïve über 日本語 😀 🚀"}]
# Byte units cost one forward pass per byte of the longest text: keep those texts short.
SHORT_TEXT = [{"text": "Hello world!"}, {"text": "café 😀"}]


@pytest.fixture(scope="module")
def pair(experts):
    """Two experts sharing one tokenizer (token units)."""
    return [experts["gpt2_a"], experts["llama_bl"]]


@pytest.fixture(scope="module")
def hetero(experts):
    """Two experts with different tokenizers (byte units)."""
    return [experts["gpt2_a"], experts["llama_sp"]]


def W3():
    return np.array([[1.0, 0.0], [0.0, 1.0], [0.3, 0.7]])


def mc(**kw):
    return load_task({"kind": "multiple_choice", "name": "mc", "data": {"dev": MC_RECORDS, "test": MC_RECORDS},
                      **kw})


def em(**kw):
    return load_task({"kind": "exact_match", "name": "em", "data": {"dev": EM_RECORDS}, **kw})


def lik(**kw):
    return load_task({"kind": "likelihood", "name": "lik", "data": {"dev": TEXT_RECORDS}, **kw})


def assert_rows_equal_alone(make_task, experts, W, **kw):
    swarm = make_task().evaluate(experts, W, **kw)
    alone = np.array([make_task().evaluate(experts, W[p], **kw)[0] for p in range(len(W))])
    np.testing.assert_allclose(swarm, alone, rtol=0, atol=1e-9)
    return swarm


@pytest.mark.parametrize("scoring", ["generate", "loglik", "loglik_per_byte"])
def test_mc_rows_equal_particles_alone(pair, scoring):
    u = assert_rows_equal_alone(lambda: mc(scoring=scoring, max_new_tokens=4), pair, W3())
    assert u.shape == (3,) and np.all((0 <= u) & (u <= 1))


def test_em_rows_equal_particles_alone(pair):
    assert_rows_equal_alone(lambda: em(max_new_tokens=4), pair, W3())


def test_likelihood_rows_equal_particles_alone_both_units(pair, hetero):
    assert_rows_equal_alone(lik, pair, W3())
    short = lambda: load_task({"kind": "likelihood", "data": {"dev": SHORT_TEXT}})  # noqa: E731
    assert_rows_equal_alone(short, hetero, W3()[1:])


def test_abstain_rows_equal_particles_alone(pair):
    make = lambda: load_task({"kind": "abstain", "data": {"dev": MC_RECORDS}, "max_new_tokens": 3,  # noqa: E731
                              "check_max_new_tokens": 3})
    u = assert_rows_equal_alone(make, pair, W3())
    assert np.all((-1 <= u) & (u <= 1))


def test_generation_rows_match_hetero_byte_units(hetero):
    assert_rows_equal_alone(lambda: mc(scoring="generate", max_new_tokens=3), hetero, W3())


def test_likelihood_of_one_hot_is_the_experts_own_bits_per_byte(pair):
    """−utility with one-hot weights = expert i's own −Σ log2 p / Σ bytes."""
    task = lik()
    u = task.evaluate(pair, np.eye(2))
    for i, e in enumerate(pair):
        ens = ls.Ensemble([e], weights=[1.0])
        lp = ens.logprob([""] * len(TEXT_RECORDS), [r["text"] for r in TEXT_RECORDS])
        nbytes = sum(len(r["text"].encode()) for r in TEXT_RECORDS)
        assert u[i] == pytest.approx(sum(lp) / (math.log(2) * nbytes), rel=1e-6)


def test_likelihood_jensen_in_probs_mode(pair):
    """Mixing probabilities never scores below the weighted mean of the experts' scores."""
    r = lik().evaluate_detailed(pair, np.array([[1, 0], [0, 1], [0.5, 0.5]]))
    lp_mix = r.per_example[2]
    assert np.all(lp_mix >= 0.5 * (r.per_example[0] + r.per_example[1]) - 1e-9)


def test_loglik_swarm_after_first_costs_no_forward_pass(pair):
    task = mc(scoring="loglik_per_byte")
    lik_task = lik()
    task.evaluate(pair, W3())
    lik_task.evaluate(pair, W3())
    calls = [e.forward_calls for e in pair]
    rng = np.random.default_rng(0)
    u = task.evaluate(pair, rng.random((1000, 2)) + 1e-3)
    v = lik_task.evaluate(pair, rng.random((1000, 2)) + 1e-3)
    assert u.shape == v.shape == (1000,)
    assert [e.forward_calls for e in pair] == calls
    assert task.cache.table_builds == 1 and lik_task.cache.table_builds == 1


def test_table_cache_is_keyed_by_experts_and_split(pair, experts):
    task = mc(scoring="loglik")
    task.evaluate(pair, W3())
    task.evaluate(pair, W3())
    assert task.cache.table_builds == 1
    task.evaluate([pair[1], pair[0]], W3())  # another expert order is another table
    assert task.cache.table_builds == 2
    task.evaluate(pair, W3(), split="test", allow_test=True)  # another split, another table
    assert task.cache.table_builds == 3
    task.evaluate(pair, W3(), split="test", allow_test=True)
    assert task.cache.table_builds == 3
    task.clear_cache()
    task.evaluate(pair, W3())
    assert task.cache.table_builds == 4


def test_logits_mode_table_is_separate_and_accepts_negative_weights(pair):
    task = lik()
    up = task.evaluate(pair, np.eye(2), mode="probs")
    ul = task.evaluate(pair, np.eye(2), mode="logits")
    np.testing.assert_allclose(up, ul, atol=1e-6)  # one-hot: both modes are the expert itself
    assert task.cache.table_builds == 2
    assert np.isfinite(task.evaluate(pair, [[1.5, -0.5]], mode="logits")).all()


def test_ensemble_input_uses_its_weights_and_mode(pair):
    ens = ls.Ensemble(pair, weights=[0.3, 0.7], mode="probs")
    task = lik()
    assert task.evaluate(ens)[0] == pytest.approx(task.evaluate(pair, [0.3, 0.7])[0])


def test_weight_matrix_errors(pair):
    task = lik()
    with pytest.raises(ValueError, match="shape"):
        task.evaluate(pair, np.ones((2, 3)))
    with pytest.raises(ValueError, match="no positive weight"):
        task.evaluate(pair, [[0.0, -1.0]])
    with pytest.raises(ValueError, match="NaN"):
        task.evaluate(pair, [[np.nan, 1.0]])
    with pytest.raises(ValueError, match="W is required"):
        task.evaluate(pair)


def test_test_split_guard(pair):
    task = mc(scoring="loglik")
    with pytest.raises(TestSplitError, match="allow_test=True"):
        task.evaluate(pair, W3(), split="test")
    assert task.evaluate(pair, W3(), split="test", allow_test=True).shape == (3,)


def test_duplicate_particles_are_decoded_once(pair):
    def rows_for(W):
        before = [e.forward_rows for e in pair]
        em(max_new_tokens=3).evaluate(pair, W)
        return [e.forward_rows - b for e, b in zip(pair, before, strict=True)]

    # Five identical particles cost what one costs: the same rows reach the experts.
    assert rows_for(np.array([[1.0, 0.0]] * 5)) == rows_for(np.array([[1.0, 0.0]]))


def test_evaluate_detailed_reports_outputs_and_parts(pair):
    r = mc(scoring="generate", max_new_tokens=3).evaluate_detailed(pair, W3())
    assert set(r.parts) == {"accuracy", "unparsed"}
    assert len(r.outputs) == 3 and all(len(row) == len(MC_RECORDS) for row in r.outputs)
    assert r.per_example.shape == (3, len(MC_RECORDS))
    assert r.row(2)["utility"] == pytest.approx(r.utility[2])
    assert r.split == "dev" and r.n == len(MC_RECORDS)


def test_reward_with_callable_and_dev_normalisation(pair):
    calls = []

    def length_reward(texts):
        calls.append(len(texts))
        return [float(len(t)) for t in texts]

    task = load_task({"kind": "reward", "data": {"dev": EM_RECORDS, "test": EM_RECORDS}, "scorer": length_reward,
                      "scorer_input": "response", "max_new_tokens": 4})
    u = task.evaluate(pair, W3())
    assert task.norm is not None and task.norm[0] <= task.norm[1]
    assert np.all((0 <= u) & (u <= 1)) and calls == [3 * len(EM_RECORDS)]
    frozen = task.norm
    task.evaluate(pair, W3(), split="test", allow_test=True)
    assert task.norm == frozen  # constants come from dev once


def test_reward_normalisation_from_dev_first(pair):
    task = load_task({"kind": "reward", "data": {"dev": EM_RECORDS, "test": EM_RECORDS},
                      "scorer": lambda t: [1.0] * len(t), "max_new_tokens": 2})
    with pytest.raises(ValueError, match="evaluate on dev first"):
        task.evaluate(pair, W3(), split="test", allow_test=True)


def test_reward_objectives_with_fixed_constants(pair):
    base = {"kind": "reward", "data": {"dev": EM_RECORDS}, "scorer": lambda t: [0.5] * len(t),
            "normalise": {"low": 0.0, "high": 1.0}, "max_new_tokens": 3}
    assert load_task(base).evaluate(pair, W3()) == pytest.approx([0.5] * 3)
    assert load_task({**base, "objective": "reverse"}).evaluate(pair, W3()) == pytest.approx([-0.5] * 3)
    r = load_task({**base, "objective": "concise", "length_low": 0, "length_high": 1000}).evaluate_detailed(pair, W3())
    assert np.all(r.utility > 0.5)  # short answers: length score near 1
    assert set(r.parts) >= {"reward", "length_score", "raw_reward"}


def test_toxicity_rule(pair):
    seen = []

    def tox(texts):
        seen.extend(texts)
        return [0.25] * len(texts)

    task = load_task({"kind": "toxicity", "data": {"dev": [{"prompt": "Hello"}] * 2}, "scorer": tox,
                      "max_new_tokens": 12, "min_chars": 1})
    r = task.evaluate_detailed(pair, W3())
    per = r.per_example
    outs = r.outputs
    for p in range(3):
        for i in range(2):
            assert per[p, i] == (0.5 if len(outs[p][i]) < 1 else 0.75)
    assert all("\n" not in t for t in seen)


def test_judge_uses_pool_expert_and_parses_failures_as_one(pair):
    task = load_task({"kind": "judge", "data": {"dev": [{"prompt": "Say hi."}, {"prompt": "Count."}]},
                      "judge": {"expert": 1}, "max_new_tokens": 3, "chat": False,
                      "judge_max_new_tokens": 4})
    with pytest.warns(SelfPreferenceWarning, match="self-preference"):
        r = task.evaluate_detailed(pair, W3())
    assert r.utility.shape == (3,)
    assert np.all((1 <= r.utility) & (r.utility <= 10))
    # A random tiny model does not write "Rating: N/10": every failure scores 1.
    assert np.all(r.per_example[r.parts["unparsed"] == 1.0] == 1.0)


def test_judge_errors(pair):
    with pytest.raises(ValueError, match="judge must be"):
        load_task({"kind": "judge", "data": {"dev": [{"prompt": "x"}]}, "judge": {"nope": 1}})
    task = load_task({"kind": "judge", "data": {"dev": [{"prompt": "x"}]}, "judge": {"expert": "missing"},
                      "max_new_tokens": 1, "chat": False})
    with pytest.raises(ValueError, match="no expert named"):
        task.evaluate(pair, W3())


def test_multi_harmonic_and_mean_report_parts(pair):
    parts = [{"kind": "likelihood", "name": "a", "data": {"dev": TEXT_RECORDS}},
             {"kind": "multiple_choice", "name": "b", "scoring": "loglik", "data": {"dev": MC_RECORDS}}]
    both = [parts[1], {**parts[1], "name": "c", "scoring": "loglik_per_byte"}]
    r = load_task({"kind": "multi", "tasks": both}).evaluate_detailed(pair, W3())
    b, c = r.parts["b"], r.parts["c"]
    hm = np.where((b > 0) & (c > 0), 2 * b * c / np.maximum(b + c, 1e-12), 0.0)
    np.testing.assert_allclose(r.utility, hm)
    assert "b.accuracy" in r.parts
    mean = load_task({"kind": "multi", "tasks": parts, "aggregate": "mean", "weights": [1, 3]})
    mean = mean.evaluate_detailed(pair, W3())
    np.testing.assert_allclose(mean.utility, 0.25 * mean.parts["a"] + 0.75 * mean.parts["b"])
    with pytest.raises(ValueError, match="non-negative"):
        load_task({"kind": "multi", "tasks": parts}).evaluate(pair, W3())  # −bpb is negative


def test_multi_forwards_options_to_parts():
    t = load_task({"kind": "multi", "tasks": [{"kind": "multiple_choice", "name": "x", "data": {"dev": MC_RECORDS}}],
                   "limit": 2, "scoring": "loglik"})
    assert t.parts[0].split_limit("dev") == 2 and t.parts[0].scoring_name == "loglik"


def test_large_swarms_are_mixed_in_chunks_with_the_same_result(pair, monkeypatch):
    from logit_swarm.tasks import backend

    task = mc(scoring="loglik_per_byte")
    W = np.random.default_rng(1).random((7, 2)) + 1e-3
    whole = task.evaluate(pair, W)
    monkeypatch.setattr(backend, "MIX_ELEMENTS", 1)  # one particle at a time
    np.testing.assert_array_equal(task.evaluate(pair, W), whole)
