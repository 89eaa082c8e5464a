"""swarm_search, compare, the model-output baselines and the plots, on tiny local experts.

The tiny experts are random-initialised, so utilities are near chance: these tests pin the
plumbing (batching, recipes, determinism, the dev/test discipline). The quality claim of the issue
(test score beats the best single expert and the uniform mixture where two experts know disjoint
halves) needs the trained zoo and is ``test_zoo_facts_search_beats_single_and_uniform`` (slow).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import logit_swarm as ls
from logit_swarm.search import SwarmConfig, load_search_config
from logit_swarm.search.api import TaskUtility, swarm_search
from logit_swarm.search.compare import PER_QUESTION_FILE, compare
from logit_swarm.search.methods import MethodUnavailable
from logit_swarm.search.methods import em as em_method
from logit_swarm.search.methods import packllm as pk_method
from logit_swarm.search.methods import vote as vote_method

MC = [
    {"prompt": "The quick brown fox jumps over the lazy", "choices": [" dog.", " cat.", " river"], "answer": 0},
    {"prompt": "Hello world! Hello there, general", "choices": [" Kenobi.", " apples", " 12"], "answer": 0},
    {"prompt": "Numbers: 0 1 2 3", "choices": [" 4 5", " 9 9", " x"], "answer": 0},
    {"prompt": "for i in range(10):", "choices": ["\n    print(i * i)", " melons", " the"], "answer": 0},
    {"prompt": "Alice went to the market and bought", "choices": [" 12 apples", " a river", " 😀"], "answer": 0},
]
EM = [{"prompt": "Alice bought 12 apples and 7 pears. Total fruit:", "answer": "19"},
      {"prompt": "Is the sky green? Answer yes or no:", "answer": "no"},
      {"prompt": "def add(a, b):", "answer": "return a + b"}]
SMALL = {"swarm_size": 4, "max_iter": 3}


def mc_spec(**kw):
    return {"kind": "multiple_choice", "name": "mc", "scoring": "loglik_per_byte", "separator": "",
            "data": {"dev": MC, "test": MC[::-1]}, "max_new_tokens": 6, **kw}


@pytest.fixture(scope="module")
def pair(experts):
    """Two tiny experts with one shared tokenizer (token units, fast)."""
    return [experts["gpt2_a"], experts["llama_bl"]]


@pytest.fixture(scope="module")
def mc_file(tmp_path_factory):
    """The MC task as a spec file with JSONL data (so recipes can name it)."""
    d = tmp_path_factory.mktemp("task")
    for split, recs in (("dev", MC), ("test", MC[::-1])):
        (d / f"mc.{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    spec = d / "mc.yaml"
    spec.write_text("kind: multiple_choice\nscoring: loglik_per_byte\nseparator: ''\nmax_new_tokens: 6\n"
                    "data: {dev: mc.dev.jsonl, test: mc.test.jsonl}\n")
    return spec


def test_swarm_search_end_to_end_recipe_round_trip(pair, mc_file, tmp_path):
    res = swarm_search(pair, str(mc_file), seed=3, config=SMALL, out_dir=tmp_path / "run", progress=False)
    assert res.weights.shape == (2,) and np.isfinite(res.utility)
    assert len(res.history) == SMALL["max_iter"] + 1 or len(res.history) <= SMALL["max_iter"] + 1
    assert res.n_evaluations == sum(len(h["evaluated"]) for h in res.history)
    ens = res.ensemble
    assert isinstance(ens, ls.Ensemble) and ens.mode == "probs"
    np.testing.assert_array_equal(ens.weights, res.weights)
    assert ens.decoding["max_new_tokens"] == 6
    prov = ens.provenance
    assert prov["task"] == str(mc_file.resolve()) and prov["seed"] == 3
    assert prov["n_evaluations"] == res.n_evaluations and prov["config"]["swarm_size"] == 4
    assert prov["history"]["best"][-1] == res.utility
    # The run directory holds the recipe; it loads back into a working ensemble with the same
    # weights, and that ensemble scores the same dev utility as the search reported.
    loaded = ls.Ensemble.load(tmp_path / "run" / "recipe.json")
    np.testing.assert_array_equal(loaded.weights, res.weights)
    assert loaded.provenance == json.loads(json.dumps(prov))
    u = ls.load_task(str(mc_file)).evaluate(loaded, split="dev")
    assert u[0] == pytest.approx(res.utility, abs=1e-12)


def test_swarm_search_is_deterministic_and_accepts_names_and_tasks(pair):
    task = ls.load_task(mc_spec())
    a = swarm_search(pair, task, seed=5, config=SMALL, progress=False)
    b = swarm_search(pair, ls.load_task(mc_spec()), seed=5, config=SwarmConfig(**SMALL), progress=False)
    np.testing.assert_array_equal(a.weights, b.weights)
    assert [h["weights"] for h in a.history] == [h["weights"] for h in b.history]
    assert a.ensemble.provenance["task"] is None  # an inline spec cannot be reloaded by name


def test_swarm_search_refuses_test_split_and_small_swarm(pair):
    with pytest.raises(ValueError, match="test data must never steer"):
        swarm_search(pair, mc_spec(), split="test", config=SMALL, progress=False)
    with pytest.raises(ValueError, match="swarm_size 2 is smaller"):
        swarm_search(pair + pair[:1], mc_spec(), config={"swarm_size": 2}, progress=False)
    with pytest.raises(ValueError, match="did you mean 'inertia'"):
        swarm_search(pair, mc_spec(), config={"intertia": 0.1}, progress=False)


def test_load_search_config_files_and_grid(tmp_path):
    f = tmp_path / "cfg.yaml"
    f.write_text("swarm_size: 6\nmax_iter: 2\ngrid: {inertia: [0.1, 0.2]}\nseeds: [0, 1]\n")
    plan = load_search_config(f, {"max_iter": 1})
    assert plan.config.swarm_size == 6 and plan.config.max_iter == 1
    assert plan.grid == {"inertia": [0.1, 0.2]} and plan.seeds == (0, 1)
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="must be a mapping"):
        load_search_config(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError):
        load_search_config(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="only apply with a grid"):
        load_search_config({"seeds": [1]})


def test_grid_keeps_best_dev_run(pair, tmp_path):
    res = swarm_search(pair, mc_spec(), seed=0, out_dir=tmp_path / "g", progress=False,
                       config={**SMALL, "grid": {"inertia": [0.1, 0.3]}, "seeds": [0, 1]})
    runs = res.ensemble.provenance["grid"]["runs"]
    assert len(runs) == 4 and res.grid is not None
    assert res.utility == max(r["utility"] for r in runs)


def test_task_utility_marks_unusable_rows_nan(pair):
    util = TaskUtility(ls.load_task(mc_spec()), pair)
    u = util(np.array([[1.0, 0.0], [-1.0, 0.0], [np.nan, 1.0], [0.5, 0.5]]))
    assert np.isnan(u[1]) and np.isnan(u[2]) and np.isfinite(u[[0, 3]]).all()
    assert util.rows == 4 and util.calls == 1


# ------------------------------------------------------------------------------ model baselines


def test_vote_plurality_and_dev_ranked_tie_break():
    assert vote_method._vote(["x", "y", "y", None], order=[0, 1, 2, 3]) == ("y", 1)
    assert vote_method._vote(["x", "y", None], order=[1, 0, 2]) == ("y", 1)  # tie -> best-ranked expert
    assert vote_method._vote([None, None], order=[0, 1]) == (None, -1)


def test_packllm_weights_are_a_softmax_of_negative_cross_entropy():
    ce = np.array([[1.0, 2.0], [3.0, 3.0]])
    w = pk_method.packllm_weights(ce, 0.5)
    np.testing.assert_allclose(w[0], [1 / (1 + np.exp(-2)), np.exp(-2) / (1 + np.exp(-2))])
    np.testing.assert_allclose(w[1], [0.5, 0.5])
    with pytest.raises(ValueError):
        pk_method.packllm_weights(ce, 0.0)


@pytest.mark.parametrize("spec", [mc_spec(), {"kind": "exact_match", "name": "em", "data": {"dev": EM},
                                              "max_new_tokens": 3}])
def test_per_example_weights_match_task_evaluate_for_constant_rows(pair, spec):
    task = ls.load_task(spec)
    w = np.array([0.3, 0.7])
    n = len(task.examples("dev"))
    per = pk_method.evaluate_per_example(task, pair, np.tile(w, (n, 1)), "dev")
    assert per.mean() == pytest.approx(task.evaluate(pair, w)[0], abs=1e-12)


def test_prediction_merge_and_packllm_on_mc(pair):
    task = ls.load_task(mc_spec())
    pm = vote_method.prediction_merge(task, pair, "dev")
    assert 0 <= pm.utility <= 1 and pm.per_question.shape == (len(MC),)
    pk = pk_method.packllm(task, pair, "dev", taus=(0.1, 1.0))
    assert pk.details["tau"] in (0.1, 1.0) and 0 <= pk.utility <= 1
    with pytest.raises(ls.tasks.TestSplitError):
        vote_method.prediction_merge(task, pair, "test")


def test_model_baselines_say_why_they_are_absent(pair):
    lik = ls.load_task({"kind": "likelihood", "name": "lik", "data": {"dev": [{"text": "hello world"}]}})
    with pytest.raises(MethodUnavailable, match="discrete answers"):
        vote_method.prediction_merge(lik, pair, "dev")
    with pytest.raises(MethodUnavailable, match="no prompt"):
        pk_method.packllm(lik, pair, "dev")


def test_em_targets_join_answers_like_the_prompt_expects():
    em = ls.load_task({"kind": "exact_match", "name": "em", "data": {"dev": EM + [
        {"prompt": "Q: capital?\nA:", "answer": " Paris"}]}})
    _, cont, norm = em_method.em_targets(em, "dev")
    assert cont == [" 19", " no", " return a + b", " Paris"] and norm


# ------------------------------------------------------------------------------ compare


def test_compare_uses_test_only_after_every_dev_choice(pair, tmp_path, monkeypatch):
    task = ls.load_task(mc_spec())
    seen = []
    orig = type(task).evaluate_detailed

    def spy(self, experts, W=None, split="dev", **kw):
        seen.append(split)
        return orig(self, experts, W, split=split, **kw)

    monkeypatch.setattr(type(task), "evaluate_detailed", spy)
    res = compare(pair, task, seed=0, config=SMALL, out_dir=tmp_path, progress=False,
                  baselines=["best_single", "uniform", "prediction_merge", "packllm", "em", "random"])
    first_test = seen.index("test")
    assert set(seen[:first_test]) == {"dev"} and set(seen[first_test:]) == {"test"}
    names = [r.name for r in res.rows]
    assert names == ["swarm", "best_single", "uniform", "prediction_merge", "packllm", "em", "random"]
    assert all(r.test is not None for r in res.rows)
    assert res.row("random").n_evaluations == res.row("swarm").n_evaluations  # same budget
    table = res.format_table()
    assert "model swarms (PSO)" in table and "test" in table.splitlines()[1]
    saved = json.loads((tmp_path / "compare.json").read_text())
    assert saved["rows"][0]["name"] == "swarm" and saved["budget"] == res.row("swarm").n_evaluations
    lines = [json.loads(x) for x in (tmp_path / PER_QUESTION_FILE).read_text().splitlines()]
    for name in names:  # one line per method x split x question
        for split, n in (("dev", len(MC)), ("test", len(MC))):
            got = [x for x in lines if x["method"] == name and x["split"] == split]
            assert sorted(x["question"] for x in got) == sorted(f"{split}-{i}" for i in range(n))
            assert all(x["correct"] in (True, False) for x in got)
    row = res.row("swarm")
    swarm_dev = np.mean([x["score"] for x in lines if x["method"] == "swarm" and x["split"] == "dev"])
    assert swarm_dev == pytest.approx(row.dev) and np.mean(
        [x["score"] for x in lines if x["method"] == "swarm" and x["split"] == "test"]) == pytest.approx(row.test)


def test_compare_rejects_unknown_baseline(pair):
    with pytest.raises(ValueError, match="Did you mean: uniform"):
        compare(pair, mc_spec(), methods=["unifrom"], progress=False)


# ------------------------------------------------------------------------------ plots


def test_plots_from_history(pair, tmp_path):
    pytest.importorskip("matplotlib")
    from logit_swarm.search.plots import plot_history

    swarm_search(pair, mc_spec(), seed=0, config=SMALL, out_dir=tmp_path / "run", progress=False)
    paths = plot_history(tmp_path / "run", tmp_path / "png", ["a", "b"], title="mc")
    assert [p.name for p in paths] == ["utility.png", "weights.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


def test_plots_without_matplotlib_say_how_to_install(monkeypatch, tmp_path):
    import builtins

    from logit_swarm.search.plots import PlotsUnavailable, plot_history

    real = builtins.__import__

    def fake(name, *a, **kw):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(PlotsUnavailable, match="pip install"):
        plot_history([{"iteration": 0}], tmp_path)


# ------------------------------------------------------------------------------ the zoo (slow)


@pytest.mark.slow
def test_zoo_facts_search_beats_single_and_uniform():
    """Issue 5, Done-when: facts_a and facts_b know disjoint halves; on held-out TEST questions the
    searched mixture beats the best single expert and the uniform mixture (all zoo experts)."""
    from logit_swarm.zoo import zoo_experts

    paths = zoo_experts()  # builds the tiny zoo on first use (minutes)
    experts = [ls.load_expert(p) for p in paths.values()]
    res = compare(experts, "zoo-facts-mc", seed=0, progress=False,
                  baselines=["best_single", "uniform"])
    swarm, best, uni = res.row("swarm"), res.row("best_single"), res.row("uniform")
    assert swarm.test > best.test and swarm.test > uni.test, res.format_table()


# ------------------------------------------------------------------------------ memo


@pytest.mark.parametrize("names", [("gpt2_a", "llama_bl"), ("gpt2_a", "llama_sp")], ids=["token", "byte"])
def test_memo_gives_the_same_outputs_with_fewer_forward_rows(experts, names):
    from logit_swarm.search.memo import memo_stats, memoize

    plain = [experts[n] for n in names]
    memo = memoize(plain)
    prompts = ["The quick brown fox", "Hello world!", "def add(a, b):"]
    W = np.array([[0.7, 0.3], [0.4, 0.6]])
    rows = [p for _ in W for p in prompts]
    RW = np.repeat(W, len(prompts), axis=0)
    ens, mens = ls.Ensemble(plain), ls.Ensemble(memo)
    for step in range(2):  # two "iterations" of the same swarm: the second is served by the memo
        before = sum(e.forward_rows for e in plain)
        a = ens.generate(rows, max_new_tokens=5, weights=RW)
        mid = sum(e.forward_rows for e in plain)
        b = mens.generate(rows, max_new_tokens=5, weights=RW)
        after = sum(e.forward_rows for e in plain)
        assert a == b
        if step == 1:
            assert after - mid == 0 < mid - before
    stats = memo_stats(memo)
    assert 0.4 < stats["hit_rate"] < 1
    assert all(len(m.store) == 0 for m in memo)  # every node handed out was released


def test_swarm_search_with_memo_follows_the_same_trajectory(pair):
    spec = {"kind": "exact_match", "name": "em", "data": {"dev": EM}, "max_new_tokens": 3}
    a = swarm_search(pair, spec, seed=1, config=SMALL, progress=False)  # auto: text generation -> memo
    b = swarm_search(pair, spec, seed=1, config=SMALL, progress=False, memo=False)
    assert a.memo is not None and a.memo["hit_rate"] > 0 and b.memo is None
    assert [h["utilities"] for h in a.history] == [h["utilities"] for h in b.history]
    np.testing.assert_array_equal(a.weights, b.weights)
    assert swarm_search(pair, mc_spec(), config=SMALL, progress=False).memo is None  # scored, not decoded


def test_paper_grid_config_is_the_scripts_grid():
    from pathlib import Path

    plan = load_search_config(Path(__file__).parent.parent / "experiments" / "configs" / "paper_grid.yaml")
    assert plan.grid["inertia"] == [0.1, 0.2, 0.3] and plan.grid["step_length"][0] == 0.5
    assert plan.grid_samples == 5 and plan.config == SwarmConfig()
    assert (SwarmConfig().swarm_size, SwarmConfig().patience, SwarmConfig().max_iter) == (20, 10, 50)
    assert (SwarmConfig().step_length_factor, SwarmConfig().min_step_length) == (0.95, 0.1)
    assert SwarmConfig().restart_patience * SwarmConfig().patience == 5


def test_compare_gives_every_budgeted_method_the_swarms_count(pair, tmp_path):
    """Done-when item: at default settings every iterative method uses the swarm's number of
    utility evaluations, within one swarm iteration; CMA-ES and NGOpt are among them."""
    pytest.importorskip("cma")
    pytest.importorskip("nevergrad")
    from logit_swarm.search.compare import default_methods

    assert {"cma_es", "ngopt", "random", "differential_evolution", "nelder_mead"} <= set(default_methods())
    cfg = {"swarm_size": 6, "max_iter": 4, "patience": 10}
    res = compare(pair, mc_spec(), seed=1, config=cfg, progress=False, test_split=None,
                  methods=["random", "differential_evolution", "nelder_mead", "cma_es", "ngopt", "swarm_restarts"])
    n = res.row("swarm").n_evaluations
    assert n == 6 * 5 and res.budget == n
    for name in ("random", "differential_evolution", "nelder_mead", "cma_es", "ngopt", "swarm_restarts"):
        assert n - 6 < res.row(name).n_evaluations <= n, name


def test_compare_resumes_every_method_from_its_run_directory(pair, tmp_path):
    methods = ["best_single", "greedy", "random", "nelder_mead"]
    first = compare(pair, mc_spec(), seed=2, config=SMALL, out_dir=tmp_path, progress=False, methods=methods)
    sizes = {p: p.stat().st_size for p in tmp_path.rglob("history.jsonl")}
    assert len(sizes) == 1 + len(methods)  # search/ and methods/NAME/
    again = compare(pair, mc_spec(), seed=2, config=SMALL, out_dir=tmp_path, progress=False, methods=methods,
                    resume=True)
    assert [(r.name, r.dev, r.test, r.n_evaluations) for r in again.rows] == [
        (r.name, r.dev, r.test, r.n_evaluations) for r in first.rows]
    assert {p: p.stat().st_size for p in tmp_path.rglob("history.jsonl")} == sizes  # nothing re-evaluated
