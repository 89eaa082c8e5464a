"""The Model Swarms paper's tasks on its own files (../shared/data/model_swarm_eval).

The fast tests load and normalise every record of every paper task (no model). The test marked
``paper_tasks`` runs every task end to end on two tiny experts with a handful of dev examples;
scores near chance are expected, crashes are not.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import SHARED_DATA

from logit_swarm.tasks import TASKS, list_tasks, load_task
from logit_swarm.tasks.paper import DOMAINS, HUMAN_TOPICS, MULTIPLE_CHOICE, SINGLE_TASKS

PAPER_DIR = SHARED_DATA / "model_swarm_eval"
pytestmark = pytest.mark.skipif(not PAPER_DIR.is_dir(),
                                reason=f"paper data not found at {PAPER_DIR} (../shared/data)")

SCORED = {"realtoxicityprompts": {"scorer": lambda texts: [0.1] * len(texts)}}
SCORED.update({n: {"scorer": lambda texts: [float(len(t)) for t in texts]}
               for n in ("rm", "rm-concise", "rm-verbose", "rm-reverse")})
# Judge tasks need a named judge (no default); a pool expert is named here, which warns.
SCORED.update({f"human-{t.lower().replace('_', '-')}": {"judge": {"expert": 0}} for t in HUMAN_TOPICS})
PAPER_TASKS = sorted(set(SINGLE_TASKS) | set(DOMAINS) | set(MULTIPLE_CHOICE) | set(SCORED) | {"gsm8k", "nlgraph"})


def test_every_paper_task_is_registered_and_available():
    avail = set(list_tasks(SHARED_DATA, available=True))
    for name in PAPER_TASKS:
        assert name in TASKS
        if name not in SCORED:
            assert name in avail, name


@pytest.mark.parametrize("name", PAPER_TASKS)
def test_paper_task_records_all_normalise(name):
    task = load_task(name, data_dir=SHARED_DATA, **SCORED.get(name, {}))
    parts = getattr(task, "parts", [task])
    for t in parts:
        for split in ("dev", "test"):
            exs = t.examples(split)
            assert exs, (name, split)
            if "choices" in exs[0]:
                assert all(0 <= e["answer"] < len(e["choices"]) for e in exs)


def test_split_sizes_match_the_paper_files():
    sizes = {"mmlu": (200, 1000), "mmlu-pro": (70, 1000), "truthfulqa": (200, 617), "gsm8k": (200, 1000),
             "stem": (30, 473), "hearsay": (94, 94)}
    for name, (dev, test) in sizes.items():
        t = load_task(name, data_dir=SHARED_DATA)
        assert (len(t.examples("dev")), len(t.examples("test"))) == (dev, test)


def test_paper_prompts_match_evaluate_py():
    kc = load_task("knowledge-crosswords", data_dir=SHARED_DATA)
    icl = json.loads((PAPER_DIR / "knowledge_crosswords.json").read_text())["icl_prompt"]
    prompt = kc.build_prompt(kc.examples("dev")[0])
    assert prompt.startswith(icl + "\nQuestion: ") and prompt.endswith("\nThe answer is")
    assert "Please choose" not in prompt[len(icl):]
    hs = load_task("hellaswag", data_dir=SHARED_DATA)
    assert hs.build_prompt(hs.examples("dev")[0]).startswith(
        "Please choose an option that best completes the sentence.\nQuestion: ")
    gsm = load_task("gsm8k", data_dir=SHARED_DATA)
    ex = gsm.examples("dev")[0]
    assert gsm.build_prompt(ex) == ex["raw"]["question"] and gsm.gen.max_new_tokens == 200
    ab = load_task("abstainqa", data_dir=SHARED_DATA)
    assert ab.data.description == "data file 'mmlu.json'"
    legal = load_task("legal", data_dir=SHARED_DATA)
    assert [p.name for p in legal.parts] == ["hearsay", "citation-prediction-classification"]
    assert legal.aggregate == "harmonic"


@pytest.fixture(scope="module")
def long_pair(tmp_path_factory):
    """Two tiny experts sharing one chat-capable tokenizer, with room for the paper's prompts."""
    from helpers import make_model, train_tokenizer

    import logit_swarm as ls

    root = tmp_path_factory.mktemp("paper_experts")
    tok = train_tokenizer("bytelevel", 400, root / "tok", chat=True)
    dirs = [make_model("gpt2", tok, root / "g", seed=11, positions=4096),
            make_model("llama", tok, root / "l", seed=12, positions=4096)]
    return [ls.load_expert(str(d)) for d in dirs]


@pytest.mark.paper_tasks
@pytest.mark.filterwarnings("ignore::logit_swarm.tasks.judge.SelfPreferenceWarning")
@pytest.mark.parametrize("name", PAPER_TASKS)
def test_paper_task_runs_end_to_end_on_tiny_experts(long_pair, name):
    kw = dict(SCORED.get(name, {}), limit=2, max_new_tokens=3)
    if name.startswith("human-"):
        kw["judge_max_new_tokens"] = 3
    if name == "abstainqa":
        kw["check_max_new_tokens"] = 3
    task = load_task(name, data_dir=SHARED_DATA, **kw)
    W = np.array([[1.0, 0.0], [0.4, 0.6]])
    r = task.evaluate_detailed(long_pair, W)
    assert r.utility.shape == (2,) and np.all(np.isfinite(r.utility))
    assert all(v.shape == (2,) for v in r.parts.values())
    if name == "gsm8k":  # the held-out split runs too, when allowed
        assert task.evaluate(long_pair, W, split="test", allow_test=True).shape == (2,)
