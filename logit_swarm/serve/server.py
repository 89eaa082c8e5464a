"""The HTTP side: a FastAPI app served by uvicorn (in a background thread), over the engine thread.

Handlers validate requests (schema.py for types, protocol.py for meaning), hand them to the
:class:`~logit_swarm.serve.scheduler.Scheduler` and turn its events into OpenAI-shaped JSON or
server-sent events. No handler touches the experts' models or tokenizers (``/tokenize`` uses a
copy of the tokenizer).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import socket
import sys
import threading
import time
from importlib import resources

import uvicorn
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import protocol as P
from . import schema as S
from .chat import ChatRenderer
from .metrics import Metrics
from .responses import chat_body, completion_body, stream_chunks
from .scheduler import Scheduler
from .tokenizers import ServedTokenizer

#: Largest request body accepted (bytes).
MAX_BODY = 32 * 2**20
#: Paths that need the API key (when one is set); /health, /metrics, /docs and the playground do not.
PROTECTED = ("/v1/", "/tokenize", "/detokenize", "/tokenizer_info", "/stats")


def _unit_table(ens) -> P.UnitTable:
    if ens.unit == "byte":
        return P.UnitTable.for_bytes()
    e = ens.experts[0]

    def literal(i: int) -> str:
        name = e.tokenizer.convert_ids_to_tokens(i)
        return name if isinstance(name, str) else f"<|token_{i}|>"

    try:
        tb = list(e.vocab_bytes.token_bytes[: e.vocab_size])
    except ValueError:
        # The byte analysis refuses tokenizers whose normaliser rewrites text (stories260K collapses
        # doubled spaces): fine for token units, which only need each token's bytes to show it.
        tb = [_piece_bytes(literal(i), i in e.tokenizer.all_special_ids) for i in range(e.vocab_size)]
    tb += [None] * (e.vocab_size - len(tb))

    return P.UnitTable.for_tokens(tb, literal)


def _piece_bytes(piece: str, special: bool) -> bytes | None:
    """A SentencePiece / BPE piece's bytes for display: '▁' is a space, '<0xNN>' a byte."""
    if special:
        return None
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        return bytes([int(piece[3:5], 16)])
    return piece.replace("\u2581", " ").encode("utf-8")


def _json(status: int, obj, headers: dict | None = None) -> Response:
    data = json.dumps(obj, ensure_ascii=False, allow_nan=False).encode("utf-8")
    return Response(data, status_code=status, media_type="application/json", headers=headers)


def _error(err: P.ApiError) -> Response:
    return _json(err.status, err.body(), {"WWW-Authenticate": "Bearer"} if err.status == 401 else None)


class AsyncSink:
    """Events from the engine thread into an ``asyncio.Queue`` of the server's loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()

    def put(self, event: tuple) -> None:
        """Deliver one event (from any thread)."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


class _ClientGone(Exception):
    pass


