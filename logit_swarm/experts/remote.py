"""Experts behind an OpenAI-compatible completions endpoint that returns top-k log-probabilities.

Works with vLLM (``vllm serve``), llama.cpp's ``/v1``, SGLang, and the project's own server
(``logit-swarm serve``)::

    e = ls.load_expert("http://host:8000/v1", model="my-model", top_k=20)        # or top_k=-1
    e = ls.load_expert("http://host:8000/v1", model="m", tokenizer="path/to/tokenizer_dir")

What is asked. The expert never sends text: prompts are token ids (``prompt`` as a list of ids, or
a list of such lists for a batch), with ``temperature`` 0, ``logprobs`` k and
``return_tokens_as_token_ids`` (keys come back as ``"token_id:123"`` where the server supports it):

* next-token distribution after a sequence: ``max_tokens`` 1, ``echo`` false; the answer is the
  ``top_logprobs`` of the one generated position;
* teacher-forced scoring (``score_chunks``): ``echo`` true, ``max_tokens`` 1 on parent + chunk;
  the prompt positions come first (the first is None), then the generated one. A server that
  does not echo prompt log-probabilities is detected, and scoring falls back to next-token
  queries of every prefix (one batched request).

The vocabulary is the local tokenizer's (``tokenizer=DIR``, or fetched once from the project's
server at ``GET {base}/models/{model}/tokenizer``), so the expert has the same fingerprint as a
local copy of the model and mixes with it, and with other remote copies, at token level.

Reading answers (all shapes seen in the wild):

* keys ``"token_id:N"`` are ids; entries that carry an ``id`` or ``bytes`` field are resolved by
  those; other string keys are mapped back to ids through the local tokenizer: first the decoded
  text of each token, then its raw vocabulary string. **Collisions** (several ids decode to the
  same text, e.g. byte-fallback tokens of a partial UTF-8 character, or ``<0x20>`` and ``▁``):
  the server's string-keyed dict holds one value for them, and it is given to the id the
  tokenizer itself produces when it encodes that text alone (its canonical token), or, when that
  is not a single candidate, to the lowest candidate id; the other candidates count as not
  listed. Keys that map to no id are dropped (counted in ``stats()["unresolved_keys"]``), so
  their mass joins the leftover. Servers that support ``return_tokens_as_token_ids`` avoid all of
  this.
* ``-9999`` (and ``-inf``/NaN) mean "no value": the entry counts as not listed.
* Fewer than k entries, and the extra (k+1-th) entry of the sampled or teacher-forced token, are
  used as they come; the token's own ``token_logprobs`` value is added to its position.
* The rest of the probability mass is spread by the rule of :mod:`logit_swarm.experts.topk`
  (uniformly over the tokens not listed; exact when k covers the vocabulary).

Servers that cap k (vLLM's ``--max-logprobs``, 20 by default; OpenAI's 5) answer 400 with the
maximum in the message: the request is repeated with that cap, which is remembered
(``stats()["k_cap"]``) and makes results approximate in the way described above.

Failures. Connection errors, timeouts, 429 and 5xx answers are retried ``retries`` times with
exponential backoff (``backoff`` × 2^attempt seconds, at most ``max_backoff``, with a little
jitter; a 429/503 ``Retry-After`` is honoured up to ``max_backoff``); each attempt is bounded by
``timeout`` seconds per socket operation. Then a :class:`RemoteExpertError` names the URL and what
to check. Other 4xx answers fail at once with the server's message.

Only the standard library is used for HTTP (``urllib``): no extra dependency for a client that
sends one JSON POST at a time.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from http.client import HTTPException
from pathlib import Path
from typing import Any

import numpy as np

from .sequence import DEFAULT_CACHE_BYTES, SequenceExpert, read_model_config
from .topk import TopK

__all__ = ["RemoteExpert", "RemoteExpertError", "HTTPClient", "TokenResolver", "parse_logprobs",
           "parse_k_cap", "load_remote_expert", "fetch_tokenizer", "DEFAULT_API_KEY_ENV", "is_url"]

#: Environment variable the API key is read from when none is passed (never stored in recipes).
DEFAULT_API_KEY_ENV = "LOGIT_SWARM_API_KEY"

#: Statuses worth retrying: rate limiting and server-side failures.
_RETRY_STATUSES = {408, 429, 500, 502, 503, 504}

#: Rough budget of top-k entries one HTTP answer may carry (about 25 bytes of JSON each).
_MAX_ENTRIES_PER_REQUEST = 2_000_000


class RemoteExpertError(RuntimeError):
    """A remote expert could not get an answer (unreachable server, bad reply, refused request)."""


def is_url(s: Any) -> bool:
    """Whether ``s`` names an HTTP(S) endpoint rather than a local path."""
    return isinstance(s, str) and s.startswith(("http://", "https://"))


# ============================================================================================
# HTTP
# ============================================================================================


class HTTPClient:
    """JSON over HTTP with retries, backoff and timeouts (standard library only).

    Args:
        base_url: the API base, e.g. ``http://host:8000/v1`` (paths are appended to it).
        api_key: sent as ``Authorization: Bearer``; None sends no header.
        timeout: seconds per socket operation (connect, each read) of one attempt.
        retries: attempts after the first for connection errors, timeouts, 408/429/5xx.
        backoff: first wait in seconds; doubles per attempt, at most ``max_backoff``.
        sleep: the sleeping function (tests pass a recorder).

    Attributes: ``requests`` (answered requests), ``attempts``, ``retried`` (attempts that failed
    and were repeated).
    """

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 60.0, retries: int = 3,
                 backoff: float = 0.5, max_backoff: float = 8.0, sleep: Callable[[float], None] = time.sleep):
        if not is_url(base_url):
            raise ValueError(f"{base_url!r} is not an http(s) URL")
        if not (isinstance(retries, int) and retries >= 0):
            raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if not backoff >= 0 or not max_backoff >= 0:
            raise ValueError("backoff and max_backoff must be >= 0")
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = float(timeout)
        self.retries = retries
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.sleep = sleep
        self.requests = 0
        self.attempts = 0
        self.retried = 0
        # Its own generator: jitter must not consume the global `random` stream of user code.
        self._jitter = random.Random()

    def url(self, path: str) -> str:
        """Absolute URL of ``path`` under the base."""
        return self.base_url + "/" + path.lstrip("/")

    def _wait(self, attempt: int, retry_after: float | None) -> None:
        delay = min(self.backoff * (2 ** attempt), self.max_backoff)
        # Jitter spreads simultaneous clients apart; it does not touch any result.
        delay *= 1.0 + 0.1 * self._jitter.random()
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_backoff))
        if delay > 0:
            self.sleep(delay)

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, str]:
        """Send one request; returns (status, body text) for any answer that is not retried.

        Raises:
            RemoteExpertError: no usable answer after ``retries`` repeats.
        """
        url = self.url(path)
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self.retried += 1
            self.attempts += 1
            retry_after = None
            req = urllib.request.Request(url, data=data, headers=headers, method=method)
            try:
                with _OPENER.open(req, timeout=self.timeout) as resp:
                    text = resp.read().decode("utf-8", errors="replace")
                    self.requests += 1
                    return int(resp.status), text
            except urllib.error.HTTPError as exc:
                try:
                    text = exc.read().decode("utf-8", errors="replace")
                except (OSError, HTTPException):
                    text = ""
                if exc.code not in _RETRY_STATUSES:
                    self.requests += 1
                    return int(exc.code), text
                last = f"HTTP {exc.code}: {_short(text)}"
                ra = exc.headers.get("Retry-After") if exc.headers else None
                try:
                    retry_after = float(ra) if ra is not None else None
                except ValueError:
                    retry_after = None
            except TimeoutError:
                last = f"no answer within {self.timeout:g} s (timeout)"
            except urllib.error.URLError as exc:
                reason = exc.reason
                if isinstance(reason, (TimeoutError, socket.timeout)):
                    last = f"no answer within {self.timeout:g} s (timeout)"
                else:
                    last = f"connection failed ({reason})"
            except (ConnectionError, HTTPException, OSError) as exc:
                last = f"connection failed ({type(exc).__name__}: {exc})"
            if attempt < self.retries:
                self._wait(attempt, retry_after)
        raise RemoteExpertError(
            f"{method} {url} failed after {self.retries + 1} attempt(s): {last}. Check that the server "
            f"is running and reachable from here (e.g. curl {self.base_url}/models), that the URL is the "
            "API base including /v1, and raise timeout= or retries= for a slow or busy server"
        )

    def json(self, method: str, path: str, body: Any = None) -> tuple[int, Any, str]:
        """:meth:`request`, with the body parsed as JSON when it is JSON (else None)."""
        status, text = self.request(method, path, body)
        try:
            data = json.loads(text) if text else None
        except json.JSONDecodeError:
            data = None
        return status, data, text


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: urllib would resend the Authorization header to wherever the server
    points (another host, or http after https) and turn a POST into a GET."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D401 - urllib API
        raise urllib.error.HTTPError(req.full_url, code, f"redirect to {newurl} refused: give the "
                                     "final API base URL (logit_swarm does not follow redirects)", headers, fp)


_OPENER = urllib.request.build_opener(_NoRedirect)


def _short(text: str, n: int = 300) -> str:
    """The useful part of an error body: an OpenAI-style message if there is one, else the start."""
    try:
        d = json.loads(text)
        if isinstance(d, dict):
            err = d.get("error", d)
            msg = err.get("message") if isinstance(err, dict) else err
            if msg is None and isinstance(d.get("detail"), (str, list)):
                msg = d["detail"]
            if msg is not None:
                text = str(msg)
    except (json.JSONDecodeError, TypeError, AttributeError):
        pass
    text = " ".join(str(text).split())
    return text[:n] + ("..." if len(text) > n else "")


_CAP_RE = re.compile(
    r"(?:max(?:imum)?(?:\s+(?:allowed|value|supported|number))?|at\s+most|less\s+than\s+or\s+equal\s+to"
    r"|<=|up\s+to|cap\s+of|between\s+-?\d+\s+and)\s*(?:is|of|to|:|=)?\s*(\d+)",
    re.IGNORECASE,
)


def parse_k_cap(message: str) -> int | None:
    """The largest k a server says it allows, from a 400 message about logprobs (else None).

    Recognises e.g. vLLM's "Requested sample logprobs of 50, which is greater than max allowed:
    20", "logprobs must be less than or equal to 5", "... between 0 and 5".
    """
    if "logprob" not in message.lower() and "top_k" not in message.lower() and "n_probs" not in message.lower():
        return None
    caps = [int(m.group(1)) for m in _CAP_RE.finditer(message)]
    caps = [c for c in caps if c >= 1]
    return min(caps) if caps else None


_ROWS_RE = re.compile(r"at\s+most\s+(\d+)\s+(?:per\s+request|prompts|rows)", re.IGNORECASE)


def _parse_row_limit(message: str) -> int | None:
    """The most prompts per request a server says it takes (``logit-swarm serve``: "... takes at
    most 64 per request; split it"), else None."""
    m = _ROWS_RE.search(message)
    return int(m.group(1)) if m else None


# ============================================================================================
# Reading top-k answers
# ============================================================================================


class TokenResolver:
    """Maps what a server calls a token (``"token_id:N"``, an id, bytes, or text) to a token id.

    String keys go through the local tokenizer: first each token's decoded text, then its raw
    vocabulary string; collisions are settled as the module docstring says. Tables are built on
    first need (a string key), so servers answering with ids never pay for them.
    """

    def __init__(self, tokenizer, vocab_bytes: Callable[[], Any] | None = None) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = len(tokenizer)
        self._vocab_bytes = vocab_bytes
        self._decoded: dict[str, list[int]] | None = None
        self._raw: dict[str, list[int]] | None = None
        self._bytes: dict[bytes, list[int]] | None = None
        self._chosen: dict[Any, int] = {}
        self.unresolved = 0

    def _tables(self) -> None:
        if self._decoded is not None:
            return
        ids = list(range(self.vocab_size))
        decoded = self.tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False,
                                              clean_up_tokenization_spaces=False)
        raw = self.tokenizer.convert_ids_to_tokens(ids)
        self._decoded, self._raw = {}, {}
        for i, s in zip(ids, decoded):
            self._decoded.setdefault(s, []).append(i)
        for i, s in zip(ids, raw):
            if s is not None:
                self._raw.setdefault(s, []).append(i)

    def _pick(self, key: Any, text: str | None, cands: list[int]) -> int:
        if len(cands) == 1:
            return cands[0]
        if key in self._chosen:
            return self._chosen[key]
        choice = min(cands)
        if text is not None:
            enc = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(enc) == 1 and enc[0] in cands:
                choice = int(enc[0])
        self._chosen[key] = choice
        return choice

    def from_bytes(self, data: Sequence[int]) -> int | None:
        """The id whose bytes are ``data`` (None if the tokenizer's byte view is unavailable)."""
        if self._bytes is None:
            self._bytes = {}
            if self._vocab_bytes is None:
                return None
            try:
                vb = self._vocab_bytes()
            except ValueError:
                return None  # tokenizer without an exact byte view: fall back to strings
            for i, b in enumerate(vb.token_bytes):
                if b is not None:
                    self._bytes.setdefault(bytes(b), []).append(i)
        cands = self._bytes.get(bytes(data))
        if not cands:
            return None
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            text = None
        return self._pick(("bytes", bytes(data)), text, cands)

    def __call__(self, key: Any, token_bytes: Sequence[int] | None = None, token_id: Any = None) -> int | None:
        """The id of one entry, or None when it cannot be resolved (counted in ``unresolved``).

        Order: an explicit id; ``"token_id:N"``; the entry's ``bytes``; a ``"bytes:\\xNN..."``
        key (OpenAI's spelling of text that is not valid UTF-8); the key's UTF-8 bytes (servers
        that report a token's text, e.g. " the" for SentencePiece's "▁the"); the token's decoded
        text as the tokenizer decodes it alone; its raw vocabulary string.
        """
        if isinstance(token_id, int) and not isinstance(token_id, bool):
            return token_id
        if isinstance(key, int) and not isinstance(key, bool):
            return key
        if isinstance(key, str) and key.startswith("token_id:"):
            try:
                return int(key[len("token_id:"):])
            except ValueError:
                pass
        if token_bytes is not None:
            got = self.from_bytes(token_bytes)
            if got is not None:
                return got
        if isinstance(key, str):
            raw = _escaped_bytes(key)
            if raw is not None:
                got = self.from_bytes(raw)
                if got is not None:
                    return got
            got = self.from_bytes(key.encode("utf-8"))
            if got is not None:
                return got
            self._tables()
            cands = self._decoded.get(key) or self._raw.get(key)  # type: ignore[union-attr]
            if cands:
                return self._pick(("str", key), key, cands)
        self.unresolved += 1
        return None


