"""Windows that differ: the per-expert truncation policy (logit_swarm/windows.py).

Default "left": an expert whose context window is too short sees the end of the text (at that
expert only), reported once per run naming the expert and the rows cut; "error" refuses. The
regression test of issue 11 point 2 runs ``logit-swarm search`` on a multiple-choice task with a
32-token GPT-2 expert among three others.
"""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
import torch
from helpers import make_model, train_tokenizer

import logit_swarm as ls
from logit_swarm.cli import main
from logit_swarm.windows import check_policy, effective_policy, truncation_run

WINDOW = 32
LONG = ("Alice went to the market and bought 12 apples, 7 pears and 3 melons. Then she walked "
        "home along the river, where in 1999 the water rose; in 2024 it fell again. ")


@pytest.fixture(scope="module")
def pool_dirs(tmp_path_factory):
    """Issue 11 point 2: 'sums' is a GPT-2 with n_positions=32 over a 300-token BPE; three
    others (Llama over a SentencePiece-style BPE, Mistral and Qwen2 over other byte-level BPEs)
    have long windows. All built the ordinary way and saved with save_pretrained."""
    root = tmp_path_factory.mktemp("windows")
    tok300 = train_tokenizer("bytelevel", 300, root / "tok300")
    tok_sp = train_tokenizer("sentencepiece", 420, root / "tok_sp")
    tok400 = train_tokenizer("bytelevel", 400, root / "tok400")
    tok320 = train_tokenizer("bytelevel", 320, root / "tok320")
    return {
        "sums": str(make_model("gpt2", tok300, root / "sums", seed=1, positions=WINDOW)),
        "story": str(make_model("llama", tok_sp, root / "story", seed=2)),
        "code": str(make_model("mistral", tok400, root / "code", seed=3)),
        "chat": str(make_model("qwen2", tok320, root / "chat", seed=4)),
    }


@pytest.fixture(scope="module")
def sums(pool_dirs):
    return ls.load_expert(pool_dirs["sums"])


@pytest.fixture(scope="module")
def story(pool_dirs):
    return ls.load_expert(pool_dirs["story"])


def _lp(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)


