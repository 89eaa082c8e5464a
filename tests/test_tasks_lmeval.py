"""lm-eval conventions for generic data: the prompt as written, no doubled whitespace; the
paper's template only for the paper's tasks, its files and ``prompt: paper``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from logit_swarm.tasks import load_task
from logit_swarm.tasks.spec import TASKS
from logit_swarm.tasks.templates import PAPER_INSTRUCTION, join_continuation

ROWS = [{"id": "q1", "question": "The lazy", "choices": [" dog", " cat"], "answer": 0},
        {"id": "q2", "question": "Answer: ", "choices": ["yes", "no"], "answer": 1},
        {"id": "q3", "question": "Two plus two is", "choices": ["four", "five"], "answer": 0}]


@pytest.fixture
def jsonl(tmp_path) -> Path:
    p = tmp_path / "mc.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return p


def test_generic_jsonl_uses_the_prompt_as_written(jsonl):
    task = load_task({"kind": "multiple_choice", "data": {"dev": str(jsonl)}, "scoring": "loglik"})
    assert [task.build_prompt(e) for e in task.examples("dev")] == [r["question"] for r in ROWS]
    assert "Please choose" not in task.build_prompt(task.examples("dev")[0])


def test_choices_are_joined_without_doubled_whitespace(jsonl):
    task = load_task({"kind": "multiple_choice", "data": {"dev": str(jsonl)}, "scoring": "loglik"})
    contexts, conts, counts = task.option_pairs("dev")
    assert counts == [2, 2, 2]
    assert conts == [" dog", " cat", "yes", "no", " four", " five"]
    assert all(not (c[-1:].isspace() and t[:1].isspace()) and "  " not in c + t for c, t in zip(contexts, conts))


def test_join_continuation_rule():
    assert join_continuation("The lazy", " ", " dog") == " dog"
    assert join_continuation("Q:\n", " ", "x") == "x"
    assert join_continuation("Q", " ", "x") == " x"
    assert join_continuation("Q ", "", "x") == "x"
    assert join_continuation("Q ", " -> ", "x") == " -> x"  # only pure whitespace separators merge


def test_prompt_paper_applies_the_paper_template(jsonl):
    task = load_task({"kind": "multiple_choice", "data": {"dev": str(jsonl)}, "prompt": "paper"})
    p = task.build_prompt(task.examples("dev")[2])
    assert p == f"{PAPER_INSTRUCTION}\nQuestion: Two plus two is\nA: four\nB: five\nThe answer is"


def test_paper_tasks_by_name_use_the_paper_template():
    for name in ("mmlu", "hellaswag", "truthfulqa", "abstainqa"):
        spec, _ = TASKS.get(name).make_spec(Path("/data"), {})
        assert spec["prompt"] == "paper", name


def test_paper_format_files_keep_the_paper_template(tmp_path):
    rec = {"question": "Who?", "choices": {"A": "x", "B": "y"}, "answer": "B"}
    (tmp_path / "p.json").write_text(json.dumps({"dev": [rec], "test": [rec]}))
    task = load_task({"kind": "multiple_choice", "data": "p.json"}, base_dir=tmp_path)
    assert task.build_prompt(task.examples("dev")[0]).endswith("B: y\nThe answer is")


def test_question_ids_come_from_the_records(jsonl, experts):
    import numpy as np

    pair = [experts["gpt2_a"], experts["llama_bl"]]
    task = load_task({"kind": "multiple_choice", "data": {"dev": str(jsonl)}, "scoring": "loglik"})
    q = task.question_results(pair, np.eye(2))
    assert q.ids == ["q1", "q2", "q3"] and q.scores.shape == (2, 3)
    np.testing.assert_array_equal(q.solved, q.scores >= 1)
    rec = q.records(1)
    assert [r["id"] for r in rec] == ["q1", "q2", "q3"] and all(r["correct"] in (True, False) for r in rec)
    np.testing.assert_allclose(q.scores.mean(1), task.evaluate(pair, np.eye(2)))
