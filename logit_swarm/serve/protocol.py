"""The OpenAI-compatible wire protocol as pure functions: request validation and response shapes.

Nothing here touches a model or a tokenizer object, so it runs in any HTTP thread. What needs
the models (tokenizing, context-window checks, decoding) happens in the batching worker
(scheduler.py). The protocol itself (fields, units, conventions) is documented in
``logit_swarm/serve/__init__.py``.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

#: Reported instead of -inf (OpenAI and vLLM do the same; JSON has no infinity).
NEG_INF_LOGPROB = -9999.0
#: ``max_tokens`` when a completions request does not give one (OpenAI's and vLLM's default).
DEFAULT_COMPLETION_MAX_TOKENS = 16
#: The name of the byte-level STOP unit in token strings.
STOP_STRING = "<|stop|>"
#: The byte-level STOP unit's id (also the byte tokenizer's BOS / EOS).
STOP_ID = 256
#: Largest seed accepted as is; other integers are taken modulo 2**64 (numpy seeds are unsigned).
SEED_MOD = 2**64


class ApiError(Exception):
    """An error answered with an OpenAI-style body ``{"error": {message, type, param, code}}``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        if type is None:
            type = {401: "authentication_error", 404: "invalid_request_error",
                    503: "service_unavailable"}.get(status, "invalid_request_error" if status < 500 else "server_error")
        self.type = type

    def body(self) -> dict:
        """The JSON body of the error response."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    """A 400 error about the request."""
    return ApiError(400, message, param, code)


@dataclass
class ServedModel:
    """What the protocol layer needs to know about the served ensemble (no model objects).

    Attributes:
        name: the model id clients send in ``model``.
        unit: "token" or "byte".
        n_experts: number of experts (length of a ``weights`` override).
        n_units: size of the unit vocabulary (tokens, or 257 for bytes + STOP).
        weights, mode: the ensemble's own mixture (defaults of each request).
        max_logprobs: the cap on ``logprobs`` / ``top_logprobs`` (-1 = no cap).
        max_rows: the most rows (prompts × n) one request may ask for.
        expert_names: the experts' names, for messages.
        max_model_len: the smallest context window among the experts (None = unbounded), in
            tokens; for byte units a byte can cost one token, so it is also a safe byte bound.
        usage_unit: what ``usage`` counts, e.g. "tokens of mistral_bl2's tokenizer" or "bytes".
    """

    name: str
    unit: str
    n_experts: int
    n_units: int
    weights: list[float]
    mode: str
    max_logprobs: int = 20
    max_rows: int = 512
    expert_names: list[str] = field(default_factory=list)
    max_model_len: int | None = None
    usage_unit: str = "tokens"
    expert_bos: list[dict] = field(default_factory=list)  # each expert's BOS rule (TokenizerSide.bos_rule)


@dataclass
class GenRequest:
    """A validated completions or chat request.

    ``prompts`` has one entry per prompt (a string, a list of token ids, or chat messages); the
    rows decoded are every prompt repeated ``n`` times (choice index = prompt index × n + j, which
    samples from the random stream (seed, choice index)). ``max_tokens`` None means "the
    endpoint's default" (resolved by the worker, which knows the prompt length).
    """

    kind: str  # "completion" or "chat"
    prompts: list
    n: int = 1
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False
    echo: bool = False
    logprobs: int | None = None  # None: off; k >= 0: top-k; -1: every unit
    token_ids: bool = False  # return_tokens_as_token_ids
    weights: np.ndarray | None = None  # [N] or None for the ensemble's
    mode: str = "probs"
    bos: list[bool] = field(default_factory=list)  # per prompt: byte ids that started with STOP (256)
    expert_logprobs: bool = False  # extension: per-unit log-probs of every expert

    @property
    def n_rows(self) -> int:
        """Rows this request decodes (prompts × n)."""
        return len(self.prompts) * self.n


# ---------------------------------------------------------------------------------- field checks
def check_unicode(obj, where: str = "body") -> None:
    """Raise 400 if any string in a parsed JSON body cannot be encoded as UTF-8 (JSON allows
    lone surrogates such as "\\ud800"; tokenizers and stop checks would fail on them later)."""
    stack = [(obj, where)]
    while stack:
        x, at = stack.pop()
        if isinstance(x, str):
            try:
                x.encode("utf-8")
            except UnicodeEncodeError:
                raise bad(f"{at} holds a string that is not valid Unicode (a lone surrogate); "
                          "send UTF-8 text", at.split(".")[-1] if "." in at else None) from None
        elif isinstance(x, dict):
            stack.extend((v, f"{at}.{k}") for k, v in x.items())
        elif isinstance(x, list):
            stack.extend((v, f"{at}[{i}]") for i, v in enumerate(x))


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x) -> bool:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    try:
        return math.isfinite(x) and abs(x) <= 1e30  # 10**400 would overflow float conversion
    except OverflowError:
        return False


def _get_bool(body: dict, name: str, default: bool = False) -> bool:
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise bad(f"'{name}' must be true or false, got {v!r}", name)
    return v


def _get_int(body: dict, name: str, default, lo: int | None = None, hi: int | None = None):
    v = body.get(name)
    if v is None:
        return default
    if not _is_int(v):
        raise bad(f"'{name}' must be an integer, got {v!r}", name)
    if lo is not None and v < lo:
        raise bad(f"'{name}' must be at least {lo}, got {v}", name)
    if hi is not None and v > hi:
        raise bad(f"'{name}' must be at most {hi}, got {v}", name)
    return v


def _get_num(body: dict, name: str, default: float) -> float:
    v = body.get(name)
    if v is None:
        return default
    if not _is_num(v):
        raise bad(f"'{name}' must be a finite number of magnitude at most 1e30, got {v!r}", name)
    return float(v)


def check_model_field(body: dict, served: ServedModel) -> None:
    """404 when the body names a model other than the served one (a missing model means it)."""
    m = body.get("model")
    if m is None:
        return  # like vLLM: a missing model means the served one
    if not isinstance(m, str):
        raise bad(f"'model' must be a string, got {m!r}", "model")
    if m != served.name:
        raise ApiError(404, f"the model {m!r} does not exist; this server serves {served.name!r} (see /v1/models)",
                       "model", "model_not_found")


def _check_unsupported(body: dict, fields: dict) -> None:
    """Reject features this server does not implement when they are set to a non-default value."""
    for name, ok in fields.items():
        v = body.get(name)
        if v is not None and not ok(v):
            raise bad(f"'{name}' is not supported by the logit_swarm server", name, "unsupported_parameter")


def _common(body: dict, served: ServedModel, req: GenRequest) -> None:
    """Fields shared by completions and chat."""
    req.n = _get_int(body, "n", 1, lo=1)
    if req.n_rows > served.max_rows:
        raise bad(f"this request asks for {req.n_rows} rows (prompts × n) but the server takes at most "
                  f"{served.max_rows} per request (--max-request-rows); split it", "n" if req.n > 1 else "prompt")
    req.temperature = _get_num(body, "temperature", 1.0)
    if req.temperature < 0:
        raise bad(f"'temperature' must be ≥ 0 (0 = greedy), got {req.temperature}", "temperature")
    req.top_p = _get_num(body, "top_p", 1.0)
    if not 0 < req.top_p <= 1:
        raise bad(f"'top_p' must be in (0, 1], got {req.top_p}", "top_p")
    stop = body.get("stop")
    if stop is None:
        req.stop = []
    elif isinstance(stop, str):
        req.stop = [stop] if stop else []
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        req.stop = [s for s in stop if s]
    else:
        raise bad("'stop' must be a string or a list of strings", "stop")
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise bad(f"'seed' must be an integer, got {seed!r}", "seed")
    req.seed = None if seed is None else seed % SEED_MOD
    req.stream = _get_bool(body, "stream")
    so = body.get("stream_options")
    if so is not None:
        if not isinstance(so, dict):
            raise bad("'stream_options' must be an object", "stream_options")
        if not req.stream:
            raise bad("'stream_options' is only allowed with stream: true", "stream_options")
        req.include_usage = _get_bool(so, "include_usage")
    req.token_ids = _get_bool(body, "return_tokens_as_token_ids")
    req.expert_logprobs = _get_bool(body, "return_expert_logprobs")
    mode = body.get("mode")
    if mode is None:
        req.mode = served.mode
    elif mode in ("probs", "logits"):
        req.mode = mode
    else:
        raise bad(f"'mode' must be 'probs' or 'logits', got {mode!r}", "mode")
    w = body.get("weights")
    if w is not None:
        if not (isinstance(w, list) and all(_is_num(x) for x in w)):
            raise bad("'weights' must be a list of finite numbers (magnitude at most 1e30), one per expert", "weights")
        if len(w) != served.n_experts:
            raise bad(f"'weights' has {len(w)} entries but the model has {served.n_experts} experts "
                      f"({', '.join(served.expert_names)}); give one weight per expert", "weights")
        req.weights = np.asarray(w, dtype=np.float64)
    wt = req.weights if req.weights is not None else np.asarray(served.weights, dtype=np.float64)
    if req.mode == "probs" and not (wt > 0).any():
        raise bad("in mode 'probs' the weights need at least one positive entry", "weights")
    _check_unsupported(body, {
        "logit_bias": lambda v: v == {},
        "presence_penalty": lambda v: v == 0,
        "frequency_penalty": lambda v: v == 0,
        "best_of": lambda v: v == req.n,
        "prompt_logprobs": lambda v: False,
        "guided_json": lambda v: False,
        "guided_regex": lambda v: False,
    })


def _check_k(k: int, served: ServedModel, param: str) -> int:
    """Validate a top-k count (-1 = every unit) against the server's cap."""
    if k < -1:
        raise bad(f"'{param}' must be ≥ 0, or -1 for every unit; got {k}", param)
    want = served.n_units if k == -1 else k
    cap = served.max_logprobs
    if cap != -1 and want > cap:
        what = f"-1 (all {served.n_units} units)" if k == -1 else str(k)
        raise bad(f"'{param}' = {what} is more than this server's cap of {cap} (--max-logprobs {cap}); "
                  f"ask for at most {cap}, or start the server with a higher --max-logprobs (-1 = no cap)",
                  param, "logprobs_over_cap")
    return k


