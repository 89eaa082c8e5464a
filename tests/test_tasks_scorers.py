"""Reward / toxicity scorers: local sequence-classification models (safetensors only) and callables."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from logit_swarm.tasks import load_task
from logit_swarm.tasks.scorers import HFClassifierScorer, import_callable, make_scorer, run_scorer


def make_classifier(root, num_labels, id2label=None, seed=0):
    """A tiny random GPT-2 sequence classifier saved as an ordinary HF directory."""
    from helpers import train_tokenizer
    from transformers import GPT2Config, GPT2ForSequenceClassification

    tok = train_tokenizer("bytelevel", 300, root / "tok")
    cfg = GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=16, n_layer=1, n_head=2,
                     num_labels=num_labels, pad_token_id=tok.pad_token_id,
                     id2label=id2label or {i: f"LABEL_{i}" for i in range(num_labels)})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2ForSequenceClassification(cfg)
    out = root / "clf"
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory):
    return make_classifier(tmp_path_factory.mktemp("rm"), 1)


@pytest.fixture(scope="module")
def toxic_dir(tmp_path_factory):
    return make_classifier(tmp_path_factory.mktemp("tox"), 2, {0: "non-toxic", 1: "toxic"}, seed=1)


def test_reward_model_directory_scores_each_text_independently_of_its_batch(reward_dir):
    scorer = make_scorer(str(reward_dir))
    assert isinstance(scorer, HFClassifierScorer)
    texts = ["short", "a much longer response about apples and pears", "", "日本語 😀"]
    batch = run_scorer(scorer, texts)
    alone = np.array([run_scorer(scorer, [t])[0] for t in texts])
    np.testing.assert_allclose(batch, alone, atol=1e-5)
    assert batch.shape == (4,) and np.all(np.isfinite(batch))
    assert scorer.num_tokens("hello world") > 0


def test_toxicity_classifier_finds_the_toxic_label(toxic_dir):
    scorer = make_scorer({"model": str(toxic_dir)}, default_label="auto-toxic")
    vals = run_scorer(scorer, ["you are nice", "hello"])
    assert np.all((0 <= vals) & (vals <= 1))
    ambiguous = make_scorer(str(toxic_dir))  # two labels and no label: say which
    with pytest.raises(ValueError, match="label: NAME"):
        ambiguous(["x"])
    by_name = make_scorer({"model": str(toxic_dir), "label": "non-toxic"})
    np.testing.assert_allclose(run_scorer(by_name, ["hello"]), 1 - run_scorer(scorer, ["hello"]), atol=1e-6)


def test_toxicity_task_with_a_local_classifier(toxic_dir, experts):
    pair = [experts["gpt2_a"], experts["llama_bl"]]
    task = load_task({"kind": "toxicity", "data": {"dev": [{"prompt": "The weather"}, {"prompt": "Hello"}]},
                      "scorer": str(toxic_dir), "max_new_tokens": 6, "min_chars": 1})
    u = task.evaluate(pair, [[1.0, 0.0], [0.5, 0.5]])
    assert np.all((0 <= u) & (u <= 1))


def test_only_safetensors_and_local_directories(tmp_path):
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="safetensors"):
        make_scorer(str(tmp_path / "pickled"))
    with pytest.raises(FileNotFoundError, match="neither a local model directory"):
        make_scorer(str(tmp_path / "absent"))
    with pytest.raises(ValueError, match="model: DIR"):
        make_scorer({"label": "toxic"})


def test_callables_and_references():
    assert make_scorer(len) is len
    assert import_callable("json:loads")("[1]") == [1]
    with pytest.raises(ValueError, match="cannot import"):
        import_callable("no_such_module_xyz:f")
    with pytest.raises(ValueError, match="looks like"):
        import_callable("json")
    with pytest.raises(ValueError, match="not callable"):
        import_callable("json:__name__")


def test_run_scorer_checks_what_comes_back():
    with pytest.raises(ValueError, match="2 scores for 1 texts"):
        run_scorer(lambda t: [1.0, 2.0], ["a"])
    with pytest.raises(ValueError, match="NaN"):
        run_scorer(lambda t: [float("nan")], ["a"])
    assert run_scorer(lambda t: [], []).shape == (0,)


def test_reward_task_requires_a_scorer():
    with pytest.raises(ValueError, match="needs scorer"):
        load_task({"kind": "reward", "data": {"dev": [{"prompt": "x"}]}})
    with pytest.raises(ValueError, match="objective"):
        load_task({"kind": "reward", "data": {"dev": [{"prompt": "x"}]}, "scorer": len, "objective": "long"})
    with pytest.raises(ValueError, match="high > low"):
        load_task({"kind": "reward", "data": {"dev": [{"prompt": "x"}]}, "scorer": len,
                   "normalise": {"low": 1, "high": 0}})
