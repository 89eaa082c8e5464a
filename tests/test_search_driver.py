"""Tests for logit_swarm.search.driver: one generic loop for every method, history of mixtures,
budgets, checkpoints, exact resume (with the task's own state)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from logit_swarm import atomic
from logit_swarm.search import driver
from logit_swarm.search.driver import (
    CHECKPOINT_FILE,
    HISTORY_FILE,
    RESULT_FILE,
    Resumable,
    read_history,
    run_method,
)
from logit_swarm.search.methods import METHODS, method_names
from logit_swarm.search.methods.pso import SwarmConfig, expand_grid, sample_configs

TARGET = np.array([0.5, 0.3, 0.2, 0.0])
CFG = SwarmConfig(swarm_size=8, max_iter=12, patience=100)
SWARM = {"config": CFG}
ITERATIVE = ["swarm", "random", "differential_evolution", "nelder_mead", "cma_es", "ngopt"]


def mixture_utility(W):
    u = -np.linalg.norm(W - TARGET, axis=1)
    u[W[:, 3] > 0.5] = np.nan  # some rows fail
    return u


class Killer:
    """A utility that raises at call number ``kill_at`` (0-based), like a crash mid-search."""

    def __init__(self, kill_at=None):
        self.kill_at, self.calls = kill_at, []

    def __call__(self, W):
        if self.kill_at is not None and len(self.calls) == self.kill_at:
            raise KeyboardInterrupt("simulated kill")
        self.calls.append(W.shape)
        return mixture_utility(W)


class Counter:
    """A stand-in task with state the utility depends on (like reward normalisation)."""

    def __init__(self):
        self.state = {"calls": 0}
        self.restored = None

    def checkpoint_state(self):
        return dict(self.state)

    def restore_state(self, state):
        self.restored = dict(state)
        self.state = dict(state)


def without_elapsed(history):
    return [{k: v for k, v in rec.items() if k != "elapsed"} for rec in history]


def needs(name):
    if name == "cma_es":
        pytest.importorskip("cma")
    if name == "ngopt":
        pytest.importorskip("nevergrad")


def run(name, evaluate, **kw):
    kw.setdefault("budget", 80 if name != "swarm" else None)
    kw.setdefault("options", SWARM if name == "swarm" else None)
    kw.setdefault("batch", 8)
    return run_method(name, evaluate, 4, progress=False, **kw)


def test_swarm_one_call_per_iteration_with_the_whole_swarm():
    ev = Killer()
    seen = []
    res = run("swarm", ev, seed=0, on_step=seen.append)
    assert ev.calls == [(8, 4)] * (CFG.max_iter + 1)
    assert len(res.history) == CFG.max_iter + 1 == len(seen)
    assert [r["iteration"] for r in res.history] == list(range(CFG.max_iter + 1))
    best_seen = max(u for r in res.history for u in r["utilities"] if u is not None)
    assert res.utility == best_seen == res.history[-1]["g_utility"] == res.history[-1]["best_utility"]
    assert res.n_evaluations == 8 * (CFG.max_iter + 1)


@pytest.mark.parametrize("mode", ["probs", "logits"])
@pytest.mark.parametrize("name", ITERATIVE + ["best_single", "uniform", "greedy"])
def test_every_record_holds_the_mixture_each_row_was_evaluated_with(name, mode):
    """Done-when item: history records the mixture weights of every evaluated row; in mode
    'probs' none is negative and every one sums to 1; in 'logits' they lie in the box."""
    needs(name)
    seen = []

    def utility(W):
        seen.append(W.copy())
        return mixture_utility(W)

    res = run(name, utility, seed=1, mode=mode)
    assert len(res.history) == len(seen)
    for rec, W in zip(res.history, seen):
        w = np.array(rec["weights"], dtype=np.float64)
        np.testing.assert_array_equal(w, W)  # exactly what the utility saw
        if mode == "probs":
            assert (w >= 0).all() and np.allclose(w.sum(axis=1), 1.0, atol=1e-12), name
        else:
            assert (w >= -1).all() and (w <= 1).all()
        if "positions" in rec:  # coordinates of box-based methods, beside the mixture
            assert np.array(rec["positions"]).shape == w.shape


@pytest.mark.parametrize("name", ITERATIVE)
def test_budget_is_met_within_one_swarm_iteration(name):
    needs(name)
    ev = Killer()
    res = run(name, ev, seed=0, budget=100) if name != "swarm" else run(name, ev, seed=0, budget=100)
    assert 100 - 8 < res.n_evaluations <= 100
    assert sum(s[0] for s in ev.calls) == res.n_evaluations
    assert all(0 < s[0] <= 8 for s in ev.calls)


@pytest.mark.parametrize("name", ITERATIVE + ["greedy"])
def test_resume_after_kill_equals_uninterrupted(tmp_path, name):
    needs(name)
    full = run(name, mixture_utility, seed=3, out_dir=tmp_path / "full")
    out = tmp_path / "killed"
    kill_at = 3
    with pytest.raises(KeyboardInterrupt):
        run(name, Killer(kill_at), seed=3, out_dir=out)
    assert len(read_history(out)) == kill_at  # steps 0 .. kill_at-1 are safe
    ev = Killer()
    resumed = run(name, ev, seed=3, out_dir=out, resume=True)
    assert len(ev.calls) == len(full.history) - kill_at  # nothing is evaluated twice
    np.testing.assert_array_equal(resumed.weights, full.weights)
    assert resumed.utility == full.utility and resumed.n_evaluations == full.n_evaluations
    assert without_elapsed(resumed.history) == without_elapsed(full.history)
    assert without_elapsed(read_history(out)) == without_elapsed(read_history(tmp_path / "full"))


def test_task_state_is_checkpointed_and_restored_before_the_first_evaluation(tmp_path):
    task = Counter()
    assert isinstance(task, Resumable)
    calls_at_eval = []

    def utility(W):
        calls_at_eval.append(dict(task.state))
        task.state["calls"] += 1
        return mixture_utility(W)

    n_calls = {"k": 0}

    def dying(W):
        n_calls["k"] += 1
        if n_calls["k"] == 4:
            raise KeyboardInterrupt
        return utility(W)

    with pytest.raises(KeyboardInterrupt):
        run("swarm", dying, seed=0, out_dir=tmp_path, resumable=task)
    saved = json.loads((tmp_path / CHECKPOINT_FILE).read_text())["task_state"]
    assert saved == {"calls": 3}
    task2 = Counter()
    task = task2  # the utility reads the new task's state from here on
    calls_at_eval.clear()
    run("swarm", utility, seed=0, out_dir=tmp_path, resume=True, resumable=task2)
    assert task2.restored == {"calls": 3} and calls_at_eval[0] == {"calls": 3}


def test_files_and_result_json(tmp_path):
    out = tmp_path / "run"
    res = run("swarm", mixture_utility, seed=1, out_dir=out)
    hist = read_history(out)
    assert without_elapsed(hist) == without_elapsed(res.history)
    assert any(u is None for r in hist for u in r["utilities"])  # NaN written as null
    ckpt = json.loads((out / CHECKPOINT_FILE).read_text())
    assert ckpt["history_bytes"] == os.path.getsize(out / HISTORY_FILE)
    assert ckpt["n_evaluations"] == res.n_evaluations and ckpt["method"] == "swarm"
    back = json.loads((out / RESULT_FILE).read_text())
    assert back["weights"] == list(res.weights) and back["n_evaluations"] == res.n_evaluations
    assert sorted(os.listdir(out)) == sorted([CHECKPOINT_FILE, HISTORY_FILE, RESULT_FILE])


def test_resume_truncates_history_written_after_the_last_checkpoint(tmp_path, monkeypatch):
    full = run("swarm", mixture_utility, seed=5)
    out = tmp_path / "run"
    real_save = driver._checkpoint
    count = {"n": 0}

    def crash_on_fourth(*args, **kwargs):
        count["n"] += 1
        if count["n"] == 4:  # history line of step 3 is written, its checkpoint is not
            raise OSError("disk full")
        real_save(*args, **kwargs)

    monkeypatch.setattr(driver, "_checkpoint", crash_on_fourth)
    with pytest.raises(OSError):
        run("swarm", mixture_utility, seed=5, out_dir=out)
    assert len(read_history(out)) == 4
    monkeypatch.setattr(driver, "_checkpoint", real_save)
    resumed = run("swarm", mixture_utility, seed=5, out_dir=out, resume=True)
    assert without_elapsed(resumed.history) == without_elapsed(full.history)
    assert [r["step"] for r in read_history(out)] == list(range(CFG.max_iter + 1))


def test_resume_of_finished_run_evaluates_nothing(tmp_path):
    res = run("swarm", mixture_utility, seed=0, out_dir=tmp_path)
    again = run("swarm", Killer(kill_at=0), seed=0, out_dir=tmp_path, resume=True)
    assert without_elapsed(again.history) == without_elapsed(res.history) and again.elapsed == res.elapsed


def test_refusals(tmp_path):
    run("swarm", mixture_utility, seed=0, out_dir=tmp_path)
    with pytest.raises(ValueError, match="resume=True"):
        run("swarm", mixture_utility, seed=0, out_dir=tmp_path)
    with pytest.raises(ValueError, match="seed"):
        run("swarm", mixture_utility, seed=1, out_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match="other settings"):
        run("swarm", mixture_utility, seed=0, out_dir=tmp_path, resume=True,
            options={"config": CFG.replace(inertia=0.1)})
    with pytest.raises(ValueError, match="out_dir"):
        run("swarm", mixture_utility, resume=True)
    with pytest.raises(ValueError, match=r"shape \(8,\)"):
        run("swarm", lambda W: np.zeros((len(W), 1)))
    with pytest.raises(ValueError, match="budget"):
        run_method("random", mixture_utility, 4, progress=False)
    with pytest.raises(ValueError, match="search method"):
        run_method("swam", mixture_utility, 4, progress=False)


def test_replay_detects_a_history_that_does_not_match(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run("random", Killer(3), seed=0, out_dir=tmp_path)
    lines = (tmp_path / HISTORY_FILE).read_text().splitlines()
    rec = json.loads(lines[1])
    for key in ("weights", "positions"):  # positions when the coordinates differ from the mixture
        if key in rec:
            rec[key][0][0] += 1e-3
    (tmp_path / HISTORY_FILE).write_text("\n".join([lines[0], json.dumps(rec)] + lines[2:]) + "\n")
    with pytest.raises(ValueError, match="does not match"):
        run("random", mixture_utility, seed=0, out_dir=tmp_path, resume=True)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    out = tmp_path / "run"
    run("uniform", mixture_utility, out_dir=out)
    before = (out / CHECKPOINT_FILE).read_text()

    def failing_replace(src, dst):
        raise OSError("power cut during rename")

    monkeypatch.setattr(atomic.os, "replace", failing_replace)
    with pytest.raises(OSError):
        atomic.atomic_write_text(out / CHECKPOINT_FILE, '{"half": ')
    assert (out / CHECKPOINT_FILE).read_text() == before  # old checkpoint intact
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]  # no partial file left


def test_progress_bar_on_stderr(capsys):
    run_method("swarm", mixture_utility, 4, options={"config": CFG.replace(max_iter=2)}, progress=True)
    err = capsys.readouterr().err
    assert "model swarms" in err and "best=" in err


def test_dropped_iterations_make_no_call():
    cfg = SwarmConfig(swarm_size=6, drop_iter=0.6, max_iter=15, patience=100)
    ev = Killer()
    res = run("swarm", ev, seed=2, options={"config": cfg})
    assert all(s[0] > 0 for s in ev.calls) and len(ev.calls) == len(res.history)
    assert max(r["iteration"] for r in res.history) > len(res.history) - 1  # some iterations were dropped


def test_grid_runs_count_every_evaluation_and_keep_the_best(tmp_path):
    grid = {"inertia": [0.1, 0.4], "step_length": [0.5]}
    configs = expand_grid(grid, base=CFG)
    assert [(c.inertia, c.step_length) for c in configs] == [(0.1, 0.5), (0.4, 0.5)]
    singles = [run("swarm", mixture_utility, seed=s, options={"config": c}) for c in configs for s in (0, 1)]
    res = run("swarm", mixture_utility, options={"configs": configs, "seeds": [0, 1]}, out_dir=tmp_path)
    assert res.n_evaluations == sum(r.n_evaluations for r in singles)
    assert res.utility == max(r.utility for r in singles)
    assert sorted({r["run"] for r in res.history}) == [0, 1, 2, 3]
    again = run("swarm", Killer(kill_at=0), options={"configs": configs, "seeds": [0, 1]}, out_dir=tmp_path,
                resume=True)
    assert again.utility == res.utility
    picked = sample_configs({"inertia": [0.1, 0.2, 0.3], "social": [0.2, 0.4]}, 3, np.random.default_rng(0))
    assert len(picked) == 3 and len({(c.inertia, c.social) for c in picked}) == 3
    with pytest.raises(ValueError, match="unknown swarm setting"):
        expand_grid({"intertia": [0.1]})


def test_registry_lists_every_family_in_table_order():
    names = method_names()
    assert names[0] == "swarm"
    for n in ("best_single", "uniform", "greedy", "em", "packllm", "prediction_merge", "differential_evolution",
              "nelder_mead", "random", "cma_es", "ngopt"):
        assert n in names and METHODS.get(n).mapping
    assert {METHODS.get(n).kind for n in names} == {"search", "output"}
