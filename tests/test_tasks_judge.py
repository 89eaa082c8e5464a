"""The judge is named: no default judge, a model directory or endpoint URL, and a warning when the
judge is one of the experts being mixed (self-preference)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from logit_swarm.tasks import load_task
from logit_swarm.tasks.judge import SelfPreferenceWarning, judge_ref, same_model
from logit_swarm.tasks.paper import ENV_JUDGE

DATA = {"dev": [{"prompt": "Say hi."}]}
W = np.array([[1.0, 0.0], [0.5, 0.5]])


def judge_task(judge, **kw):
    return load_task({"kind": "judge", "data": DATA, "judge": judge, "max_new_tokens": 2, "chat": False,
                      "judge_max_new_tokens": 2, **kw})


def test_a_judge_task_needs_a_named_judge():
    with pytest.raises(ValueError, match="needs judge: a local model directory or an endpoint URL"):
        load_task({"kind": "judge", "data": DATA})


def test_judge_references():
    assert judge_ref("models/j") == {"model": "models/j"}
    assert judge_ref({"model": "models/j"}) == {"model": "models/j"}
    assert judge_ref("http://127.0.0.1:8001/v1") == {"url": "http://127.0.0.1:8001/v1", "model": None}
    assert judge_ref("http://h:1/v1#big") == {"url": "http://h:1/v1", "model": "big"}
    assert judge_ref({"model": "http://h:1/v1#big"}) == {"url": "http://h:1/v1", "model": "big"}
    assert judge_ref({"url": "http://h:1/v1", "model": "m"}) == {"url": "http://h:1/v1", "model": "m"}
    assert judge_ref(2) == {"expert": 2}
    with pytest.raises(ValueError, match="judge must be"):
        judge_ref({"nope": 1})


def test_paper_judge_tasks_require_a_judge(monkeypatch):
    from logit_swarm.tasks.spec import TASKS

    monkeypatch.delenv(ENV_JUDGE, raising=False)
    make = TASKS.get("human-finance").make_spec
    with pytest.raises(ValueError, match="needs a judge model: pass judge=DIR_OR_URL"):
        make(Path('/data'), {})
    monkeypatch.setenv(ENV_JUDGE, "/models/judge")
    spec, _ = make(Path('/data'), {})
    assert spec["judge"] == "/models/judge"
    assert make(Path("/data"), {"judge": "http://h:1/v1"})[0]["judge"] == "http://h:1/v1"


def test_a_judge_outside_the_pool_does_not_warn(experts, tiny_dirs):
    pair = [experts["gpt2_a"], experts["llama_bl"]]
    task = judge_task(tiny_dirs["gpt2_b"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", SelfPreferenceWarning)
        r = task.evaluate_detailed(pair, W)
    assert r.utility.shape == (2,) and np.all((1 <= r.utility) & (r.utility <= 10))
    assert task.judge_calls >= 1 and len(task.replies) == task.judge_calls


def test_a_pool_model_as_judge_warns_by_directory_and_by_index(experts, tiny_dirs):
    pair = [experts["gpt2_a"], experts["llama_bl"]]
    by_dir = judge_task(tiny_dirs["llama_bl"])  # loaded again from the pool expert's directory
    with pytest.warns(SelfPreferenceWarning, match="self-preference"):
        by_dir.evaluate(pair, W)
    assert by_dir._judge_model is not pair[1] and same_model(by_dir._judge_model, pair[1])
    with pytest.warns(SelfPreferenceWarning):
        judge_task({"expert": 0}).evaluate(pair, W)


def test_judge_replies_are_remembered_across_evaluations(experts, tiny_dirs):
    pair = [experts["gpt2_a"], experts["llama_bl"]]
    task = judge_task(tiny_dirs["gpt2_b"])
    first = task.evaluate(pair, W)
    calls = task.judge_calls
    np.testing.assert_array_equal(task.evaluate(pair, W), first)
    assert task.judge_calls == calls  # the same responses: answered from memory
    fresh = judge_task(tiny_dirs["gpt2_b"])
    fresh.restore_state(task.checkpoint_state())
    np.testing.assert_array_equal(fresh.evaluate(pair, W), first)
    assert fresh.judge_calls == 0


def test_same_model_by_endpoint():
    class Remote:
        def __init__(self, url, model):
            self.url, self.model = url, model

        def describe(self):
            return {"kind": "remote", "url": self.url, "model": self.model}

    assert same_model(Remote("http://h:1/v1/", "m"), Remote("http://h:1/v1", "m"))
    assert not same_model(Remote("http://h:1/v1", "m"), Remote("http://h:1/v1", "n"))
