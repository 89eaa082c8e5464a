"""The HTTP side of the server: standard-library ``ThreadingHTTPServer`` + the batching worker.

HTTP threads parse and validate requests (protocol.py), hand them to the one worker thread
(batcher.py) and turn its events into OpenAI-shaped JSON or server-sent events. No HTTP thread
touches a model or a tokenizer.
"""

from __future__ import annotations

import hmac
import itertools
import json
import queue
import socket
import sys
import threading
import time
import traceback
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from . import protocol as P
from .batcher import Batcher, Job

#: Largest request body accepted (bytes).
MAX_BODY = 32 * 2**20
#: Tokenizer files sent by ``GET /v1/models/{model}/tokenizer`` (text files only).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt")


def _unit_table(ens) -> P.UnitTable:
    if ens.unit == "byte":
        return P.UnitTable.for_bytes()
    e = ens.experts[0]
    tb = list(e.vocab_bytes.token_bytes[: e.vocab_size])
    tb += [None] * (e.vocab_size - len(tb))

    def literal(i: int) -> str:
        name = e.tokenizer.convert_ids_to_tokens(i)
        return name if isinstance(name, str) else f"<|token_{i}|>"

    return P.UnitTable.for_tokens(tb, literal)


def tokenizer_payload(ens) -> dict | None:
    """Body of the tokenizer endpoint, or None when the ensemble has no single tokenizer.

    ``files`` are the tokenizer's text files as stored in the expert's directory (or, for an
    expert loaded without one, as ``save_pretrained`` writes them); the other fields are what a
    client needs besides the files: the expert's stop ids, context window, vocabulary size and
    tokenizer fingerprint (logit_swarm's content hash).
    """
    if ens.unit != "token":
        return None
    e = ens.experts[0]
    files: dict[str, str] = {}
    src = Path(e.path) if getattr(e, "path", None) else None
    if src is not None and (src / "tokenizer.json").exists():
        for name in TOKENIZER_FILES:
            f = src / name
            if f.is_file():
                try:
                    files[name] = f.read_text(encoding="utf-8")
                except UnicodeDecodeError:
                    pass  # binary files (a SentencePiece .model) are not sent; tokenizer.json suffices
    else:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            e.tokenizer.save_pretrained(tmp)
            for f in sorted(Path(tmp).iterdir()):
                try:
                    files[f.name] = f.read_text(encoding="utf-8")
                except UnicodeDecodeError:
                    pass
    return {"object": "tokenizer", "files": files, "stop_ids": list(e.stop_ids),
            "context_window": e.context_window, "vocab_size": e.vocab_size, "fingerprint": e.fingerprint,
            "experts": [x.name for x in ens.experts]}


