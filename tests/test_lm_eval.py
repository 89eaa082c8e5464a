"""lm-evaluation-harness as the server's acceptance client (offline, a small local JSONL task set).

lm-eval's ``local-completions`` runs loglikelihood (multiple choice), loglikelihood_rolling and
generate_until requests against ``logit-swarm serve``:

* one expert (token units): every request's log-likelihood equals lm-eval's own ``hf`` backend
  on the same model to ≤ 1e-4 nats, and the generations are the same;
* a byte-level mixture (experts with different tokenizers), with lm-eval's defaults plus
  ``base_url`` and ``tokenizer_backend=remote`` (the server's byte tokenizer): every request's
  log-likelihood equals ``Ensemble.logprob`` of the same (context, continuation) to ≤ 1e-6 nats.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import logit_swarm as ls

pytest.importorskip("fastapi", reason="the server needs the 'serve' extra")
pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'lm-eval[api,hf]', in the test extra)")
pytest.importorskip("aiohttp", reason="lm-eval's API models need lm-eval[api]")
from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from logit_swarm.serve import make_server  # noqa: E402

MC = [
    {"question": "The cat sat on the", "choices": ["mat", "moon", "idea"], "label": 0},
    {"question": "Water is", "choices": ["wet", "dry and hot"], "label": 0},
    {"question": "One, two,", "choices": ["three", "blue", "café"], "label": 0},
]
ROLL = [{"text": "Once upon a time there was a little dog."}, {"text": "def add(a, b):\n    return a + b\n"}]
GEN = [{"question": "Q: What is two plus two?\nA:", "answer": " four"}, {"question": "Hello", "answer": " world"}]


def _tasks(tmp_path):
    files = {}
    for name, rows in (("mc", MC), ("roll", ROLL), ("gen", GEN)):
        files[name] = tmp_path / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps(r) + "\n" for r in rows))

    def head(task, f):
        return (f"task: {task}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {f}\n"
                "test_split: test\n")

    (tmp_path / "mc.yaml").write_text(head("ls_mc", files["mc"]) + 'output_type: multiple_choice\n'
                                      'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\n'
                                      'doc_to_target: "{{label}}"\nmetric_list:\n  - metric: acc\n')
    (tmp_path / "roll.yaml").write_text(head("ls_roll", files["roll"]) + 'output_type: loglikelihood_rolling\n'
                                        'doc_to_text: ""\ndoc_to_target: "{{text}}"\n'
                                        'metric_list:\n  - metric: word_perplexity\n')
    (tmp_path / "gen.yaml").write_text(head("ls_gen", files["gen"]) + 'output_type: generate_until\n'
                                       'doc_to_text: "{{question}}"\ndoc_to_target: "{{answer}}"\n'
                                       'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 12\n'
                                       '  do_sample: false\nmetric_list:\n  - metric: exact_match\n')
    return TaskManager(include_path=str(tmp_path), include_defaults=False)


def _run(model, model_args, tm):
    out = simple_evaluate(model=model, model_args=model_args, tasks=["ls_mc", "ls_roll", "ls_gen"],
                          task_manager=tm, log_samples=True, batch_size=1, cache_requests=False)
    per = {}
    for task, samples in out["samples"].items():
        for s in samples:
            for k, (args, resp) in enumerate(zip(s["arguments"], s["resps"])):
                per[(task, s["doc_id"], k)] = (args, resp[0])
    return per


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_one_expert_equals_lm_eval_hf_backend(tiny_dirs, tmp_path):
    tm = _tasks(tmp_path)
    d = tiny_dirs["gpt2_a"]
    s = make_server(ls.Ensemble([ls.load_expert(d)]), port=0, model_name="one").start()
    try:
        served = _run("local-completions", {"model": "one", "base_url": s.url + "/completions",
                                            "tokenizer_backend": "remote"}, tm)
    finally:
        s.shutdown()
    ref = _run("hf", {"pretrained": d, "device": "cpu", "dtype": "float32"}, tm)
    assert served.keys() == ref.keys() and len(served) == 8 + 2 + 2  # 8 choices, 2 texts, 2 generations
    for key, (_, got) in served.items():
        want = ref[key][1]
        if key[0] == "ls_gen":
            assert got == want, key
        elif key[0] == "ls_roll":
            assert abs(got - want) <= 1e-4, (key, got, want)
        else:
            assert abs(got[0] - want[0]) <= 1e-4 and got[1] == want[1], (key, got, want)


@pytest.mark.xfail(strict=True, reason="byte mixture via lm-eval: generate_until answers stop earlier through the "
                   "server than Ensemble.generate (the server's room rule for byte prompts, not yet reconciled "
                   "with the whole-prompt byte covering); strict: an unexpected pass fails")
def test_byte_mixture_equals_ensemble_logprob(tiny_dirs, experts, tmp_path):
    """Byte units, lm-eval defaults + base_url + tokenizer_backend=remote (the byte tokenizer).

    Needs byte-level scores that do not depend on where the context ends (issue 15): the server
    scores the whole text from its start (echo), ``Ensemble.logprob`` conditions on the context.
    """
    tm = _tasks(tmp_path)
    names = ["gpt2_a", "llama_sp"]
    s = make_server(ls.Ensemble([ls.load_expert(tiny_dirs[n]) for n in names]), port=0, model_name="mix").start()
    try:
        served = _run("local-completions", {"model": "mix", "base_url": s.url + "/completions",
                                            "tokenizer_backend": "remote"}, tm)
    finally:
        s.shutdown()
    ens = ls.Ensemble([experts[n] for n in names])
    diffs = {}
    for key, (args, got) in served.items():
        if key[0] == "ls_gen":
            ctx, kw = args
            want = ens.generate([ctx], max_new_tokens=kw["max_gen_toks"], stop=kw["until"] + ["<|stop|>"])[0]
            assert got == want, key
            continue
        if key[0] == "ls_roll":
            ctx, cont, value = "", args[0], got
        else:
            ctx, cont = args
            n = len(ctx) - len(ctx.rstrip())  # lm-eval moves the context's trailing spaces over
            ctx, cont, value = ctx[: len(ctx) - n], ctx[len(ctx) - n:] + cont, got[0]
        want = ens.logprob([ctx], [cont])[0]
        diffs[key] = abs(value - want)
        assert math.isfinite(value)
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] <= 1e-6, f"largest |served - Ensemble.logprob| = {diffs[worst]:.3g} nats at {worst}; {diffs}"