class SwarmServer:
    """An OpenAI-compatible server of one :class:`~logit_swarm.Ensemble` (see :func:`make_server`).

    Attributes:
        url: the base URL, e.g. ``http://127.0.0.1:8000/v1``.
        host, port: where it listens (port 0 at construction picks a free port).
        served: the :class:`~logit_swarm.serve.protocol.ServedModel` description.
        batcher: the :class:`~logit_swarm.serve.scheduler.Scheduler` (``batcher.stats``).
        app: the FastAPI application.
    """

    def __init__(self, ensemble, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
                 max_logprobs: int = 20, model_name: str | None = None, batch_window_ms: float = 5.0,
                 max_batch_rows: int = 64, log=None, batching: str = "continuous", max_queue: int = 1024,
                 max_request_rows: int = 512, chat_template: str | None = None, join_every: int = 8):
        if max_logprobs < -1:
            raise ValueError(f"max_logprobs must be ≥ 0, or -1 for no cap; got {max_logprobs}")
        if max_batch_rows < 1 or max_request_rows < 1 or max_queue < 1:
            raise ValueError("max_batch_rows, max_request_rows and max_queue must be ≥ 1")
        self.ensemble = ensemble
        self.api_key = api_key or None
        self.log = log
        windows = [e.context_window for e in ensemble.experts if e.context_window is not None]
        self.table = _unit_table(ensemble)
        self.chat = ChatRenderer(ensemble.experts, chat_template)
        what = f"tokens of {ensemble.experts[0].name}'s tokenizer" if ensemble.unit == "token" else "bytes"
        self.served = P.ServedModel(
            name=model_name or "+".join(e.name for e in ensemble.experts), unit=ensemble.unit,
            n_experts=len(ensemble.experts), n_units=len(self.table), weights=[float(w) for w in ensemble.weights],
            mode=ensemble.mode, max_logprobs=int(max_logprobs), max_rows=int(max_request_rows),
            expert_names=[e.name for e in ensemble.experts], max_model_len=min(windows) if windows else None,
            usage_unit=what, expert_bos=[e.bos_rule() for e in ensemble.experts],
        )
        self.tokenizer = ServedTokenizer(ensemble, self.served.max_model_len, self.chat)
        self.created = P.now()
        self.metrics = Metrics(ensemble.unit)
        self.batcher = Scheduler(ensemble, batching, max_batch_rows, max_queue, batch_window_ms / 1000.0,
                                 self.metrics, self.chat, join_every)
        self.app = build_app(self)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host, self.port = self._sock.getsockname()[:2]
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{shown}:{self.port}/v1"
        config = uvicorn.Config(self.app, log_level="warning", http="h11", lifespan="off", access_log=False,
                                timeout_graceful_shutdown=60, backlog=256)
        self._uvicorn = uvicorn.Server(config)
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._closed = threading.Event()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> SwarmServer:
        """Serve in a background thread; returns self (call :meth:`shutdown` to stop)."""
        self.batcher.start()
        self._thread = threading.Thread(target=self._uvicorn.run, kwargs={"sockets": [self._sock]},
                                        name="logit-swarm-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._uvicorn.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self._uvicorn.started:
            raise RuntimeError(f"the HTTP server did not start on {self.url}; see the log above")
        return self

    def serve_forever(self) -> None:
        """Serve until :meth:`shutdown` is called (from another thread or a signal handler)."""
        self.start()
        self.wait()

    def wait(self) -> None:
        """Block until :meth:`shutdown` has completed."""
        while not self._closed.wait(0.5):  # a timed wait lets the main thread take signals
            pass

    def shutdown(self, timeout: float = 60.0) -> None:
        """Stop accepting connections, finish the requests already accepted, then close."""
        if self._closing.is_set():
            self._closed.wait(timeout)
            return
        self._closing.set()
        try:
            self.batcher.refuse_new()
            self._uvicorn.should_exit = True
            if self._thread is not None:
                self._thread.join(timeout)  # uvicorn waits for the requests in flight
            self.batcher.stop(timeout)
            self._sock.close()
        finally:
            self._closed.set()

    def __enter__(self) -> SwarmServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def authorized(self, header: str | None) -> bool:
        """Whether the Authorization header carries the API key (always true without a key)."""
        if self.api_key is None:
            return True
        if not header or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[len("Bearer "):].strip().encode(), self.api_key.encode())


class _Gate:
    """ASGI middleware: the API key (before any body is read), the access log, request counts."""

    def __init__(self, app, server: SwarmServer):
        self.app = app
        self.server = server

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        status = {}

        async def send_status(msg):
            if msg["type"] == "http.response.start":
                status["code"] = msg["status"]
            await send(msg)

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if path.startswith(PROTECTED) and not self.server.authorized(headers.get("authorization")):
            err = P.ApiError(401, "missing or wrong API key; send the header 'Authorization: Bearer <key>'",
                             code="invalid_api_key")
            await _error(err)(scope, receive, send_status)
        else:
            await self.app(scope, receive, send_status)
        code = status.get("code", 0)
        if path.startswith("/v1/") and scope["method"] == "POST":
            self.server.metrics.answered(path, code)
        if self.server.log is not None:
            client = scope.get("client") or ("-", 0)
            self.server.log(f"{client[0]} {scope['method']} {path} {code}")


