"""llama.cpp (``llama-cpp-python[server]``, the optional ``llamacpp`` extra) serving
``../shared/models/stories260K-gguf`` next to ``logit-swarm serve`` serving the same weights from
``../shared/models/stories260K`` (Hugging Face): both answer the OpenAI completions API alike.

What this records (llama-cpp-python 0.3.36): its ``/v1/completions`` gives string-keyed top-k
log-probabilities of generated tokens only (no echo of prompt log-probs with ``echo``), keeps the
leading space of SentencePiece tokens like our server, and **refuses token-id prompts** (a 500
validation error), so it cannot be a :class:`~logit_swarm.experts.remote.RemoteExpert` (which
sends token ids) as it is. Skipped where llama-cpp-python or the shared models are absent.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import logit_swarm as ls

pytest.importorskip("fastapi", reason="the server needs the 'serve' extra")
pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (optional extra 'llamacpp'; it builds "
                    "from source in about 15 minutes)")
from logit_swarm.serve import make_server  # noqa: E402

MODELS = Path(__file__).resolve().parents[1].parent / "shared" / "models"
GGUF = MODELS / "stories260K-gguf" / "stories260K-f32.gguf"
HF = MODELS / "stories260K"


def _post(url: str, body: dict):
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.fixture(scope="module")
def llama_server():
    if not GGUF.exists() or not (HF / "config.json").exists():
        pytest.skip(f"{GGUF} or {HF} is absent (the shared models sit beside the checkout)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # f32 KV cache (type 0): llama.cpp's default f16 cache moves logits by ~2.5e-2
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(GGUF), "--host", "127.0.0.1",
                             "--port", str(port), "--n_ctx", "512", "--type_k", "0", "--type_v", "0", "--n_threads",
                             "1", "--model_alias", "stories"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/models", timeout=2).read()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("llama_cpp.server did not start within 60 s")
    yield url
    proc.terminate()
    proc.wait(30)


def test_llamacpp_and_logit_swarm_serve_answer_alike(llama_server):
    ours = make_server(ls.Ensemble([ls.load_expert(str(HF))]), port=0, model_name="stories").start()
    try:
        body = {"model": "stories", "prompt": "Once upon a time", "max_tokens": 6, "temperature": 0, "logprobs": 3}
        st1, theirs = _post(llama_server + "/completions", body)
        st2, mine = _post(ours.url + "/completions", body)
    finally:
        ours.shutdown()
    assert st1 == st2 == 200
    a, b = theirs["choices"][0], mine["choices"][0]
    assert a["text"] == b["text"] and a["text"].startswith(",")  # greedy text, leading spaces kept alike
    assert a["logprobs"]["tokens"] == b["logprobs"]["tokens"][: len(a["logprobs"]["tokens"])]
    for x, y in zip(a["logprobs"]["token_logprobs"], b["logprobs"]["token_logprobs"]):
        assert abs(x - y) < 1e-3
    for ta, tb in zip(a["logprobs"]["top_logprobs"], b["logprobs"]["top_logprobs"]):
        for tok, lp in ta.items():  # llama.cpp's top-k are string keyed; same tokens, same values
            assert abs(tb[tok] - lp) < 1e-3


def test_llamacpp_refuses_token_id_prompts(llama_server):
    st, body = _post(llama_server + "/completions", {"prompt": [1, 403, 407], "max_tokens": 1, "logprobs": 1})
    assert st >= 400 and "valid string" in json.dumps(body)  # so RemoteExpert (token ids) cannot use it as is
