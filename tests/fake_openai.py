"""Stand-in OpenAI-compatible servers for the remote-expert tests (standard library only).

* :class:`FakeServer` runs a handler function on a local port in a thread; handlers can fail,
  stall or answer anything, which is how retries, timeouts and odd payloads are tested.
* :class:`ModelResponder` answers ``/completions`` from a local tiny model the way vLLM does
  (token-id prompts, ``echo``, top-k dicts with the k+1 entry, ``"token_id:N"`` keys or decoded
  strings, a first ``None`` when echoing), so remote results can be compared with local ones
  independently of the project's own server.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch


class FakeServer:
    """``handler(method, path, body) -> (status, payload, headers)`` served on 127.0.0.1.

    ``payload`` is JSON-encoded unless it is a str/bytes. ``self.calls`` records (method, path,
    body) of every request. Use as a context manager.
    """

    def __init__(self, handler):
        self.handler = handler
        self.calls: list[tuple[str, str, object]] = []
        self.stop_event = threading.Event()
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep test output clean
                pass

            def _do(self, method):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                body = json.loads(raw) if raw else None
                outer.calls.append((method, self.path, body, dict(self.headers)))
                status, payload, headers = outer.handler(method, self.path, body)
                if status is None:  # stall: never answer (until the test ends)
                    outer.stop_event.wait(30)
                    return
                data = payload if isinstance(payload, bytes) else (
                    payload.encode() if isinstance(payload, str) else json.dumps(payload).encode())
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._do("GET")

            def do_POST(self):
                self._do("POST")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def completions(self) -> list:
        """Bodies of the POST /completions requests seen so far."""
        return [b for m, p, b, _ in self.calls if m == "POST" and p.endswith("/completions")]


class ModelResponder:
    """Answers like vLLM's ``/v1/completions`` from a local HF expert (see module docstring).

    Args:
        expert: a loaded HFExpert (float32 logits, log-softmax in float64).
        model: the served model name.
        cap: the server's ``max_logprobs`` (-1 = none); over it: 400 with vLLM's message.
        echo_supported: False answers echo requests with the generated position only.
        token_ids: honour ``return_tokens_as_token_ids`` (False: always decoded strings).
        tokenizer_files: {name: text} served at /models/{model}/tokenizer, or None (404).
        card: extra fields of the /models entry.
    """

    def __init__(self, expert, model="tiny", cap=-1, echo_supported=True, token_ids=True,
                 tokenizer_files=None, card=None):
        self.e = expert
        self.model = model
        self.cap = cap
        self.echo_supported = echo_supported
        self.token_ids = token_ids
        self.tokenizer_files = tokenizer_files
        self.card = card or {}
        self.V = expert.vocab_size

    def logprobs(self, ids):
        with torch.no_grad():
            logits = self.e.model(torch.tensor([ids])).logits[0, :, : self.V].double()
        return torch.log_softmax(logits, -1)

    def _key(self, i, as_ids):
        return f"token_id:{i}" if as_ids else self.e.tokenizer.decode([i])

    def _top(self, row, k, extra, as_ids):
        kk = self.V if k == -1 else min(k, self.V)
        vals, idx = torch.topk(row, kk)
        d = {self._key(int(i), as_ids): float(v) for v, i in zip(vals, idx)}
        d.setdefault(self._key(extra, as_ids), float(row[extra]))  # the k+1 entry
        return d

    def __call__(self, method, path, body):
        if method == "GET" and path.endswith("/models"):
            return 200, {"object": "list", "data": [{"id": self.model, "object": "model", **self.card}]}, None
        if method == "GET" and path.endswith(f"/models/{self.model}/tokenizer"):
            if self.tokenizer_files is None:
                return 404, {"error": {"message": "not found"}}, None
            return 200, {"files": self.tokenizer_files}, None
        if method != "POST" or not path.endswith("/completions"):
            return 404, {"error": {"message": f"no route {path}"}}, None
        if body.get("model") != self.model:
            return 404, {"error": {"message": f"model {body.get('model')} does not exist"}}, None
        k = body["logprobs"]
        if self.cap != -1 and (k == -1 or k > self.cap):
            return 400, {"error": {"message": f"Requested sample logprobs of {k}, which is greater than "
                                              f"max allowed: {self.cap}"}}, None
        p = body["prompt"]
        prompts = [p] if p and isinstance(p[0], int) else p
        as_ids = bool(body.get("return_tokens_as_token_ids")) and self.token_ids
        echo = bool(body.get("echo")) and self.echo_supported
        choices = []
        for n, ids in enumerate(prompts):
            lp = self.logprobs(ids)
            gen = int(lp[-1].argmax())
            tokens, tlps, tops = [], [], []
            if echo:
                for i, t in enumerate(ids):
                    tokens.append(self._key(t, as_ids))
                    tlps.append(None if i == 0 else float(lp[i - 1, t]))
                    tops.append(None if i == 0 else self._top(lp[i - 1], k, t, as_ids))
            tokens.append(self._key(gen, as_ids))
            tlps.append(float(lp[-1, gen]))
            tops.append(self._top(lp[-1], k, gen, as_ids))
            choices.append({"index": n, "text": "", "finish_reason": "length",
                            "logprobs": {"tokens": tokens, "token_logprobs": tlps, "top_logprobs": tops,
                                         "text_offset": list(range(len(tokens)))}})
        return 200, {"id": "cmpl-x", "object": "text_completion", "created": int(time.time()),
                     "model": self.model, "choices": choices}, None


def tokenizer_files(directory) -> dict:
    """The tokenizer files of a model directory as {name: text} (what the project's server sends)."""
    from pathlib import Path

    out = {}
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json",
                 "generation_config.json"):
        f = Path(directory) / name
        if f.is_file():
            out[name] = f.read_text(encoding="utf-8")
    return out