class SwarmServer:
    """An OpenAI-compatible server of one :class:`~logit_swarm.Ensemble` (see :func:`make_server`).

    Attributes:
        url: the base URL, e.g. ``http://127.0.0.1:8000/v1``.
        host, port: where it listens (port 0 at construction picks a free port).
        served: the :class:`~logit_swarm.serve.protocol.ServedModel` description.
        batcher: the worker; ``batcher.stats`` counts jobs, batches and engine calls.
    """

    def __init__(self, ensemble, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
                 max_logprobs: int = 20, model_name: str | None = None, batch_window_ms: float = 5.0,
                 max_batch_rows: int = 64, log=None):
        if max_logprobs < -1:
            raise ValueError(f"max_logprobs must be ≥ 0, or -1 for no cap; got {max_logprobs}")
        if max_batch_rows < 1:
            raise ValueError(f"max_batch_rows must be ≥ 1, got {max_batch_rows}")
        self.ensemble = ensemble
        self.api_key = api_key or None
        self.log = log
        name = model_name or "+".join(e.name for e in ensemble.experts)
        self.table = _unit_table(ensemble)
        self.served = P.ServedModel(
            name=name, unit=ensemble.unit, n_experts=len(ensemble.experts), n_units=len(self.table),
            weights=[float(w) for w in ensemble.weights], mode=ensemble.mode, max_logprobs=int(max_logprobs),
            max_rows=int(max_batch_rows), expert_names=[e.name for e in ensemble.experts],
            expert_bos=[e.bos_rule() for e in ensemble.experts],
        )
        self.tokenizer = tokenizer_payload(ensemble)
        self.created = P.now()
        self.batcher = Batcher(ensemble, window_s=batch_window_ms / 1000.0, max_rows=max_batch_rows)
        cls = _HTTPServer6 if ":" in host else _HTTPServer
        self.httpd = cls((host, port), _Handler)
        self.httpd.app = self
        self.host, self.port = self.httpd.server_address[:2]
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{shown}:{self.port}/v1"
        self._thread: threading.Thread | None = None
        self._serving = threading.Event()
        self._closing = threading.Event()
        self._closed = threading.Event()
        self._active = 0
        self._active_lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> SwarmServer:
        """Serve in a background thread; returns self (call :meth:`shutdown` to stop)."""
        self.batcher.start()
        self._thread = threading.Thread(target=self._serve, name="logit-swarm-http", daemon=True)
        self._thread.start()
        self._serving.wait(5)
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until :meth:`shutdown` is called (from another thread or a signal
        handler); returns once the shutdown is complete."""
        self.batcher.start()
        self._serve()
        self._closed.wait()

    def _serve(self) -> None:
        self._serving.set()
        self.httpd.serve_forever(poll_interval=0.2)

    def shutdown(self, timeout: float = 60.0) -> None:
        """Stop accepting connections, finish the requests already accepted, then close."""
        if self._closing.is_set():
            self._closed.wait(timeout)
            return
        self._closing.set()
        try:
            if self._serving.is_set():
                self.httpd.shutdown()
            self.batcher.stop(timeout)
            deadline = time.monotonic() + timeout
            while self._active and time.monotonic() < deadline:  # let handlers write their answers
                time.sleep(0.02)
            self.httpd.server_close()
        finally:
            self._closed.set()

    def __enter__(self) -> SwarmServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # ------------------------------------------------------------------ helpers for the handler
    def authorized(self, header: str | None) -> bool:
        """Whether the Authorization header carries the API key (always true without a key)."""
        if self.api_key is None:
            return True
        if not header or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[len("Bearer "):].strip().encode(), self.api_key.encode())

    def _enter(self) -> None:
        with self._active_lock:
            self._active += 1

    def _leave(self) -> None:
        with self._active_lock:
            self._active -= 1


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    app: SwarmServer


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class _ClientGone(Exception):
    pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "logit_swarm"
    sys_version = ""
    timeout = 300  # seconds a client may stay silent mid-request (socket timeout)
    server: _HTTPServer

    # ------------------------------------------------------------------ plumbing
    def log_message(self, fmt, *args) -> None:  # noqa: D401 - http.server API
        """Access log, only when the server was given a ``log`` callable."""
        log = self.server.app.log
        if log is not None:
            log(f"{self.address_string()} {fmt % args}")

    def _send_json(self, status: int, obj, extra_headers: dict | None = None) -> None:
        data = json.dumps(obj, ensure_ascii=False, allow_nan=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (extra_headers or {}).items():
            self.send_header(k, v)
        if self.server.app._closing.is_set():
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, err: P.ApiError) -> None:
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
        self._send_json(err.status, err.body(), headers)

    def _read_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self.close_connection = True
            raise P.ApiError(411, "chunked request bodies are not supported; send Content-Length")
        length = self.headers.get("Content-Length")
        if length is None:
            self.close_connection = True
            raise P.ApiError(411, "a POST needs a Content-Length header and a JSON body")
        try:
            n = int(length)
        except ValueError:
            self.close_connection = True
            raise P.ApiError(400, f"bad Content-Length {length!r}") from None
        if n < 0 or n > MAX_BODY:
            self.close_connection = True
            raise P.ApiError(413, f"the request body is {n} bytes; the limit is {MAX_BODY}")
        raw = self.rfile.read(n)
        if len(raw) < n:
            self.close_connection = True
            raise P.ApiError(400, "the request body ended early (fewer bytes than Content-Length)")
        try:
            body = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            raise P.ApiError(400, f"the request body is not valid JSON: {exc}") from None
        P.check_unicode(body)
        return body

    # ------------------------------------------------------------------ routing
    def do_GET(self) -> None:  # noqa: N802 - http.server API
        """GET routes."""
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        """POST routes."""
        self._dispatch("POST")

    def _not_allowed(self) -> None:
        self.close_connection = True  # any body was not read, so the connection cannot be reused
        self._dispatch(self.command)

    do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _not_allowed

    def _dispatch(self, method: str) -> None:
        app = self.server.app
        app._enter()
        try:
            path = urlsplit(self.path).path.rstrip("/") or "/"
            body = None
            if method != "POST" and (self.headers.get("Transfer-Encoding")
                                     or (self.headers.get("Content-Length") or "0").strip() not in ("", "0")):
                # A body we do not read would be parsed as the next request on this connection
                # (request smuggling behind a proxy): answer, then close.
                self.close_connection = True
            if path == "/health" and method == "GET":
                return self._send_json(200, {"status": "ok"})
            if not app.authorized(self.headers.get("Authorization")):
                # Before reading the body: an unauthenticated client does not get 32 MiB parsed.
                self.close_connection = True
                raise P.ApiError(401, "missing or wrong API key; send the header 'Authorization: Bearer <key>'",
                                 code="invalid_api_key")
            if method == "POST":
                body = self._read_body()  # consumed before answering, so keep-alive stays in sync
            if method == "GET":
                return self._get(path)
            if method == "POST":
                return self._post(path, body)
            raise P.ApiError(405, f"method {method} is not allowed on {path}", code="method_not_allowed")
        except P.ApiError as err:
            self._safe(partial(self._send_error, err))
        except (_ClientGone, ConnectionError, TimeoutError):  # the client went away or stalled
            self.close_connection = True
        except Exception as exc:  # a bug: answer 500 and keep serving
            traceback.print_exc()
            self._safe(partial(self._send_error, P.ApiError(500, f"internal error: {type(exc).__name__}: {exc}")))
        finally:
            app._leave()

    def _safe(self, fn) -> None:
        try:
            fn()
        except OSError:
            self.close_connection = True

    def _get(self, path: str) -> None:
        app = self.server.app
        if path == "/v1/models":
            return self._send_json(200, P.models_list(app.served, app.created))
        if path == "/stats":
            return self._send_json(200, dict(app.batcher.stats))
        if path.startswith("/v1/models/"):
            rest = unquote(path[len("/v1/models/"):])
            if rest.endswith("/tokenizer"):
                model = rest[: -len("/tokenizer")]
                self._model_or_404(model)
                if app.tokenizer is None:
                    raise P.ApiError(404, f"{model!r} mixes experts with different tokenizers (byte units), so it "
                                     "has no single tokenizer to send", code="no_single_tokenizer")
                return self._send_json(200, app.tokenizer)
            self._model_or_404(rest)
            return self._send_json(200, P.model_card(app.served, app.created))
        raise P.ApiError(404, f"no route GET {path}; see /v1/models, /v1/completions, /v1/chat/completions",
                         code="not_found")

    def _model_or_404(self, model: str) -> None:
        served = self.server.app.served
        if model != served.name:
            raise P.ApiError(404, f"the model {model!r} does not exist; this server serves {served.name!r}",
                             "model", "model_not_found")

    def _post(self, path: str, body) -> None:
        app = self.server.app
        if path == "/v1/completions":
            req = P.parse_completion(body, app.served)
        elif path == "/v1/chat/completions":
            req = P.parse_chat(body, app.served)
        else:
            raise P.ApiError(404, f"no route POST {path}; use /v1/completions or /v1/chat/completions",
                             code="not_found")
        job = app.batcher.submit(req)
        if req.stream:
            self._stream(job)
        else:
            self._respond(job)

    # ------------------------------------------------------------------ answers
    def _events(self, job: Job):
        """Yield the job's events until its end (raises ApiError on an error event)."""
        app = self.server.app
        while True:
            try:
                ev = job.events.get(timeout=1.0)
            except queue.Empty:
                if not app.batcher.alive:
                    raise P.ApiError(503, "the engine stopped before answering; retry") from None
                continue
            if ev[0] == "error":
                raise ev[1]
            yield ev
            if ev[0] == "end":
                return

    def _respond(self, job: Job) -> None:
        app, req = self.server.app, job.req
        prompts: dict[int, dict] = {}
        done: dict[int, dict] = {}
        for ev in self._events(job):
            if ev[0] == "prompt":
                prompts[ev[1]] = ev[2]
            elif ev[0] == "done":
                done[ev[1]] = ev[2]
        table, as_ids = app.table, req.token_ids
        choices = []
        for row in range(req.n_rows):
            i = row // req.n
            r, pinfo = done[row], prompts[i]
            if req.kind == "chat":
                lp = None
                if req.logprobs is not None:
                    lp = P.chat_logprobs(r["units"], r["logprobs"], r["tops"], table, as_ids)
                choices.append({"index": row, "message": {"role": "assistant", "content": r["text"]},
                                "logprobs": lp, "finish_reason": r["finish_reason"]})
                continue
            text = r["text"]
            units, lps, tops = list(r["units"]), list(r["logprobs"]), list(r["tops"] or [None] * len(r["units"]))
            if req.echo:
                echo = pinfo["echo"]
                text = pinfo["prompt_text"] + text
                units, lps, tops = echo["units"] + units, echo["logprobs"] + lps, echo["tops"] + tops
            lp = P.completion_logprobs(units, lps, tops, table, as_ids) if req.logprobs is not None else None
            choices.append({"index": row, "text": text, "logprobs": lp, "finish_reason": r["finish_reason"]})
        n_prompt = sum(p["prompt_units"] for p in prompts.values())
        n_out = sum(len(r["units"]) for r in done.values())
        kind = "chat.completion" if req.kind == "chat" else "text_completion"
        self._send_json(200, {"id": P.new_id(req.kind), "object": kind, "created": P.now(),
                              "model": app.served.name, "choices": choices, "usage": P.usage(n_prompt, n_out)})

    def _stream(self, job: Job) -> None:
        app, req = self.server.app, job.req
        table, as_ids = app.table, req.token_ids
        chat = req.kind == "chat"
        rid, created = P.new_id(req.kind), P.now()
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(choices, usage=None):
            c = {"id": rid, "object": obj, "created": created, "model": app.served.name, "choices": choices}
            if req.include_usage:
                c["usage"] = usage
            return c

        # Wait for the first event before answering 200: a request the engine rejects (prompt
        # beyond the context window, no chat template...) then gets its 4xx like a non-streamed one.
        events = self._events(job)
        first = next(events, None)
        events = itertools.chain([first] if first is not None else [], events)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        offsets = [0] * req.n_rows
        n_prompt, n_out = 0, 0
        try:
            if chat:
                for row in range(req.n_rows):
                    self._sse(chunk([{"index": row, "delta": {"role": "assistant", "content": ""},
                                      "logprobs": None, "finish_reason": None}]))
            try:
                for ev in events:
                    if ev[0] == "prompt":
                        i, info = ev[1], ev[2]
                        n_prompt += info["prompt_units"]
                        if req.echo:
                            echo = info["echo"]
                            for row in range(i * req.n, (i + 1) * req.n):
                                lp = None
                                if req.logprobs is not None:
                                    lp = P.completion_logprobs(echo["units"], echo["logprobs"], echo["tops"], table,
                                                               as_ids, offsets[row])
                                offsets[row] += sum(len(table.string(u)) for u in echo["units"])
                                self._sse(chunk([{"index": row, "text": info["prompt_text"], "logprobs": lp,
                                                  "finish_reason": None}]))
                    elif ev[0] == "step":
                        _, row, unit, lp_val, top, delta = ev
                        if chat:
                            lp = None
                            if req.logprobs is not None:
                                lp = P.chat_logprobs([unit], [lp_val], [top], table, as_ids)
                            elif not delta:
                                continue
                            self._sse(chunk([{"index": row, "delta": {"content": delta}, "logprobs": lp,
                                              "finish_reason": None}]))
                        else:
                            lp = None
                            if req.logprobs is not None:
                                lp = P.completion_logprobs([unit], [lp_val], [top], table, as_ids, offsets[row])
                                offsets[row] += len(table.string(unit))
                            elif not delta:
                                continue
                            self._sse(chunk([{"index": row, "text": delta, "logprobs": lp, "finish_reason": None}]))
                    elif ev[0] == "done":
                        row, r = ev[1], ev[2]
                        n_out += len(r["units"])
                        if chat:
                            c = {"index": row, "delta": {}, "logprobs": None, "finish_reason": r["finish_reason"]}
                        else:
                            c = {"index": row, "text": "", "logprobs": None, "finish_reason": r["finish_reason"]}
                        self._sse(chunk([c]))
                if req.include_usage:
                    self._sse(chunk([], P.usage(n_prompt, n_out)))
            except P.ApiError as err:
                self._sse(err.body())
            self._write_chunk(b"data: [DONE]\n\n")
            self._write_chunk(b"")
        except OSError:
            job.cancelled = True  # the client went away; the worker stops sending to this job
            raise _ClientGone() from None

    def _sse(self, obj) -> None:
        self._write_chunk(b"data: " + json.dumps(obj, ensure_ascii=False, allow_nan=False).encode("utf-8") + b"\n\n")

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()


