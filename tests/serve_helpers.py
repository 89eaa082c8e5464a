"""Helpers for the server tests: a served ensemble, JSON calls, raw requests, SSE parsing."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import pytest
import torch

import logit_swarm as ls
import logit_swarm.serve as serve_pkg  # make_server resolves on use: the 'serve' extra may be absent


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one torch thread is faster and leaves the other core to the HTTP threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def serve_experts(dirs, names, **kw):
    """A started server over the experts ``names`` of ``dirs`` (``weights=`` for the ensemble,
    the rest to make_server)."""
    experts = [ls.load_expert(dirs[n]) for n in names]
    weights = kw.pop("weights", None)
    return serve_pkg.make_server(ls.Ensemble(experts, weights=weights), port=0, **kw).start()


def call(server, method: str, path: str, body=None, headers: dict | None = None, raw: bytes | None = None,
         timeout: float = 60):
    """One request to ``server`` (path relative to the host, e.g. "/v1/completions").

    Returns (status, parsed JSON or text, response headers: case-insensitive, like HTTP's).
    """
    u = urlsplit(server.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        hdrs = dict(headers or {})
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        text = resp.read().decode("utf-8")
        ctype = resp.getheader("Content-Type") or ""
        if ctype.startswith("application/json"):
            return resp.status, json.loads(text), resp.headers
        return resp.status, text, resp.headers
    finally:
        conn.close()


def post(server, path: str, body, **kw):
    """POST JSON to ``/v1`` + path; returns (status, body)."""
    status, data, _ = call(server, "POST", "/v1" + path, body, **kw)
    return status, data


def sse_events(text: str) -> list:
    """The ``data:`` payloads of an event stream: dicts, and the string "[DONE]"."""
    out = []
    for block in text.split("\n\n"):
        block = block.strip()
        if not block:
            continue
        assert block.startswith("data: "), block
        payload = block[len("data: "):]
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out
