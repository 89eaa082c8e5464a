"""Tests for logit_swarm.search.driver: one call per iteration, history, checkpoints, exact resume."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from logit_swarm.search import _common, driver
from logit_swarm.search.driver import (
    CHECKPOINT_FILE,
    HISTORY_FILE,
    RESULT_FILE,
    SearchResult,
    expand_grid,
    run_grid,
    run_search,
    sample_configs,
)
from logit_swarm.search.pso import SwarmConfig, state_to_dict

TARGET = np.array([0.5, 0.3, 0.2, 0.0])
CFG = SwarmConfig(swarm_size=8, max_iter=12, patience=100)


def mixture_utility(W):
    c = np.clip(W, 0.0, None)
    c = c / c.sum(axis=1, keepdims=True)
    u = -np.linalg.norm(c - TARGET, axis=1)
    u[c[:, 3] > 0.5] = np.nan  # some particles fail
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


def without_elapsed(history):
    return [{k: v for k, v in rec.items() if k != "elapsed"} for rec in history]


def read_history(out_dir):
    with open(os.path.join(out_dir, HISTORY_FILE)) as f:
        return [json.loads(line) for line in f]


def assert_same_result(a: SearchResult, b: SearchResult):
    np.testing.assert_array_equal(a.weights, b.weights)
    assert a.utility == b.utility and a.n_evaluations == b.n_evaluations
    assert without_elapsed(a.history) == without_elapsed(b.history)
    assert state_to_dict(a.state) == state_to_dict(b.state)


def test_one_call_per_iteration_with_the_whole_swarm():
    ev = Killer()
    seen = []
    res = run_search(ev, 4, CFG, progress=False, seed=0, on_iteration=seen.append)
    assert ev.calls == [(8, 4)] * (CFG.max_iter + 1)
    assert len(res.history) == CFG.max_iter + 1 == len(seen)
    assert [r["iteration"] for r in res.history] == list(range(CFG.max_iter + 1))
    best_seen = max(u for r in res.history for u in r["utilities"] if u is not None)
    assert res.utility == best_seen == res.history[-1]["g_utility"]
    assert res.history[0]["step_length"] is None and res.history[1]["step_length"] == 1.0
    assert res.n_evaluations == 8 * (CFG.max_iter + 1)


def test_files_and_result_json(tmp_path):
    out = tmp_path / "run"
    res = run_search(mixture_utility, 4, CFG, out_dir=out, progress=False, seed=1)
    hist = read_history(out)
    assert without_elapsed(hist) == without_elapsed(res.history)
    assert any(u is None for r in hist for u in r["utilities"])  # NaN written as null
    ckpt = json.loads((out / CHECKPOINT_FILE).read_text())
    assert ckpt["history_bytes"] == os.path.getsize(out / HISTORY_FILE)
    back = SearchResult.from_json((out / RESULT_FILE).read_text())
    assert_same_result(back, res)
    assert sorted(os.listdir(out)) == sorted([CHECKPOINT_FILE, HISTORY_FILE, RESULT_FILE])


@pytest.mark.parametrize("kill_at", [1, 5, 12])
def test_resume_after_kill_equals_uninterrupted(tmp_path, kill_at):
    full = run_search(mixture_utility, 4, CFG, out_dir=tmp_path / "full", progress=False, seed=3)
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        run_search(Killer(kill_at), 4, CFG, out_dir=out, progress=False, seed=3)
    assert len(read_history(out)) == kill_at  # iterations 0 .. kill_at-1 are safe
    ev = Killer()
    resumed = run_search(ev, 4, None, out_dir=out, resume=True, progress=False, seed=3)
    assert len(ev.calls) == CFG.max_iter + 1 - kill_at  # nothing is evaluated twice
    assert_same_result(resumed, full)
    assert without_elapsed(read_history(out)) == without_elapsed(read_history(tmp_path / "full"))


def test_resume_truncates_history_written_after_the_last_checkpoint(tmp_path, monkeypatch):
    full = run_search(mixture_utility, 4, CFG, progress=False, seed=5)
    out = tmp_path / "run"
    real_save = driver._save_checkpoint
    count = {"n": 0}

    def crash_on_fourth(*args, **kwargs):
        count["n"] += 1
        if count["n"] == 4:  # history line of iteration 3 is written, its checkpoint is not
            raise OSError("disk full")
        real_save(*args, **kwargs)

    monkeypatch.setattr(driver, "_save_checkpoint", crash_on_fourth)
    with pytest.raises(OSError):
        run_search(mixture_utility, 4, CFG, out_dir=out, progress=False, seed=5)
    assert len(read_history(out)) == 4
    monkeypatch.setattr(driver, "_save_checkpoint", real_save)
    resumed = run_search(mixture_utility, 4, CFG, out_dir=out, resume=True, progress=False, seed=5)
    assert_same_result(resumed, full)
    assert [r["iteration"] for r in read_history(out)] == list(range(CFG.max_iter + 1))


def test_resume_of_finished_run_evaluates_nothing(tmp_path):
    res = run_search(mixture_utility, 4, CFG, out_dir=tmp_path, progress=False, seed=0)
    again = run_search(Killer(kill_at=0), 4, CFG, out_dir=tmp_path, resume=True, progress=False, seed=0)
    assert_same_result(again, res)
    assert again.elapsed == res.elapsed


def test_resume_with_no_checkpoint_starts_fresh(tmp_path):
    res = run_search(mixture_utility, 4, CFG, out_dir=tmp_path / "new", resume=True, progress=False)
    assert_same_result(res, run_search(mixture_utility, 4, CFG, progress=False))


def test_refusals(tmp_path):
    run_search(mixture_utility, 4, CFG, out_dir=tmp_path, progress=False, seed=0)
    with pytest.raises(ValueError, match="resume=True"):
        run_search(mixture_utility, 4, CFG, out_dir=tmp_path, progress=False, seed=0)
    with pytest.raises(ValueError, match="seed"):
        run_search(mixture_utility, 4, CFG, out_dir=tmp_path, resume=True, progress=False, seed=1)
    with pytest.raises(ValueError, match="config differs"):
        run_search(mixture_utility, 4, CFG.replace(inertia=0.1), out_dir=tmp_path, resume=True,
                   progress=False, seed=0)
    with pytest.raises(ValueError, match="experts"):
        run_search(mixture_utility, 5, CFG, out_dir=tmp_path, resume=True, progress=False, seed=0)
    with pytest.raises(ValueError, match="out_dir"):
        run_search(mixture_utility, 4, CFG, resume=True)
    with pytest.raises(ValueError, match=r"shape \(8,\)"):
        run_search(lambda W: np.zeros((len(W), 1)), 4, CFG, progress=False)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    out = tmp_path / "run"
    run_search(mixture_utility, 4, CFG.replace(max_iter=2), out_dir=out, progress=False, seed=0)
    before = (out / CHECKPOINT_FILE).read_text()

    def failing_replace(src, dst):
        raise OSError("power cut during rename")

    monkeypatch.setattr(_common.os, "replace", failing_replace)
    with pytest.raises(OSError):
        _common.atomic_write_text(out / CHECKPOINT_FILE, '{"half": ')
    assert (out / CHECKPOINT_FILE).read_text() == before  # old checkpoint intact
    json.loads(before)
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]  # no partial file left


def test_progress_bar_on_stderr(capsys):
    run_search(mixture_utility, 4, CFG.replace(max_iter=2), progress=True, seed=0)
    err = capsys.readouterr().err
    assert "swarm search" in err and "best=" in err and "evals_per_s=" in err


def test_dropped_iteration_makes_no_call():
    cfg = SwarmConfig(swarm_size=6, drop_iter=0.6, max_iter=15, patience=100)
    ev = Killer()
    res = run_search(ev, 4, cfg, progress=False, seed=2)
    assert len(ev.calls) < len(res.history) and all(s[0] > 0 for s in ev.calls)
    assert any(r["evaluated"] == [] for r in res.history)


def test_grid_keeps_the_best_on_dev_and_resumes(tmp_path):
    grid = {"inertia": [0.1, 0.4], "step_length": [0.5]}
    configs = expand_grid(grid, base=CFG)
    assert [(c.inertia, c.step_length) for c in configs] == [(0.1, 0.5), (0.4, 0.5)]
    res = run_grid(mixture_utility, 4, grid, seeds=[0, 1], out_dir=tmp_path, progress=False, base=CFG)
    assert len(res.runs) == 4
    assert res.best.utility == max(r.utility for r in res.runs)
    assert sorted(p for p in os.listdir(tmp_path) if p.startswith("run")) == [
        "run000-seed0", "run000-seed1", "run001-seed0", "run001-seed1"]
    summary = json.loads((tmp_path / "grid.json").read_text())
    assert len(summary["runs"]) == 4
    again = run_grid(Killer(kill_at=0), 4, configs, seeds=[0, 1], out_dir=tmp_path, resume=True,
                     progress=False)
    assert [r.utility for r in again.runs] == [r.utility for r in res.runs]
    picked = sample_configs({"inertia": [0.1, 0.2, 0.3], "social": [0.2, 0.4]}, 3,
                            np.random.default_rng(0))
    assert len(picked) == 3 and len({(c.inertia, c.social) for c in picked}) == 3
    with pytest.raises(ValueError, match="unknown swarm setting"):
        expand_grid({"intertia": [0.1]})