_BYTES_RE = re.compile(r"(?:\\x[0-9a-fA-F]{2})+")


def _escaped_bytes(key: str) -> bytes | None:
    """``"bytes:\\xe2\\x80"`` -> b"\\xe2\\x80" (None for any other key)."""
    if not key.startswith("bytes:"):
        return None
    body = key[len("bytes:"):]
    if not _BYTES_RE.fullmatch(body):
        return None
    return bytes(int(body[i + 2 : i + 4], 16) for i in range(0, len(body), 4))


def _entry_value(v: Any) -> float | None:
    """A logprob from a dict value: a number, or {"logprob": x} (vLLM prompt_logprobs style)."""
    if isinstance(v, dict):
        v = v.get("logprob")
    if v is None or isinstance(v, bool):
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _position_entries(top: Any, resolve: TokenResolver) -> tuple[list[int], list[float]]:
    """(ids, logprobs) of one position's ``top_logprobs`` (dict, list of entries, or None)."""
    ids: list[int] = []
    lps: list[float] = []
    if top is None:
        return ids, lps
    if isinstance(top, dict):
        items = [(k, _entry_value(v), None, None) for k, v in top.items()]
    elif isinstance(top, list):
        items = []
        for ent in top:
            if not isinstance(ent, dict):
                continue
            lp = ent.get("logprob")
            if lp is None and ent.get("prob") is not None:  # llama.cpp post-sampling probabilities
                p = float(ent["prob"])
                lp = math.log(p) if p > 0 else -math.inf
            tid = ent.get("id", ent.get("token_id"))
            items.append((ent.get("token"), _entry_value(lp), ent.get("bytes"), tid))
    else:
        raise RemoteExpertError(f"unexpected top_logprobs entry of type {type(top).__name__}")
    for key, lp, b, tid in items:
        if lp is None:
            continue
        i = resolve(key, b, tid)
        if i is None:
            continue
        ids.append(int(i))
        lps.append(lp)
    return ids, lps


