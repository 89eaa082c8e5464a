"""The search-side command line: search, compare, generate, demo (help, errors, resume)."""

from __future__ import annotations

import json

import pytest

from logit_swarm.cli import main
from logit_swarm.search import api

MC = [
    {"prompt": "The quick brown fox jumps over the lazy", "choices": [" dog.", " cat.", " river"], "answer": 0},
    {"prompt": "Hello world! Hello there, general", "choices": [" Kenobi.", " apples", " 12"], "answer": 0},
    {"prompt": "Numbers: 0 1 2 3", "choices": [" 4 5", " 9 9", " x"], "answer": 0},
]


@pytest.fixture(scope="module")
def task_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("clitask")
    (d / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MC))
    (d / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MC[::-1]))
    spec = d / "mc.yaml"
    spec.write_text("kind: multiple_choice\nscoring: loglik_per_byte\nseparator: ''\nmax_new_tokens: 4\n"
                    "data: {dev: dev.jsonl, test: test.jsonl}\n")
    return str(spec)


@pytest.fixture(scope="module")
def two(tiny_dirs):
    return [tiny_dirs["gpt2_a"], tiny_dirs["llama_bl"]]


def search_args(two, task_file, out, *extra):
    return ["search", "--experts", *two, "--task", task_file, "--out", str(out), "--quiet",
            "--set", "swarm_size=4", "--set", "max_iter=4", "--seed", "2", *extra]


@pytest.mark.parametrize("cmd", ["search", "compare", "generate", "demo"])
def test_every_command_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        main([cmd, "--help"])
    assert exc.value.code == 0
    assert f"usage: logit-swarm {cmd}" in capsys.readouterr().out


def _one_line_error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("logit-swarm ")
    return err


def test_missing_expert_directory_is_one_line_exit_2(capsys, tmp_path, task_file, two):
    err = _one_line_error(capsys, ["search", "--experts", two[0], str(tmp_path / "nope"), "--task", task_file,
                                   "--out", str(tmp_path / "r.json")])
    assert "does not exist" in err and "nope" in err


def test_unknown_task_suggests_a_name(capsys, tmp_path, two):
    err = _one_line_error(capsys, ["compare", "--experts", *two, "--task", "zoo-fact-mc"])
    assert "Did you mean" in err and "zoo-facts-mc" in err


def test_bad_setting_and_bad_recipe_are_one_line(capsys, tmp_path, task_file, two):
    err = _one_line_error(capsys, search_args(two, task_file, tmp_path / "r.json", "--set", "swarm_sise=4"))
    assert "did you mean 'swarm_size'" in err
    err = _one_line_error(capsys, ["generate", "--recipe", str(tmp_path / "none.json"), "--prompt", "x"])
    assert "does not exist" in err


def test_search_writes_recipe_and_generate_serves_it(capsys, tmp_path, task_file, two):
    out = tmp_path / "best.json"
    assert main(search_args(two, task_file, out)) == 0
    printed = capsys.readouterr().out
    assert "dev utility" in printed and str(out) in printed
    recipe = json.loads(out.read_text())
    assert recipe["provenance"]["task"] and recipe["decoding"]["max_new_tokens"] == 4
    assert (tmp_path / "best.run" / "history.jsonl").exists()
    # A second search into the same run directory is refused, with the way out in the message.
    err = _one_line_error(capsys, search_args(two, task_file, out))
    assert "--resume" in err
    assert main(["generate", "--recipe", str(out), "--prompt", "Hello world!", "--json"]) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert line["prompt"] == "Hello world!" and isinstance(line["output"], str)


def test_resume_after_interrupt_gives_the_identical_recipe(capsys, tmp_path, task_file, two, monkeypatch):
    full = tmp_path / "full.json"
    assert main(search_args(two, task_file, full)) == 0

    # Interrupt the second run during its third evaluation (iteration 2), like a Ctrl-C.
    calls = {"n": 0}
    real_call = api.TaskUtility.__call__

    def interrupted(self, W):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_call(self, W)

    part = tmp_path / "part.json"
    monkeypatch.setattr(api.TaskUtility, "__call__", interrupted)
    assert main(search_args(two, task_file, part)) == 130
    assert not part.exists()
    monkeypatch.setattr(api.TaskUtility, "__call__", real_call)
    assert main(search_args(two, task_file, part, "--resume")) == 0
    assert part.read_bytes() == full.read_bytes()
    capsys.readouterr()


def test_compare_prints_dev_and_test_table(capsys, tmp_path, task_file, two):
    argv = ["compare", "--experts", *two, "--task", task_file, "--quiet", "--set", "swarm_size=4",
            "--set", "max_iter=2", "--baselines", "best_single,uniform,prediction_merge",
            "--out-dir", str(tmp_path / "cmp")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[1].split()
    assert header[:3] == ["method", "dev", "test"]
    assert "model swarms (PSO)" in out and "prediction merge (vote)" in out
    assert (tmp_path / "cmp" / "recipe.json").exists() and (tmp_path / "cmp" / "table.txt").exists()


def test_generate_reads_prompt_files(capsys, tmp_path, task_file, two):
    out = tmp_path / "g.json"
    assert main(search_args(two, task_file, out)) == 0
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    capsys.readouterr()
    assert main(["generate", "--recipe", str(out), "--file", str(tmp_path / "p.jsonl"),
                 "--max-new-tokens", "2"]) == 0
    assert capsys.readouterr().out.count("--- ") == 2
    (tmp_path / "bad.jsonl").write_text("not json\n")
    err = _one_line_error(capsys, ["generate", "--recipe", str(out), "--file", str(tmp_path / "bad.jsonl")])
    assert "line 1 is not JSON" in err


def test_demo_rejects_unknown_task_before_building_anything(capsys, tmp_path):
    err = _one_line_error(capsys, ["demo", "--out", str(tmp_path / "d"), "--task", "zoo-factz-mc"])
    assert "Did you mean" in err
    assert not (tmp_path / "d").exists()


def test_search_experts_accept_endpoint_urls(tmp_path):
    """--experts mixes directories and remote endpoints; URLs are kept for load_expert."""
    from logit_swarm.search.cli import expert_dirs

    d = tmp_path / "m"
    d.mkdir()
    got = expert_dirs([str(d), "http://127.0.0.1:8001/v1#facts_a"])
    assert got == [d, "http://127.0.0.1:8001/v1#facts_a"]
    with pytest.raises(FileNotFoundError, match="endpoint URLs"):
        expert_dirs([str(tmp_path / "missing"), str(d)])
