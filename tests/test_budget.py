"""Budgets in the unit the user means (logit_swarm.budget): with mixed tokenizers a token budget
is counted in the tokens of a reference tokenizer; bytes and the ensemble's own units too."""

from __future__ import annotations

import numpy as np
import pytest

import logit_swarm as ls
from logit_swarm.budget import BudgetRule, count_tokens, plan, reference_expert
from logit_swarm.tasks import backend, load_task

PROMPTS = ["The quick brown", "Numbers: 0 1 2", "def add(a, b):", "café"]


@pytest.fixture(scope="module")
def hetero(experts):
    """Two experts with different tokenizers: byte units."""
    return ls.Ensemble([experts["gpt2_a"], experts["llama_sp"]], weights=[0.5, 0.5])


@pytest.fixture(scope="module")
def shared(experts):
    """Two experts sharing one tokenizer: token units."""
    return ls.Ensemble([experts["gpt2_a"], experts["llama_bl"]], weights=[0.5, 0.5])


def first_over(data: bytes, tokenizer, limit: int) -> int:
    """Brute force: the first byte length whose text counts more than ``limit`` tokens."""
    for j in range(1, len(data) + 1):
        if count_tokens(tokenizer, data[:j].decode("utf-8", errors="ignore")) > limit:
            return j - 1
    return len(data)


def long_outputs(ens, n=160):
    return ens.generate(PROMPTS, max_new_tokens=n, budget_unit="units", return_details=True)


@pytest.mark.parametrize("ref", [0, 1])
def test_token_budget_at_byte_level_is_the_longest_text_within_it(hetero, ref):
    assert hetero.unit == "byte"
    tok = hetero.experts[ref].tokenizer
    longs = long_outputs(hetero)
    for limit in (3, 8):
        outs = hetero.generate(PROMPTS, max_new_tokens=limit, budget_tokenizer=ref, return_details=True)
        for long, out in zip(longs, outs, strict=True):
            data = bytes(u for u in long.units if u < 256)
            if long.finish_reason == "stop" and count_tokens(tok, long.text) <= limit:
                assert out.text == long.text
                continue
            j = first_over(data, tok, limit)
            assert bytes(out.units) == data[:j]  # greedy: the same path, cut where the budget ends
            assert count_tokens(tok, bytes(out.units).decode("utf-8", "ignore")) <= limit
            assert out.finish_reason == "length"
    # The cut really happens in tokens, not bytes: some output is longer than its budget in bytes.
    outs = hetero.generate(PROMPTS, max_new_tokens=3, budget_tokenizer=ref, return_details=True)
    assert max(len(o.units) for o in outs) > 3


def test_bytes_and_units_at_byte_level_count_bytes(hetero):
    a = hetero.generate(PROMPTS, max_new_tokens=5, budget_unit="bytes", return_details=True)
    b = hetero.generate(PROMPTS, max_new_tokens=5, budget_unit="units", return_details=True)
    assert [o.units for o in a] == [o.units for o in b]
    assert all(len(o.units) <= 5 for o in a)


def test_byte_budget_at_token_level(shared):
    assert shared.unit == "token"
    tok = shared.experts[0].tokenizer
    longs = long_outputs(shared, 40)
    outs = shared.generate(PROMPTS, max_new_tokens=6, budget_unit="bytes", return_details=True)
    for long, out in zip(longs, outs, strict=True):
        assert long.units[:len(out.units)] == out.units
        assert len(out.text.encode()) <= 6
        if out.finish_reason == "length" and len(out.units) < len(long.units):
            nxt = tok.decode(long.units[:len(out.units) + 1], skip_special_tokens=True)
            assert len(nxt.encode()) > 6  # the next token would have gone beyond the budget
    # tokens (the default) at token level are the ensemble's units
    t = shared.generate(PROMPTS, max_new_tokens=4, return_details=True)
    u = shared.generate(PROMPTS, max_new_tokens=4, budget_unit="units", return_details=True)
    assert [o.units for o in t] == [o.units for o in u]


def test_plan_caps_and_rules(hetero, shared):
    steps, rule = plan(shared.experts, "token", 7, 2)
    assert steps == [7, 7] and rule is None
    steps, rule = plan(hetero.experts, "byte", [2, 0], 2)
    longest = hetero.experts[0].vocab_bytes.max_len
    assert steps == [2 * longest + 1, 0] and isinstance(rule, BudgetRule)
    assert plan(hetero.experts, "byte", 4, 1, "units") == ([4], None)
    assert plan(hetero.experts, "byte", 4, 1, "bytes") == ([4], None)
    with pytest.raises(ValueError, match="budget_unit must be one of"):
        plan(hetero.experts, "byte", 4, 1, "words")
    assert reference_expert(hetero.experts, hetero.experts[1].name) is hetero.experts[1]
    with pytest.raises(ValueError, match="out of range"):
        reference_expert(hetero.experts, 5)


def test_task_budget_settings_reach_the_engine(hetero):
    gen = backend.GenerationSettings.from_spec({"max_new_tokens": 4, "budget_unit": "bytes", "budget_tokenizer": 1})
    assert (gen.budget_unit, gen.budget_tokenizer) == ("bytes", 1)
    with pytest.raises(ValueError, match="budget_unit"):
        backend.GenerationSettings.from_spec({"budget_unit": "lines"})
    em = [{"prompt": p, "answer": "x"} for p in PROMPTS]
    task = load_task({"kind": "exact_match", "data": {"dev": em}, "max_new_tokens": 3, "strip": False})
    r = task.evaluate_detailed(hetero.experts, np.array([[0.5, 0.5]]))
    tok = hetero.experts[0].tokenizer
    assert all(count_tokens(tok, o) <= 3 for o in r.outputs[0])
    assert max(len(o.encode()) for o in r.outputs[0]) > 3


def test_zoo_tasks_state_their_budgets_in_units():
    assert load_task("zoo-arithmetic").gen.budget_unit == "units"
