"""Synthetic tasks over the zoo's specialties: registered by name, seeded, runnable."""

from __future__ import annotations

import numpy as np
import pytest

from logit_swarm.tasks import TASKS, list_tasks, load_task

corpora = pytest.importorskip("logit_swarm.zoo.corpora", reason="the zoo's corpora are not built yet")

ZOO = [n for n in list_tasks() if n.startswith("zoo-") and n != "zoo-shakespeare-text"]


def test_every_zoo_task_of_the_corpora_is_registered():
    for task, info in corpora.TASKS.items():
        name = "zoo-" + task.replace("_", "-")
        assert name in TASKS
        assert load_task(name).kind == info.default_kind
    for specialty in corpora.SPECIALTIES:
        assert f"zoo-{specialty.replace('_', '-')}-text" in TASKS
    assert TASKS.canonical("zoo-arith") == "zoo-arithmetic"


@pytest.mark.parametrize("name", ZOO)
def test_zoo_task_loads_disjoint_seeded_splits(name):
    task = load_task(name, limit=8)
    parts = getattr(task, "parts", [task])
    for t in parts:
        dev, test = t.examples("dev"), t.examples("test")
        assert len(dev) == 8 and len(test) == 8
        key = (lambda e: e.get("prompt", "") + str(e.get("target", ""))) if t.kind != "likelihood" else (
            lambda e: e["target"])
        assert not {key(e) for e in dev} & {key(e) for e in test}
        # Seeded: a second load gives the same records.
        again = load_task(name, limit=8)
        again_t = getattr(again, "parts", [again])[parts.index(t)]
        assert [key(e) for e in again_t.examples("dev")] == [key(e) for e in dev]


def test_zoo_prompts_are_used_verbatim():
    facts = load_task("zoo-facts-mc")
    ex = facts.examples("dev")[0]
    assert facts.build_prompt(ex) == ex["prompt"] and facts.separator == ""
    assert ex["choices"][ex["answer"]].startswith(" ")
    em = load_task("zoo-facts")
    assert em.match_name == "auto" and em.gen.stop == ("\n",)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two tiny experts sharing a tokenizer, with a window long enough for zoo-code's prompts."""
    from helpers import make_model, train_tokenizer

    import logit_swarm as ls

    root = tmp_path_factory.mktemp("zoo_task_experts")
    tok = train_tokenizer("bytelevel", 400, root / "tok")
    dirs = [make_model("gpt2", tok, root / "g", seed=21, positions=2048),
            make_model("llama", tok, root / "l", seed=22, positions=2048)]
    return [ls.load_expert(str(d)) for d in dirs]


def test_zoo_tasks_run_on_tiny_experts(pair):
    W = np.array([[1.0, 0.0], [0.5, 0.5]])
    for name in ("zoo-facts-mc", "zoo-arithmetic", "zoo-connectivity", "zoo-facts-a-text"):
        kw = {} if name.endswith("-text") else {"max_new_tokens": 4}
        u = load_task(name, limit=3, **kw).evaluate(pair, W)
        assert u.shape == (2,) and np.all(np.isfinite(u)), name
    r = load_task("zoo-all", limit=2, max_new_tokens=3).evaluate_detailed(pair, W)
    assert {"zoo-facts", "zoo-arithmetic", "zoo-reasoning", "zoo-dialogue", "zoo-code"} <= set(r.parts)
    np.testing.assert_allclose(r.utility, np.mean([r.parts[p] for p in
                                                   ("zoo-facts", "zoo-arithmetic", "zoo-reasoning",
                                                    "zoo-dialogue", "zoo-code")], axis=0))