def parse_logprobs(logprobs: Any, resolve: TokenResolver, prompt_ids: Sequence[int] | None = None) -> list[TopK | None]:
    """Every position of one choice's ``logprobs`` object as (ids, logprobs), None where empty.

    Args:
        logprobs: ``choices[i].logprobs``: the completions shape ``{tokens, token_logprobs,
            top_logprobs, text_offset}`` or the chat-like ``{content: [{token, logprob, bytes,
            top_logprobs: [...]}]}``.
        resolve: maps keys to ids.
        prompt_ids: the prompt's ids when the request echoed it: position i < len(prompt_ids) is
            then known to be that id (no string matching needed for the token's own entry).

    The token's own entry (``tokens[i]``/``token_logprobs[i]``, the k+1 entry) is added to its
    position. A position is None when the server gave nothing for it (the first echoed token).
    """
    if not isinstance(logprobs, dict):
        raise RemoteExpertError("the server returned no logprobs; it must support the completions "
                                "`logprobs` parameter (vLLM, llama.cpp /v1, SGLang, logit-swarm serve)")
    out: list[TopK | None] = []
    if isinstance(logprobs.get("content"), list):
        for i, ent in enumerate(logprobs["content"]):
            ids, lps = _position_entries(ent.get("top_logprobs"), resolve)
            own = _entry_value(ent.get("logprob"))
            if own is not None:
                known = prompt_ids[i] if prompt_ids is not None and i < len(prompt_ids) else None
                tid = known if known is not None else resolve(ent.get("token"), ent.get("bytes"), ent.get("id"))
                if tid is not None:
                    ids.append(int(tid))
                    lps.append(own)
            out.append((np.asarray(ids, np.int64), np.asarray(lps, np.float64)) if ids else None)
        return out
    tops = logprobs.get("top_logprobs")
    if tops is None:
        raise RemoteExpertError("the server's logprobs have no top_logprobs; ask it for logprobs=k > 0")
    tokens = logprobs.get("tokens") or []
    own_lps = logprobs.get("token_logprobs") or []
    for i, top in enumerate(tops):
        ids, lps = _position_entries(top, resolve)
        own = _entry_value(own_lps[i]) if i < len(own_lps) else None
        if own is not None:
            if prompt_ids is not None and i < len(prompt_ids):
                tid = int(prompt_ids[i])
            else:
                tid = resolve(tokens[i]) if i < len(tokens) else None
            if tid is not None:
                ids.append(int(tid))
                lps.append(own)
        out.append((np.asarray(ids, np.int64), np.asarray(lps, np.float64)) if ids else None)
    return out