def _request_schemas() -> tuple[dict, dict]:
    """OpenAPI request-body schemas of the generation routes, and the definitions they use."""
    defs, out = {}, {}
    for name, model in (("completions", S.CompletionRequest), ("chat", S.ChatCompletionRequest),
                        ("tokenize", S.TokenizeRequest), ("detokenize", S.DetokenizeRequest)):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        defs.update(schema.pop("$defs", {}))
        defs[model.__name__] = schema
        out[name] = {"requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}
    return out, defs


async def _read_json(request: Request):
    """The JSON body of a POST, with the errors of the old server (411, 413, 400)."""
    te = (request.headers.get("transfer-encoding") or "").lower()
    length = request.headers.get("content-length")
    if "chunked" in te or length is None:
        raise P.ApiError(411, "a POST needs a Content-Length header and a JSON body (chunked bodies are not "
                         "supported)")
    try:
        n = int(length)
    except ValueError:
        raise P.ApiError(400, f"bad Content-Length {length!r}") from None
    if n < 0 or n > MAX_BODY:
        raise P.ApiError(413, f"the request body is {n} bytes; the limit is {MAX_BODY}")
    raw = await request.body()
    try:
        body = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise P.ApiError(400, f"the request body is not valid JSON: {exc}") from None
    P.check_unicode(body)
    return body


def _check_types(model, body) -> None:
    """Type-check a body against its pydantic model; 400 naming the first bad field."""
    if not isinstance(body, dict):
        raise P.bad("the request body must be a JSON object")
    try:
        model.model_validate(body)
    except ValidationError as exc:
        e = exc.errors()[0]
        field = str(e["loc"][0]) if e["loc"] else None
        where = ".".join(str(x) for x in e["loc"])
        raise P.bad(f"'{field}' is invalid: {e['msg']} (at {where}); see /docs for the request schema",
                    field) from None


def build_app(server: SwarmServer) -> FastAPI:
    """The FastAPI application of ``server`` (routes: see ``logit_swarm/serve/__init__.py``)."""
    app = FastAPI(title="logit_swarm", version="1", description="OpenAI-compatible server of a logit_swarm "
                  "ensemble (see logit_swarm/serve/__init__.py for the conventions)")
    bodies, defs = _request_schemas()
    errors = {400: {"model": S.ErrorResponse}, 401: {"model": S.ErrorResponse}, 404: {"model": S.ErrorResponse}}

    @app.exception_handler(P.ApiError)
    async def on_api_error(request: Request, exc: P.ApiError):
        return _error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException):
        path = request.url.path
        if exc.status_code == 405:
            return _error(P.ApiError(405, f"method {request.method} is not allowed on {path}",
                                     code="method_not_allowed"))
        if exc.status_code == 404:
            return _error(P.ApiError(404, f"no route {request.method} {path}; see /v1/models, /v1/completions, "
                                     "/v1/chat/completions, /docs", code="not_found"))
        return _error(P.ApiError(exc.status_code, str(exc.detail)))

    @app.exception_handler(Exception)
    async def on_bug(request: Request, exc: Exception):
        return _error(P.ApiError(500, f"internal error: {type(exc).__name__}: {exc}"))

    @app.get("/health")
    async def health():
        """Liveness (no API key needed)."""
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        """Prometheus metrics (no API key needed, like vLLM's)."""
        return Response(server.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/stats")
    async def stats():
        """The engine's counters."""
        return dict(server.batcher.stats)

    @app.get("/v1/models", responses={200: {"model": S.ModelList}})
    async def models():
        """The one served model."""
        return P.models_list(server.served, server.created)

    @app.get("/v1/models/{model}/tokenizer")
    async def tokenizer_files(model: str):
        """The served tokenizer's text files (the byte tokenizer for byte units)."""
        _model_or_404(server, model)
        return server.tokenizer.payload()

    @app.get("/v1/models/{model}/tokenizer.json")
    async def tokenizer_json(model: str):
        """The served tokenizer as one downloadable ``tokenizer.json``."""
        _model_or_404(server, model)
        return Response(server.tokenizer.files["tokenizer.json"], media_type="application/json",
                        headers={"Content-Disposition": 'attachment; filename="tokenizer.json"'})

    @app.get("/v1/models/{model}", responses={200: {"model": S.ModelCard}, **errors})
    async def model_card(model: str):
        """One model."""
        _model_or_404(server, model)
        return P.model_card(server.served, server.created)

    @app.get("/tokenizer_info", responses={200: {"model": S.TokenizerInfo}})
    async def tokenizer_info():
        """What lm-eval's remote tokenizer reads."""
        return server.tokenizer.info()

    @app.post("/tokenize", openapi_extra=bodies["tokenize"], responses={200: {"model": S.TokenizeResponse}})
    async def tokenize(request: Request):
        """vLLM's ``/tokenize``."""
        body = await _read_json(request)
        _check_types(S.TokenizeRequest, body)
        P.check_model_field(body, server.served)
        ids = server.tokenizer.tokenize(body.get("prompt"), body.get("messages"), body.get("add_special_tokens"))
        return {"count": len(ids), "max_model_len": server.served.max_model_len, "tokens": ids}

    @app.post("/detokenize", openapi_extra=bodies["detokenize"], responses={200: {"model": S.DetokenizeResponse}})
    async def detokenize(request: Request):
        """vLLM's ``/detokenize``."""
        body = await _read_json(request)
        _check_types(S.DetokenizeRequest, body)
        P.check_model_field(body, server.served)
        return {"prompt": server.tokenizer.detokenize(body["tokens"])}

    @app.post("/v1/completions", openapi_extra=bodies["completions"],
              responses={200: {"model": S.CompletionResponse}, **errors})
    async def completions(request: Request):
        """OpenAI completions (streaming, logprobs, echo, token-id prompts)."""
        body = await _read_json(request)
        _check_types(S.CompletionRequest, body)
        return await _generate(server, request, P.parse_completion(body, server.served))

    @app.post("/v1/chat/completions", openapi_extra=bodies["chat"],
              responses={200: {"model": S.ChatCompletionResponse}, **errors})
    async def chat_completions(request: Request):
        """OpenAI chat completions."""
        body = await _read_json(request)
        _check_types(S.ChatCompletionRequest, body)
        return await _generate(server, request, P.parse_chat(body, server.served))

    static = resources.files("logit_swarm.serve") / "static"

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground():
        """The playground page."""
        return HTMLResponse((static / "index.html").read_text(encoding="utf-8"))

    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    def openapi():
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(defs)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    app.add_middleware(_Gate, server=server)
    return app


def _model_or_404(server: SwarmServer, model: str) -> None:
    if model != server.served.name:
        raise P.ApiError(404, f"the model {model!r} does not exist; this server serves {server.served.name!r}",
                         "model", "model_not_found")


async def _events(server: SwarmServer, job, sink: AsyncSink, request: Request | None):
    """The job's events until its end (raises ApiError on an error event, _ClientGone on a hang-up)."""
    while True:
        try:
            ev = sink.queue.get_nowait()  # most events are already there: no timer task needed
        except asyncio.QueueEmpty:
            ev = None
        try:
            if ev is None:
                ev = await asyncio.wait_for(sink.queue.get(), 0.5)
        except TimeoutError:
            if not server.batcher.alive:
                raise P.ApiError(503, "the engine stopped before answering; retry") from None
            if request is not None and await request.is_disconnected():
                job.cancelled = True
                raise _ClientGone() from None
            continue
        if ev[0] == "error":
            raise ev[1]
        yield ev
        if ev[0] == "end":
            return


async def _generate(server: SwarmServer, request: Request, req: P.GenRequest) -> Response:
    sink = AsyncSink(asyncio.get_running_loop())
    job = server.batcher.submit(req, sink)
    if not req.stream:
        events = []
        try:
            async for ev in _events(server, job, sink, request):
                events.append(ev)
        except _ClientGone:
            return Response(status_code=499)  # nobody reads it
        build = chat_body if req.kind == "chat" else completion_body
        return _json(200, build(server.served, server.table, req, events))
    # Wait for the first event before answering 200: a request the engine rejects (prompt beyond
    # the context window...) then gets its 4xx like a non-streamed one.
    events = _events(server, job, sink, None)
    first = await events.__anext__()

    async def body():
        try:
            async for chunk in stream_chunks(server.served, server.table, req, first, events):
                yield chunk
        finally:
            if not job.finished:
                job.cancelled = True  # the client went away: the engine drops its rows

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def make_server(ensemble, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
                max_logprobs: int = 20, model_name: str | None = None, batch_window_ms: float = 5.0,
                max_batch_rows: int = 64, log=None, **kw) -> SwarmServer:
    """An OpenAI-compatible HTTP server of ``ensemble`` (not started yet).

    Args:
        ensemble: the :class:`~logit_swarm.Ensemble` to serve. Only the server's engine thread
            uses it afterwards; do not call it from elsewhere while the server runs.
        host, port: where to listen; port 0 picks a free port (read ``server.port``).
        api_key: when given, every ``/v1``, tokenizer and stats request needs
            ``Authorization: Bearer <api_key>`` (401 otherwise).
        max_logprobs: the cap on ``logprobs`` / ``top_logprobs`` (-1 = no cap).
        model_name: the id clients send as ``model``; default the experts' names joined by "+".
        batch_window_ms: (static batching) how long a batch waits for more requests.
        max_batch_rows: the most rows decoded together.
        log: called with one line per HTTP request (e.g. ``print``), or None for silence.
        **kw: ``batching`` ("continuous", "static", "sequential"), ``max_queue`` (waiting
            requests before 429), ``max_request_rows`` (rows one request may ask for),
            ``chat_template`` (Jinja source or file for experts without a chat template),
            ``join_every`` (continuous batching: new requests join every this many steps, 8).

    Returns:
        a :class:`SwarmServer`: ``server.start()`` runs it in a background thread
        (``server.url``), ``server.serve_forever()`` in this one; ``server.shutdown()`` stops it.
    """
    return SwarmServer(ensemble, host, port, api_key, max_logprobs, model_name, batch_window_ms, max_batch_rows,
                       log, **kw)


def print_banner(server: SwarmServer, file=None) -> None:
    """Print where the server listens (one line)."""
    s = server.served
    auth = "API key required" if server.api_key else "no API key"
    print(f"logit-swarm serve: {s.name!r} ({s.n_experts} expert(s), {s.unit} units, mode {s.mode}, "
          f"{server.batcher.policy} batching) at {server.url}  [{auth}]", file=file or sys.stdout, flush=True)