def make_server(ensemble, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
                max_logprobs: int = 20, model_name: str | None = None, batch_window_ms: float = 5.0,
                max_batch_rows: int = 64, log=None) -> SwarmServer:
    """An OpenAI-compatible HTTP server of ``ensemble`` (not started yet).

    Args:
        ensemble: the :class:`~logit_swarm.Ensemble` to serve. Only the server's worker thread
            uses it afterwards; do not call it from elsewhere while the server runs.
        host, port: where to listen; port 0 picks a free port (read ``server.port``).
        api_key: when given, every request except ``GET /health`` needs
            ``Authorization: Bearer <api_key>`` (401 otherwise).
        max_logprobs: the cap on ``logprobs`` / ``top_logprobs`` (-1 = no cap).
        model_name: the id clients send as ``model``; default the experts' names joined by "+".
        batch_window_ms: how long the worker waits for more requests to batch with the first.
        max_batch_rows: the most rows one batch decodes (also the most one request may ask for).
        log: called with one line per HTTP request (e.g. ``print``), or None for silence.

    Returns:
        a :class:`SwarmServer`: ``server.start()`` runs it in a background thread
        (``server.url``), ``server.serve_forever()`` in this one; ``server.shutdown()`` stops it.
    """
    return SwarmServer(ensemble, host, port, api_key, max_logprobs, model_name, batch_window_ms, max_batch_rows, log)


def print_banner(server: SwarmServer, file=None) -> None:
    """Print where the server listens (one line)."""
    s = server.served
    auth = "API key required" if server.api_key else "no API key"
    print(f"logit-swarm serve: {s.name!r} ({s.n_experts} expert(s), {s.unit} units, mode {s.mode}) at "
          f"{server.url}  [{auth}]", file=file or sys.stdout, flush=True)