# ============================================================================================
# Tokenizer
# ============================================================================================


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "logit_swarm" / "remote_tokenizers"


def fetch_tokenizer(client: HTTPClient, model: str, cache_dir: str | os.PathLike | None = None
                    ) -> tuple[Path, dict]:
    """Download a model's tokenizer files from the project's server into a local directory.

    ``GET {base}/models/{model}/tokenizer`` answers ``{"files": {filename: text}, ...}``; the
    project's server adds ``stop_ids``, ``context_window``, ``vocab_size`` and ``fingerprint``.
    The files are written to ``cache_dir/<hash of their content>/`` (default
    ``~/.cache/logit_swarm/remote_tokenizers``), so the same tokenizer is stored once and never
    confused with another. Returns (directory, the answer's other fields).

    Raises:
        ValueError: the server does not offer tokenizer files (404): pass ``tokenizer=DIR``.
        RemoteExpertError: the server is unreachable or its answer is malformed.
    """
    path = f"/models/{urllib.parse.quote(model, safe='')}/tokenizer"
    status, data, text = client.json("GET", path)
    if status in (404, 405, 501):
        raise ValueError(
            f"{client.url(path)} answered {status}: this server does not hand out tokenizer files "
            f"(only `logit-swarm serve` does). Pass tokenizer=DIR, a local directory with model "
            f"{model!r}'s tokenizer files (tokenizer.json, tokenizer_config.json)"
        )
    if status != 200 or not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        raise RemoteExpertError(f"GET {client.url(path)} answered {status}: {_short(text)}; expected "
                                "{\"files\": {filename: text}}")
    files: dict[str, str] = {}
    for name, content in data["files"].items():
        base = os.path.basename(str(name))
        # Only plain file names: the server must not be able to write outside the cache entry.
        if not base or base != name or base in (".", "..") or not isinstance(content, str):
            raise RemoteExpertError(f"the server's tokenizer files include an unusable entry {name!r}")
        files[base] = content
    if not files:
        raise RemoteExpertError(f"GET {client.url(path)} returned no tokenizer files")
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name].encode("utf-8") + b"\0")
    root = Path(cache_dir).expanduser() if cache_dir is not None else _cache_root()
    out = root / digest.hexdigest()[:24]
    if not out.is_dir():
        tmp = root / f".{out.name}.{os.getpid()}.tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            (tmp / name).write_text(content, encoding="utf-8")
        try:
            os.replace(tmp, out)  # atomic: a concurrent fetch of the same files wins harmlessly
        except OSError:
            if not out.is_dir():
                raise
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return out, {k: v for k, v in data.items() if k != "files"}


