"""``logit-swarm analyze``: weak-to-strong, c-emerge and n-experts on the (micro) zoo, small budgets;
the C-emerge arithmetic by hand; the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from logit_swarm.cli import main
from logit_swarm.search.analyze import c_emerge, emergence, n_experts, read_per_question, weak_to_strong
from logit_swarm.tasks import load_task
from logit_swarm.zoo import build_zoo

CONFIG = {"swarm_size": 6, "max_iter": 2}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """The micro zoo (same experts, tokenizers and architectures as the tiny one; seconds to build)."""
    paths = build_zoo(tmp_path_factory.mktemp("zoo") / "micro", size="micro", progress=False)
    return [str(p) for p in paths.values()]


@pytest.fixture(scope="module")
def pool(zoo):
    import logit_swarm as ls

    return [ls.load_expert(p) for p in zoo]


@pytest.fixture(scope="module")
def task():
    return load_task("zoo-facts-mc", limit=16)


def written(out, name):
    files = [out / f"{name}.{ext}" for ext in ("txt", "json", "png")]
    assert all(f.is_file() and f.stat().st_size > 0 for f in files), files
    assert files[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return json.loads(files[1].read_text())


def test_weak_to_strong_on_the_zoo(pool, task, tmp_path):
    a = weak_to_strong(pool, task, config=CONFIG, out_dir=tmp_path)
    d = written(tmp_path, "weak-to-strong")
    dev = np.array(d["expert_dev"], dtype=float)
    assert len(d["weak"]) == 3 and set(d["weak"]) == {d["experts"][i] for i in np.argsort(dev, kind="stable")[:3]}
    assert d["best_start"] in d["weak"]
    start = d["experts"].index(d["best_start"])
    assert d["margin_best_start"] == pytest.approx(d["result"]["test"] - d["expert_test"][start])
    assert d["beats_best_start"] == (d["margin_best_start"] > 0)
    assert len(d["result"]["weights"]) == 3  # the result mixes the weak experts only
    assert "swarm from the weak half" in a.table and (tmp_path / "search" / "recipe.json").is_file()
    # Rerunning into the same directory reuses the finished search with --resume, refuses without.
    again = weak_to_strong(pool, task, config=CONFIG, out_dir=tmp_path, resume=True)
    assert again.data == a.data
    with pytest.raises(ValueError, match="already holds a search"):
        weak_to_strong(pool, task, config=CONFIG, out_dir=tmp_path)


def test_c_emerge_on_the_zoo(pool, task, tmp_path):
    c_emerge(pool, task, config=CONFIG, out_dir=tmp_path)
    d = written(tmp_path, "c-emerge")
    assert d["questions"] == 16 and len(d["solved_by_expert"]) == len(pool)
    assert d["emergent"] == len(d["emergent_ids"]) <= d["solved_by_result"]
    assert d["c_emerge"] == pytest.approx(d["emergent"] / d["questions"])
    # Recompute from the task's own per-question results with the recipe's weights.
    W = np.vstack([np.eye(len(pool)), np.array(d["weights"], dtype=float)[None]])
    q = task.question_results(pool, W, split="test", allow_test=True)
    assert emergence(q.solved[-1], q.solved[:-1]) == {k: d[k] for k in emergence(q.solved[-1], q.solved[:-1])}


def test_n_experts_on_the_zoo(pool, task, tmp_path):
    n_experts(pool, task, config=CONFIG, out_dir=tmp_path, order="best-first")
    d = written(tmp_path, "n-experts")
    steps = d["steps"]
    assert [s["k"] for s in steps] == list(range(1, len(pool) + 1))
    first = steps[0]
    assert first["n_evaluations"] == 1 and first["test"] == first["best_single_test"]
    assert all(s["n_evaluations"] > 1 and len(s["weights"]) == s["k"] for s in steps[1:])
    devs = [s["best_single_dev"] for s in steps]
    assert devs == [devs[0]] * len(devs)  # best-first: the best single expert is the first one added


def test_emergence_by_hand():
    res = np.array([1, 1, 0, 1, 0], bool)
    experts = np.array([[1, 0, 0, 0, 1], [0, 0, 1, 0, 0]], bool)
    e = emergence(res, experts)
    assert e == {"questions": 5, "solved_by_result": 3, "solved_by_any_expert": 3, "emergent": 2, "lost": 2,
                 "c_emerge": 0.4, "solved_by_expert": [2, 1]}
    with pytest.raises(ValueError):
        emergence(res, experts[:, :3])


def per_question_file(tmp_path):
    rows = []
    for method, flags in (("swarm", [1, 1, 0, 1]), ("expert:a", [1, 0, 0, 0]), ("expert:b", [0, 0, 1, 0]),
                          ("uniform", [1, 1, 1, 1])):
        for split in ("dev", "test"):
            for i, f in enumerate(flags if split == "test" else [1, 1, 1, 1]):
                rows.append({"method": method, "split": split, "question": f"q{i}", "score": float(f),
                             "correct": bool(f)})
    p = tmp_path / "per_question.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_c_emerge_reads_per_question_results(tmp_path):
    p = per_question_file(tmp_path)
    ids, res, names, flags = read_per_question(p)
    assert ids == ["q0", "q1", "q2", "q3"] and names == ["a", "b"] and res.tolist() == [True, True, False, True]
    a = c_emerge(per_question=tmp_path, task="demo", out_dir=tmp_path / "out")
    assert a.data["emergent"] == 2 and a.data["emergent_ids"] == ["q1", "q3"] and a.data["c_emerge"] == 0.5
    assert c_emerge(per_question=p, method="uniform").data["lost"] == 0
    with pytest.raises(ValueError, match="no 'test' results of method 'greedy'"):
        c_emerge(per_question=p, method="greedy")


def test_analyze_command_line(tmp_path, capsys, zoo):
    p = per_question_file(tmp_path)
    assert main(["analyze", "c-emerge", "--per-question", str(p), "--out-dir", str(tmp_path / "cli")]) == 0
    assert "result and no expert (C-emerge)" in capsys.readouterr().out
    assert (tmp_path / "cli" / "c-emerge.png").is_file()
    assert main(["analyze", "c-emerge", "--out-dir", str(tmp_path / "x")]) == 2
    assert "needs --experts and --task (or --per-question FILE)" in capsys.readouterr().err
    spec = tmp_path / "facts.yaml"
    spec.write_text("kind: multiple_choice\nscoring: loglik_per_byte\nprompt: '{prompt}'\nseparator: ''\n"
                    "data: {generator: zoo, task: facts, kind: multiple_choice, sizes: {dev: 8, test: 8}}\n")
    args = ["analyze", "weak-to-strong", "--experts", *zoo, "--task", str(spec), "--set", "swarm_size=6",
            "--set", "max_iter=1", "--quiet", "--out-dir", str(tmp_path / "w2s")]
    assert main(args) == 0
    assert "best starting expert (on dev)" in capsys.readouterr().out
    written(tmp_path / "w2s", "weak-to-strong")
