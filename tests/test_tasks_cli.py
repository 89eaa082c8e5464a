"""``logit-swarm eval``: a recipe's utility on a task, with the test-split guard."""

from __future__ import annotations

import json

import pytest

import logit_swarm as ls
from logit_swarm.cli import main
from logit_swarm.tasks.cli import parse_overrides


@pytest.fixture(scope="module")
def recipe_and_spec(experts, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_cli")
    recipe = ls.Ensemble([experts["gpt2_a"], experts["llama_bl"]], weights=[0.3, 0.7]).save(root / "r.json")
    rows = [{"text": "The quick brown fox jumps over the lazy dog."}, {"text": "Hello world!"}]
    for split in ("dev", "test"):
        (root / f"t.{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = root / "lik.yaml"
    spec.write_text("kind: likelihood\ndata: {dev: t.dev.jsonl, test: t.test.jsonl}\n")
    return str(recipe), str(spec)


def test_eval_prints_json_utility_and_parts(recipe_and_spec, capsys):
    recipe, spec = recipe_and_spec
    assert main(["eval", "--recipe", recipe, "--task", spec, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["task"] == "lik" and out["split"] == "dev" and out["n"] == 2
    assert out["utility"] == pytest.approx(-out["bits_per_byte"])
    task = ls.load_task(spec)
    ens = ls.Ensemble.load(recipe)
    assert out["utility"] == pytest.approx(task.evaluate(ens)[0])


def test_eval_text_output(recipe_and_spec, capsys):
    recipe, spec = recipe_and_spec
    assert main(["eval", "--recipe", recipe, "--task", spec, "--limit", "1"]) == 0
    out = capsys.readouterr().out
    assert "utility" in out and "bits_per_byte" in out and "examples 1" in out


def test_eval_refuses_test_split_without_allow_test(recipe_and_spec, capsys):
    recipe, spec = recipe_and_spec
    assert main(["eval", "--recipe", recipe, "--task", spec, "--split", "test"]) == 2
    err = capsys.readouterr().err
    assert "--allow-test" in err and len(err.strip().splitlines()) == 1
    assert main(["eval", "--recipe", recipe, "--task", spec, "--split", "test", "--allow-test", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["split"] == "test"


def test_eval_errors_are_one_actionable_line(recipe_and_spec, capsys, tmp_path):
    recipe, spec = recipe_and_spec
    assert main(["eval", "--recipe", recipe, "--task", "mmlu_prro"]) == 2
    assert "Did you mean" in capsys.readouterr().err
    assert main(["eval", "--task", spec]) == 2
    assert "--recipe is required" in capsys.readouterr().err
    assert main(["eval", "--recipe", recipe, "--task", spec, "--set", "chunk_chars=5"]) == 0
    capsys.readouterr()
    assert main(["eval", "--recipe", recipe, "--task", spec, "--set", "max_new_tokens=5"]) == 2
    assert "has no option 'max_new_tokens'" in capsys.readouterr().err


def test_eval_list(capsys):
    assert main(["eval", "--list"]) == 0
    out = capsys.readouterr().out
    assert "mmlu" in out and "zoo-facts" in out


def test_parse_overrides():
    assert parse_overrides(["a=1", "b=[x, y]", "c=loglik", "d="]) == {"a": 1, "b": ["x", "y"], "c": "loglik", "d": ""}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides(["novalue"])