def _token_id_list(x) -> bool:
    return isinstance(x, list) and len(x) > 0 and all(_is_int(t) for t in x)


def parse_completion(body, served: ServedModel) -> GenRequest:
    """Validate a ``/v1/completions`` body; raises :class:`ApiError` on any problem."""
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    check_model_field(body, served)
    req = GenRequest(kind="completion", prompts=[])
    p = body.get("prompt")
    if p is None:
        raise bad("'prompt' is required", "prompt")
    if isinstance(p, str):
        prompts = [p]
    elif _token_id_list(p):
        prompts = [list(p)]
    elif isinstance(p, list) and p and all(isinstance(x, str) for x in p):
        prompts = list(p)
    elif isinstance(p, list) and p and all(_token_id_list(x) for x in p):
        prompts = [list(x) for x in p]
    else:
        raise bad("'prompt' must be a string, a list of strings, a non-empty list of token ids, or a list "
                  "of such lists", "prompt")
    req.bos = [False] * len(prompts)
    if any(isinstance(x, list) for x in prompts):
        for x in prompts:
            badid = [t for t in x if not 0 <= t < served.n_units]
            if badid:
                raise bad(f"token id {badid[0]} is outside the vocabulary (0..{served.n_units - 1})", "prompt")
        if served.unit == "byte":
            prompts, req.bos = zip(*(byte_ids_to_text(x) for x in prompts))
            prompts, req.bos = list(prompts), list(req.bos)
    if any(isinstance(x, str) and x == "" and not b for x, b in zip(prompts, req.bos)):
        raise bad("the prompt is empty; send at least one character (or token id). To score a text from its "
                  "start, echo it as the prompt with max_tokens 0", "prompt")
    req.prompts = prompts
    req.max_tokens = _get_int(body, "max_tokens", None, lo=0)
    req.echo = _get_bool(body, "echo")
    lp = body.get("logprobs")
    if lp is not None:
        if not _is_int(lp):
            raise bad(f"'logprobs' must be an integer (top-k; -1 = every unit) on /v1/completions, got {lp!r}",
                      "logprobs")
        req.logprobs = _check_k(lp, served, "logprobs")
    _common(body, served, req)
    if req.max_tokens is None:
        req.max_tokens = DEFAULT_COMPLETION_MAX_TOKENS
    if req.max_tokens == 0 and not req.echo:
        raise bad("'max_tokens' is 0 and 'echo' is false: nothing to return", "max_tokens")
    _check_unsupported(body, {"suffix": lambda v: v == ""})
    return req