def _load_tokenizer(directory: str | os.PathLike):
    from transformers import AutoTokenizer

    d = Path(directory).expanduser()
    if not d.is_dir():
        raise FileNotFoundError(f"tokenizer directory {str(d)!r} does not exist; pass the model's "
                                "tokenizer files (tokenizer.json, tokenizer_config.json) as a directory")
    tok = AutoTokenizer.from_pretrained(str(d), trust_remote_code=False)
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"{str(d)!r}: only fast tokenizers (tokenizer.json) are supported")
    return tok


# ============================================================================================
# The expert
# ============================================================================================


class RemoteExpert(SequenceExpert):
    """An expert served by an OpenAI-compatible completions endpoint (see the module docstring).

    Build it with :func:`load_remote_expert` (or ``ls.load_expert(url, ...)``).

    Args:
        client: the :class:`HTTPClient` of the API base.
        model: the served model's name (the ``model`` field of requests).
        tokenizer: the model's tokenizer, held locally.
        name: short name (default: the model name).
        top_k: log-probabilities asked per position; -1 = the whole vocabulary (vLLM and
            ``logit-swarm serve`` accept it when started with ``--max-logprobs -1``).
        max_batch: the most sequences one request carries.
        tokenizer_dir: the directory the tokenizer came from when the user gave one (recipes keep it).
        api_key_env: the environment variable the key was read from (recipes keep the name only).
        **kwargs: for :class:`~logit_swarm.experts.sequence.SequenceExpert` (device, dtype,
            model_info, context_window, cache_bytes, score_mode).
    """

    def __init__(self, client: HTTPClient, model: str, tokenizer, name: str | None = None, top_k: int = 20,
                 max_batch: int = 64, tokenizer_dir: str | None = None,
                 api_key_env: str = DEFAULT_API_KEY_ENV, **kwargs: Any) -> None:
        super().__init__(tokenizer, name or model, top_k=top_k, **kwargs)
        if not (isinstance(max_batch, int) and max_batch >= 1):
            raise ValueError(f"max_batch must be a positive integer, got {max_batch!r}")
        self.client = client
        self.url = client.base_url
        self.model = model
        self.max_batch = max_batch
        self.tokenizer_dir = tokenizer_dir
        self.api_key_env = api_key_env
        self.k_cap: int | None = None
        self.resolve = TokenResolver(tokenizer, lambda: self.vocab_bytes)
        self._warned: set[str] = set()

    def __repr__(self) -> str:
        return f"RemoteExpert({self.name!r}, url={self.url!r}, model={self.model!r}, top_k={self.top_k})"

    def describe(self) -> dict:
        """Recipe reference: kind, url, model, top_k, name (+ tokenizer dir and key variable if set).

        The API key itself is never included; it is read again from ``api_key_env`` on load.
        """
        d = {"kind": "remote", "url": self.url, "model": self.model, "top_k": self.top_k, "name": self.name}
        if self.tokenizer_dir is not None:
            d["tokenizer"] = self.tokenizer_dir
        if self.api_key_env != DEFAULT_API_KEY_ENV:
            d["api_key_env"] = self.api_key_env
        return d

    def stats(self) -> dict[str, Any]:
        """:meth:`SequenceExpert.stats` plus HTTP attempts/retries, the learned k cap and
        string keys that matched no token."""
        s = super().stats()
        s.update(http_requests=self.client.requests, http_attempts=self.client.attempts,
                 http_retried=self.client.retried, k_cap=self.k_cap, unresolved_keys=self.resolve.unresolved,
                 score_mode=self.score_mode)
        return s

    def _warn(self, key: str, msg: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            print(f"logit_swarm: remote expert {self.name!r}: {msg}", file=sys.stderr)

    # ----------------------------------------------------------------------------- requests
    def learn_cap(self, cap: int) -> None:
        """Remember that the server answers at most ``cap`` log-probabilities per position."""
        self.k_cap = cap if self.k_cap is None else min(cap, self.k_cap)
        if (self.top_k == -1 or self.top_k > self.k_cap) and self.k_cap < self.vocab_size:
            self._warn("cap", f"the server allows at most {self.k_cap} log-probabilities per position; "
                              f"using k={self.k_cap} instead of {self.top_k} (the rest of each distribution "
                              "is filled by the leftover-mass rule, so results are approximate)")

    def _effective_top_k(self) -> int:
        if self.k_cap is None:
            return self.top_k
        return self.k_cap if self.top_k == -1 else min(self.top_k, self.k_cap)

    def _batches(self, seqs: list[tuple[int, ...]], echo: bool) -> list[list[int]]:
        """Index groups of at most ``max_batch`` sequences and about
        :data:`_MAX_ENTRIES_PER_REQUEST` returned entries each."""
        k = self._effective_top_k()
        per_pos = self.vocab_size if k == -1 else min(k + 1, self.vocab_size)
        groups: list[list[int]] = []
        cur: list[int] = []
        load = 0
        for i, s in enumerate(seqs):
            cost = per_pos * ((len(s) + 1) if echo else 1)
            if cur and (len(cur) >= self.max_batch or load + cost > _MAX_ENTRIES_PER_REQUEST):
                groups.append(cur)
                cur, load = [], 0
            cur.append(i)
            load += cost
        if cur:
            groups.append(cur)
        return groups

    def _complete(self, prompts: list[tuple[int, ...]], echo: bool) -> list[dict]:
        """A completions request for ``prompts`` (split when the server takes fewer per request);
        returns each prompt's ``logprobs`` object in order."""
        body = {
            "model": self.model,
            # A single prompt goes as a flat list: servers that do not batch still accept it.
            "prompt": list(prompts[0]) if len(prompts) == 1 else [list(p) for p in prompts],
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": self._effective_top_k(),
            "echo": echo,
            "return_tokens_as_token_ids": True,
        }
        tried_caps: set[int] = set()
        while True:
            status, data, text = self.client.json("POST", "/completions", body)
            if status == 200:
                break
            if len(prompts) > 1 and status in (400, 413):
                limit = _parse_row_limit(_short(text, 2000)) if status == 400 else len(prompts) // 2
                if limit is not None and 1 <= limit < len(prompts):
                    # The server takes fewer prompts per request: split, and remember the limit.
                    self.max_batch = min(self.max_batch, limit)
                    out: list[dict] = []
                    for i in range(0, len(prompts), limit):
                        out.extend(self._complete(prompts[i : i + limit], echo))
                    return out
            cap = parse_k_cap(_short(text, 2000)) if status in (400, 422) else None
            k = body["logprobs"]
            if cap is not None and cap not in tried_caps and (k == -1 or cap < k):
                tried_caps.add(cap)
                self.learn_cap(cap)
                body["logprobs"] = self._effective_top_k()
                continue
            raise self._refused(status, text)
        self.forward_calls += 1
        self.forward_rows += len(prompts)
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or len(choices) != len(prompts):
            got = len(choices) if isinstance(choices, list) else "no"
            raise RemoteExpertError(f"{self.client.url('/completions')} returned {got} choices for "
                                    f"{len(prompts)} prompts; is it an OpenAI-compatible completions endpoint?")
        if all(isinstance(c, dict) and isinstance(c.get("index"), int) for c in choices):
            choices = sorted(choices, key=lambda c: c["index"])
        return [c.get("logprobs") if isinstance(c, dict) else None for c in choices]

    def _refused(self, status: int, text: str) -> Exception:
        url = self.client.url("/completions")
        msg = _short(text)
        if status in (401, 403):
            return RemoteExpertError(f"{url} refused the request ({status}: {msg}); set the API key in "
                                     f"${self.api_key_env} or pass api_key=")
        if status == 404:
            return RemoteExpertError(f"{url} answered 404 ({msg}); check the URL (the API base, ending in "
                                     f"/v1) and the model name {self.model!r} (GET {self.url}/models lists them)")
        return RemoteExpertError(f"{url} refused the request ({status}: {msg})")

    def _query_next(self, seqs: list[tuple[int, ...]]) -> list[TopK]:
        out: list[TopK | None] = [None] * len(seqs)
        for group in self._batches(seqs, echo=False):
            lps = self._complete([seqs[i] for i in group], echo=False)
            for i, lp in zip(group, lps):
                pos = parse_logprobs(lp, self.resolve)
                # Without echo the answer's positions are the generated ones; the first is ours.
                if not pos or pos[0] is None:
                    raise RemoteExpertError(f"{self.client.url('/completions')} returned no top-k "
                                            "log-probabilities for the generated token")
                out[i] = pos[0]
        return out  # type: ignore[return-value]

    def _query_forced(self, seqs: list[tuple[int, ...]], starts: list[int]) -> list[list[TopK]]:
        out: list[list[TopK] | None] = [None] * len(seqs)
        fallback: list[int] = []
        for group in self._batches(seqs, echo=True):
            lps = self._complete([seqs[i] for i in group], echo=True)
            for i, lp in zip(group, lps):
                s, a = seqs[i], starts[i]
                pos = parse_logprobs(lp, self.resolve, prompt_ids=s)
                rows = pos[a : len(s) + 1]
                if len(pos) < len(s) + 1 or any(r is None for r in rows):
                    fallback.append(i)
                    continue
                out[i] = rows  # type: ignore[assignment]
        if fallback:
            # The server does not echo prompt log-probabilities: ask for each prefix instead,
            # from now on (scoring stays correct, it only costs more sequences per request).
            self._warn("echo", "the server does not return prompt log-probabilities with echo=true; "
                               "scoring by next-token queries of each prefix instead")
            self.score_mode = "prefixes"
            keys = [seqs[i][:j] for i in fallback for j in range(starts[i], len(seqs[i]) + 1)]
            tops = self._query_next(keys)
            pos = 0
            for i in fallback:
                n = len(seqs[i]) - starts[i] + 1
                out[i] = tops[pos : pos + n]
                pos += n
        return out  # type: ignore[return-value]


def _list_models(client: HTTPClient) -> list[dict]:
    status, data, text = client.json("GET", "/models")
    if status == 200 and isinstance(data, dict) and isinstance(data.get("data"), list):
        return [m for m in data["data"] if isinstance(m, dict) and "id" in m]
    if status in (401, 403):
        raise RemoteExpertError(f"{client.url('/models')} refused the request ({status}: {_short(text)}); "
                                f"set the API key (api_key= or ${DEFAULT_API_KEY_ENV})")
    return []


def load_remote_expert(url: str, model: str | None = None, api_key: str | None = None,
                       tokenizer: str | os.PathLike | None = None, top_k: int = 20, timeout: float = 60.0,
                       retries: int = 3, name: str | None = None, device="cpu", dtype=None,
                       max_batch: int = 64, score_mode: str = "auto", cache_bytes: int = DEFAULT_CACHE_BYTES,
                       api_key_env: str = DEFAULT_API_KEY_ENV, backoff: float = 0.5, max_backoff: float = 8.0,
                       context_window: int | None = None, tokenizer_cache: str | os.PathLike | None = None,
                       ) -> RemoteExpert:
    """Connect to an OpenAI-compatible completions endpoint as an expert.

    Args:
        url: the API base, e.g. ``http://host:8000/v1``.
        model: the served model's name; None = the only model the server lists.
        api_key: bearer token; None = read ``$LOGIT_SWARM_API_KEY`` (or ``api_key_env``) if set.
        tokenizer: local directory of the model's tokenizer files; None = fetch them from the
            project's server (``GET {url}/models/{model}/tokenizer``).
        top_k: log-probabilities asked per position (-1 = all; servers may cap it, see module doc).
        timeout: seconds per socket operation of one attempt.
        retries: repeats after a connection error, timeout, 408/429 or 5xx.
        name: short name (default: the model name).
        device, dtype: where and in what dtype (float32/float64) returned log-probs live.
        max_batch: the most sequences per request.
        score_mode: "auto", "echo" or "prefixes" (see :class:`SequenceExpert`).
        cache_bytes: bound on cached answers (LRU).
        api_key_env: environment variable holding the key (stored in recipes by name only).
        backoff, max_backoff: first and largest wait between attempts, in seconds.
        context_window: the model's context window if known (else from a config.json next to the
            tokenizer, else the server's ``max_model_len``, else unchecked).
        tokenizer_cache: where fetched tokenizer files are kept (default ~/.cache/logit_swarm).

    Raises:
        RemoteExpertError: the server cannot be reached (after retries) or refuses.
        ValueError: bad arguments, no model given and several served, or no tokenizer available.
    """
    if not is_url(url):
        raise ValueError(f"{url!r} is not an http(s) URL of an OpenAI-compatible API base (e.g. http://host:8000/v1)")
    if api_key is None:
        api_key = os.environ.get(api_key_env) or None
    client = HTTPClient(url, api_key=api_key, timeout=timeout, retries=retries, backoff=backoff,
                        max_backoff=max_backoff)
    models = _list_models(client)
    if model is None:
        if len(models) != 1:
            listed = ", ".join(repr(m["id"]) for m in models) or "none"
            raise ValueError(f"pass model=: {client.url('/models')} lists {len(models)} models ({listed})")
        model = str(models[0]["id"])
    elif models and not any(m["id"] == model for m in models):
        listed = ", ".join(repr(m["id"]) for m in models)
        raise ValueError(f"{client.url('/models')} does not serve model {model!r}; it serves {listed}")
    card = next((m for m in models if m["id"] == model), {})
    tok_dir: Path
    given = None
    meta: dict = {}
    if tokenizer is not None:
        tok_dir = Path(tokenizer).expanduser()
        given = str(tok_dir.resolve())
    else:
        tok_dir, meta = fetch_tokenizer(client, model, tokenizer_cache)
    tok = _load_tokenizer(tok_dir)
    info = read_model_config(tok_dir)
    # What the project's server says about its expert completes what the files say.
    stop = meta.get("stop_ids")
    if isinstance(stop, list):
        info["eos"] = list(info.get("eos", [])) + [int(x) for x in stop if isinstance(x, int)]
    for cw in (meta.get("context_window"), card.get("max_model_len")):
        if info.get("context_window") is None and isinstance(cw, int) and not isinstance(cw, bool) and cw > 0:
            info["context_window"] = cw
    expert = RemoteExpert(client, model, tok, name=name, top_k=top_k, max_batch=max_batch, tokenizer_dir=given,
                          api_key_env=api_key_env, device=device, dtype=dtype, model_info=info,
                          context_window=context_window, cache_bytes=cache_bytes, score_mode=score_mode)
    fp = meta.get("fingerprint")
    if isinstance(fp, str) and fp != expert.fingerprint:
        raise ValueError(
            f"the tokenizer files from {client.url('/models/' + model + '/tokenizer')} load here as a different "
            "tokenizer than the server's (fingerprints differ; different tokenizers/transformers versions?); "
            "pass tokenizer=DIR with the model's own tokenizer files"
        )
    cap = card.get("max_logprobs")  # `logit-swarm serve` states its cap up front (-1 = none)
    if isinstance(cap, int) and not isinstance(cap, bool) and cap >= 1:
        expert.learn_cap(cap)
    return expert