def reference_loglik(e, ctx: str, cont: str) -> float:
    """The documented semantics, one plain forward per scored token: token j of the
    continuation (block b of window // 2 tokens) sees the window - window // 2 tokens before
    its block's start, or the context's end when the continuation fits in half a window."""
    from logit_swarm.score import _token_pairs

    prefix, c = _token_pairs(e, [ctx], [cont])[0]
    text, W = prefix + c, e.context_window
    if len(text) <= W:
        return float(sum(_lp(e.model, text)[len(prefix) + k - 1, t] for k, t in enumerate(c)))
    B = W // 2
    total = 0.0
    for k, t in enumerate(c):
        j = len(prefix) + k
        if len(c) <= B:
            start = len(prefix) - (W - len(c))
        else:
            start = len(prefix) + (k // B) * B - (W - B)
        seen = text[max(0, start):j]
        total += float(_lp(e.model, seen)[-1, t])
    return total


def test_policies_and_their_errors():
    assert check_policy(None) is None and check_policy("left") == "left"
    with pytest.raises(ValueError, match="unknown truncation policy 'right'.*left, error"):
        check_policy("right")
    assert effective_policy() == "left"
    with truncation_run("error"):
        assert effective_policy() == "error"
        with truncation_run():
            assert effective_policy() == "error"  # inherits the run's
        assert effective_policy("left") == "left"  # an explicit policy wins


@pytest.mark.parametrize("cont", [" and pears", "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 and 12 apples, 7 pears"])
def test_left_truncated_scoring_equals_the_documented_reference(sums, cont):
    ens = ls.Ensemble([sums], weights=[1.0])
    with pytest.warns(ls.TruncationWarning, match="expert 'sums' has a context window of 32 tokens.*1 text"):
        got = ens.logprob([LONG], [cont])[0]
    n_cont = len(sums.encode(cont))
    assert len(sums.encode(LONG + cont)) > WINDOW
    if "Numbers" in cont:
        assert n_cont > WINDOW // 2  # scored in blocks
    assert abs(got - reference_loglik(sums, LONG, cont)) < 1e-4


def test_nothing_truncated_means_no_warning_and_exact_one_hot(sums):
    from test_token_engine import own_loglik

    ens = ls.Ensemble([sums], weights=[1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error", ls.TruncationWarning)
        got = ens.logprob(["Hello"], [" world"])[0]
        ens.generate(["Hello"], max_new_tokens=4)
    assert abs(got - own_loglik(sums, "Hello", " world")) < 1e-4


def test_error_policy_refuses_and_scoring_never_says_generation(sums, story):
    for pool in ([sums], [sums, story]):  # token units, then byte units
        ens = ls.Ensemble(pool, weights=[1.0] + [0.0] * (len(pool) - 1))
        with pytest.raises(ValueError, match="expert 'sums' has a context window of 32") as exc:
            ens.logprob([LONG], [" and pears"], truncation="error")
        assert "generation" not in str(exc.value)
        with pytest.raises(ValueError, match="expert 'sums' has a context window of 32"):
            ens.generate([LONG], max_new_tokens=4, truncation="error")
        strict = ls.Ensemble(pool, weights=[1.0] + [0.0] * (len(pool) - 1), truncation="error")
        with pytest.raises(ValueError, match="truncation='left'"):
            strict.logprob([LONG], [" and pears"])


def test_left_truncated_generation_equals_own_generate_on_the_end(sums):
    ens = ls.Ensemble([sums], weights=[1.0])
    with pytest.warns(ls.TruncationWarning, match="'sums'.*1 text"):
        got = ens.generate([LONG], max_new_tokens=6, return_details=True)[0]
    ids = sums.encode(LONG)[-(WINDOW - 6):]
    with torch.no_grad():
        out = sums.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                  max_new_tokens=6, do_sample=False, pad_token_id=sums.tokenizer.pad_token_id)
    assert got.units == out[0, len(ids):].tolist()


def test_reported_once_per_run_with_the_rows_counted(sums, story):
    ens = ls.Ensemble([sums, story], weights=[0.5, 0.5])
    assert ens.unit == "byte"
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        with truncation_run():
            lp1 = ens.logprob([LONG, LONG + "x", "Hi"], [" and", " or", " there"])
            lp2 = ens.logprob([LONG], [" and"])
            texts = ens.generate([LONG], max_new_tokens=8)
    msgs = [str(w.message) for w in got if issubclass(w.category, ls.TruncationWarning)]
    assert len(msgs) == 1, msgs
    assert "expert 'sums'" in msgs[0] and "4 texts" in msgs[0]  # 2 + 1 scored, 1 generated
    assert all(np.isfinite(lp1)) and np.isfinite(lp2[0]) and len(texts) == 1
    assert lp2[0] == pytest.approx(lp1[0])


def test_task_spec_truncation(pool_dirs, sums, story):
    data = {"dev": [{"prompt": LONG + "How many pears?", "choices": [" 7", " 12"], "answer": 0}]}
    spec = {"kind": "multiple_choice", "scoring": "loglik_per_byte", "separator": "", "data": data}
    W = np.array([[0.5, 0.5]])
    with pytest.warns(ls.TruncationWarning, match="'sums'"):
        ok = ls.load_task(spec).evaluate([sums, story], W)
    assert ok.shape == (1,)
    with pytest.raises(ValueError, match="expert 'sums' has a context window"):
        ls.load_task({**spec, "truncation": "error"}).evaluate([sums, story], W)
    with pytest.raises(ValueError, match="unknown truncation policy"):
        ls.load_task({**spec, "truncation": "right"})


MC = [
    {"prompt": LONG + "How many pears did Alice buy?", "choices": [" 7", " 12", " 3"], "answer": 0},
    {"prompt": LONG + "When did the river rise?", "choices": [" 1999", " 2024"], "answer": 0},
    {"prompt": "Hello world! Hello there,", "choices": [" general Kenobi.", " lazy dog."], "answer": 0},
    {"prompt": LONG + "What did she buy 12 of?", "choices": [" apples", " melons"], "answer": 0},
]


def test_issue_11_point_2_search_with_a_32_token_expert_finishes(pool_dirs, tmp_path, capsys):
    """Issue 11 point 2 exactly: a GPT-2 expert with n_positions=32 and a 300-token BPE mixed
    with three others on a multiple-choice task. `logit-swarm search` used to stop with
    "generation reached expert 'sums''s context window of 32 tokens" during likelihood scoring;
    now it finishes, warning once that 'sums' saw only the end of the long questions."""
    (tmp_path / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MC))
    spec = tmp_path / "mc.yaml"
    spec.write_text("kind: multiple_choice\nscoring: loglik_per_byte\nseparator: ''\ndata: {dev: dev.jsonl}\n")
    experts = [pool_dirs[k] for k in ("sums", "story", "code", "chat")]
    argv = ["search", "--experts", *experts, "--task", str(spec), "--quiet",
            "--set", "swarm_size=4", "--set", "max_iter=3", "--seed", "1"]
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        assert main([*argv, "--out", str(tmp_path / "best.json")]) == 0
    msgs = [str(w.message) for w in got if issubclass(w.category, ls.TruncationWarning)]
    # One report for the whole search (the (question, option) rows longer than 32 tokens),
    # however many iterations ran.
    assert len(msgs) == 1 and "expert 'sums'" in msgs[0] and re.search(r"end of \d+ texts", msgs[0]), msgs
    assert "dev utility" in capsys.readouterr().out
    assert json.loads((tmp_path / "best.json").read_text())["experts"]
    # --truncation error restores the refusal, as a one-line error that names the expert.
    assert main([*argv, "--out", str(tmp_path / "strict.json"), "--truncation", "error"]) == 2
    err = capsys.readouterr().err
    assert "expert 'sums' has a context window of 32" in err and "generation" not in err


@pytest.mark.xfail(strict=True, reason="the ASGI server (serve/scheduler.py) still refuses a prompt that does not "
                   "fit an expert's window with 400 instead of following the truncation policy; not yet wired")
def test_server_follows_the_ensembles_policy(sums):
    """The server: by default a prompt longer than an expert's window is served with that
    expert seeing its end (the same text as the library gives); an ensemble with
    truncation="error" answers 400 context_length_exceeded, naming the expert."""
    from serve_helpers import post

    from logit_swarm.serve import make_server

    body = {"prompt": LONG, "max_tokens": 4, "temperature": 0}
    with pytest.warns(ls.TruncationWarning):
        want = ls.Ensemble([sums]).generate([LONG], max_new_tokens=4)[0]
    for policy in (None, "error"):
        server = make_server(ls.Ensemble([sums], truncation=policy), port=0, model_name="m").start()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ls.TruncationWarning)  # raised in the server's thread
                st, resp = post(server, "/completions", body)
        finally:
            server.shutdown()
        if policy is None:
            assert st == 200 and resp["choices"][0]["text"] == want
        else:
            assert st == 400 and resp["error"]["code"] == "context_length_exceeded"
            assert "'sums'" in resp["error"]["message"]


@pytest.mark.parametrize("cmd", ["search", "compare", "eval", "score", "generate", "serve"])
def test_every_command_that_scores_or_generates_takes_truncation(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        main([cmd, "--help"])
    assert exc.value.code == 0
    assert "--truncation {left,error}" in capsys.readouterr().out