def byte_ids_to_text(ids: list[int]) -> tuple[str, bool]:
    """A byte-unit prompt sent as ids (the byte tokenizer's: 0..255 bytes, 256 = STOP/BOS): its
    text, and whether it started with STOP (which may only come first); 400 otherwise."""
    bos = ids[0] == STOP_ID
    body = ids[1:] if bos else ids
    if STOP_ID in body:
        raise bad(f"token id {STOP_ID} (STOP / BOS of the byte tokenizer) may only be the first id of a prompt",
                  "prompt")
    try:
        return bytes(body).decode("utf-8"), bos
    except UnicodeDecodeError as exc:
        raise bad(f"the prompt's byte ids are not valid UTF-8 ({exc}); send whole characters", "prompt") from None


def _message_text(content, i: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise bad(f"messages[{i}].content: only text parts ({{'type': 'text', 'text': ...}}) are "
                          "supported", "messages")
            parts.append(part["text"])
        return "".join(parts)
    raise bad(f"messages[{i}].content must be a string or a list of text parts", "messages")


def parse_chat(body, served: ServedModel) -> GenRequest:
    """Validate a ``/v1/chat/completions`` body; raises :class:`ApiError` on any problem."""
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    check_model_field(body, served)
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise bad("'messages' must be a non-empty list of {role, content} objects", "messages")
    clean = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise bad(f"messages[{i}] must be an object with a string 'role'", "messages")
        clean.append({"role": m["role"], "content": _message_text(m.get("content"), i)})
    req = GenRequest(kind="chat", prompts=[clean])
    mt = _get_int(body, "max_completion_tokens", None, lo=1)
    req.max_tokens = _get_int(body, "max_tokens", mt, lo=1)
    want_lp = _get_bool(body, "logprobs")
    top = body.get("top_logprobs")
    if top is not None:
        if not _is_int(top):
            raise bad(f"'top_logprobs' must be an integer, got {top!r}", "top_logprobs")
        if not want_lp:
            raise bad("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    if want_lp:
        req.logprobs = _check_k(0 if top is None else top, served, "top_logprobs")
    _common(body, served, req)
    _check_unsupported(body, {
        "tools": lambda v: v == [],
        "functions": lambda v: v == [],
        "tool_choice": lambda v: v == "none",
        "response_format": lambda v: isinstance(v, dict) and v.get("type") == "text",
        "echo": lambda v: v is False,
        "continue_final_message": lambda v: v is False,
    })
    return req


# ---------------------------------------------------------------------------------- units as text
class UnitTable:
    """How units are shown: their string, their bytes, their ``token_id:N`` form.

    Token units: a token's string is its bytes decoded as UTF-8; a token whose bytes are not
    valid UTF-8 on their own is written ``bytes:\\xNN...`` (OpenAI's convention); a token with no
    bytes (special tokens such as EOS) is its literal name. Byte units: a byte below 0x80 is that
    character, others are ``bytes:\\xNN``, STOP is ``<|stop|>``.
    """

    def __init__(self, strings: list[str], byte_values: list[bytes | None]):
        self.strings = strings
        self.byte_values = byte_values

    @classmethod
    def for_bytes(cls) -> UnitTable:
        """The table of byte units (256 bytes + STOP)."""
        byts: list[bytes | None] = [bytes([b]) for b in range(256)] + [None]
        return cls([_show(b) for b in byts[:256]] + [STOP_STRING], byts)

    @classmethod
    def for_tokens(cls, token_bytes, literal) -> UnitTable:
        """The table of a token vocabulary: ``token_bytes[i]`` (None = no text) and ``literal(i)``."""
        strings = [(_show(b) if b is not None else literal(i)) for i, b in enumerate(token_bytes)]
        return cls(strings, list(token_bytes))

    def __len__(self) -> int:
        return len(self.strings)

    def string(self, u: int, as_ids: bool = False) -> str:
        """The unit as a token string (``token_id:N`` when ``as_ids``)."""
        return f"token_id:{u}" if as_ids else self.strings[u]

    def bytes_of(self, u: int) -> list[int] | None:
        """The unit's bytes as a list of ints (chat ``bytes``), None for units without bytes."""
        b = self.byte_values[u]
        return None if b is None else list(b)


def _show(b: bytes) -> str:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{x:02x}" for x in b)


def clean_lp(x: float) -> float:
    """A log-probability for JSON: -inf (and anything below) becomes -9999.0."""
    x = float(x)
    return x if x > NEG_INF_LOGPROB else NEG_INF_LOGPROB


# ---------------------------------------------------------------------------------- responses
def new_id(kind: str) -> str:
    """A response id: ``cmpl-...`` or ``chatcmpl-...``."""
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex


def now() -> int:
    """The ``created`` timestamp."""
    return int(time.time())


def completion_logprobs(units, lps, tops, table: UnitTable, as_ids: bool, offsets: list[int]) -> dict:
    """vLLM/OpenAI ``CompletionLogProbs`` of a run of units.

    ``lps[i]`` is the unit's log-prob (None for the first echoed prompt unit); ``tops[i]`` a list
    of (unit, logprob) sorted best first, or None. The chosen unit is added to its top dict when it
    is not among the top k (so a dict has up to k+1 entries); keys that show alike keep the first
    (most probable) value. ``offsets`` is each unit's ``text_offset``: where its text starts in
    the returned text (see StepDecoder.prefix_lengths).
    """
    tokens, token_lps, top_out = [], [], []
    for u, lp, top in zip(units, lps, tops):
        s = table.string(u, as_ids)
        tokens.append(s)
        token_lps.append(None if lp is None else clean_lp(lp))
        if top is None:
            top_out.append(None)
        else:
            d: dict[str, float] = {}
            for v, vlp in top:
                d.setdefault(table.string(v, as_ids), clean_lp(vlp))
            if lp is not None:
                d.setdefault(s, clean_lp(lp))
            top_out.append(d)
    return {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": top_out, "text_offset": list(offsets)}


def chat_logprobs(units, lps, tops, table: UnitTable, as_ids: bool) -> dict:
    """OpenAI chat ``logprobs`` = ``{"content": [{token, logprob, bytes, top_logprobs}]}``."""
    content = []
    for u, lp, top in zip(units, lps, tops):
        content.append({
            "token": table.string(u, as_ids),
            "logprob": clean_lp(lp),
            "bytes": table.bytes_of(u),
            "top_logprobs": [{"token": table.string(v, as_ids), "logprob": clean_lp(vlp), "bytes": table.bytes_of(v)}
                             for v, vlp in (top or [])],
        })
    return {"content": content}


def usage(prompt_units: int, completion_units: int, unit: str) -> dict:
    """The ``usage`` object; ``unit`` (extension) says what its counts count."""
    return {"prompt_tokens": int(prompt_units), "completion_tokens": int(completion_units),
            "total_tokens": int(prompt_units + completion_units), "unit": unit}


def models_list(served: ServedModel, created: int) -> dict:
    """Body of ``GET /v1/models``."""
    return {"object": "list", "data": [model_card(served, created)]}


def model_card(served: ServedModel, created: int) -> dict:
    """One model object (``GET /v1/models/{model}``), with logit_swarm's extra fields."""
    return {"id": served.name, "object": "model", "created": created, "owned_by": "logit_swarm",
            "unit": served.unit, "mode": served.mode, "weights": list(served.weights),
            "experts": list(served.expert_names), "max_logprobs": served.max_logprobs,
            "max_model_len": served.max_model_len, "root": served.name, "bos": list(served.expert_bos)}
