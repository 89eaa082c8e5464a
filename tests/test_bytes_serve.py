"""Serving's echo and Ensemble.logprob use one byte-level definition: the echoed prompt's per-byte
log-probabilities, summed over any continuation, equal Ensemble.logprob(context, continuation)
for every split of the prompt (align/bytes.py: the distribution after a text does not depend on
where a prompt ended)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from serve_helpers import post

import logit_swarm as ls
from logit_swarm.serve import make_server

W = np.array([0.6, 0.4])


@pytest.fixture(scope="module")
def served(experts):
    torch.set_num_threads(1)
    ens = ls.Ensemble([experts["gpt2_a"], experts["llama_sp"]], weights=W)
    server = make_server(ens, port=0).start()
    yield server, ens
    server.shutdown()


@pytest.mark.parametrize("prompt", ["Hi café", "def f(x):\n  ", "12+7=19"])
def test_echo_equals_ensemble_logprob_at_every_split(served, prompt):
    server, ens = served
    st, body = post(server, "/completions", {"prompt": prompt, "max_tokens": 0, "echo": True, "logprobs": 0})
    assert st == 200, body
    lps = body["choices"][0]["logprobs"]["token_logprobs"]
    raw = prompt.encode()
    assert len(lps) == len(raw) and lps[0] is None
    for i in range(1, len(prompt)):  # every character split with a non-empty context
        ctx, cont = prompt[:i], prompt[i:]
        k = len(ctx.encode())
        echoed = float(np.sum(lps[k:]))
        assert abs(echoed - ens.logprob([ctx], [cont])[0]) < 1e-5, (ctx, cont)
