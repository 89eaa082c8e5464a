"""The batching worker: one thread owns the models and decodes requests that arrive together in one
engine call.

HTTP threads validate a request (protocol.py) and :meth:`Batcher.submit` it as a :class:`Job`.
The worker takes the first waiting job, then keeps collecting for ``window_s`` seconds (or until
``max_rows`` rows), and processes the batch:

1. *prepare*: tokenize each prompt for each expert (chat messages with each expert's own
   template), check it fits the context window with its ``max_tokens``; a job that fails gets its
   400 and leaves the batch;
2. *echo*: prompt log-probabilities of every ``echo`` job, one teacher-forced pass per expert;
3. *decode*: one :func:`~logit_swarm.decode.generate_rows` call per mixing mode present, with
   per-row ``max_new_tokens``, temperature, top_p, stop strings, seeds and weights, and an
   ``on_step`` hook that streams units and top-k log-probabilities.

Every tokenizer and model call happens on this thread (HF tokenizers and the experts' KV stores
are not meant for concurrent use). Batching changes nothing in a row's result: a row samples from
its own random stream (seed, choice index), and its state depends only on its own prompt.

If an engine call fails, jobs that have not streamed anything yet are retried alone, so one bad
request cannot fail its neighbours; the worker itself never stops on an error.
"""

from __future__ import annotations

import queue
import random
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from ..decode import _render, generate_rows, prompt_ids_for
from ..mixing import as_weight_matrix, mix_logprobs
from .protocol import ApiError, GenRequest


@dataclass
class Job:
    """One request as the worker sees it; results come back as events on ``events``.

    Events (tuples): ``("prompt", i, info)`` once per prompt (number of prompt units, echoed
    units and log-probs); ``("step", row, unit, logprob, top, delta)`` per unit of a streamed
    row; ``("done", row, result)`` once per row; ``("end",)`` after the last row; or
    ``("error", ApiError)`` instead of whatever was still to come.
    """

    req: GenRequest
    events: queue.Queue = field(default_factory=queue.Queue)
    cancelled: bool = False  # set by the HTTP thread when the client went away
    # Filled by the worker:
    max_new: int = 0
    streamed: bool = False  # a step or done event of a streamed row went out
    finished: bool = False
    steps: dict = field(default_factory=dict)  # row -> [(unit, logprob, top)], non-streamed logprob jobs
    rows_left: int = 0
    prompt_ids: list = field(default_factory=list)  # per prompt: per expert token ids
    prompt_units: list = field(default_factory=list)  # per prompt: units counted in usage
    W: np.ndarray | None = None  # [rows, N] weights

    def put(self, *event) -> None:
        """Send one event to the waiting HTTP thread."""
        if not self.finished:
            self.events.put(event)
            if event[0] in ("end", "error"):
                self.finished = True

    def fail(self, err: ApiError) -> None:
        """End the job with an error (nothing more is sent after it)."""
        self.put("error", err)


def topk(dist: torch.Tensor, k: int) -> list[tuple[int, float]]:
    """The ``k`` most probable units of a 1-D log-distribution (``-1`` = all), best first; ties go
    to the lower unit id, so the order never depends on the batch."""
    n = dist.shape[0]
    if k == 0:
        return []
    if k == -1 or k >= n:
        vals, idx = torch.sort(dist, descending=True, stable=True)
    else:
        vals, idx = torch.topk(dist, k)
    pairs = list(zip(idx.tolist(), vals.tolist()))
    pairs.sort(key=lambda p: (-p[1], p[0]))
    return pairs


class Batcher:
    """The worker thread (see the module docstring).

    Args:
        ensemble: the :class:`~logit_swarm.Ensemble` to serve (used only by this worker).
        window_s: how long to wait for more requests after the first one of a batch.
        max_rows: the most rows (prompts × n over all requests) one batch decodes.
    """

    def __init__(self, ensemble, window_s: float = 0.005, max_rows: int = 64):
        self.ens = ensemble
        self.window_s = float(window_s)
        self.max_rows = int(max_rows)
        self._queue: queue.Queue[Job] = queue.Queue()
        self._held: deque[Job] = deque()  # taken from the queue but did not fit the last batch
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        #: Counters: jobs, batches, engine_calls (generate_rows calls), echo_calls, rows, errors.
        self.stats = {"jobs": 0, "batches": 0, "engine_calls": 0, "echo_calls": 0, "rows": 0, "errors": 0}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the worker thread."""
        self._thread = threading.Thread(target=self._loop, name="logit-swarm-engine", daemon=True)
        self._thread.start()

    def submit(self, req: GenRequest) -> Job:
        """Queue a validated request; raises a 503 :class:`ApiError` once shutdown has begun."""
        with self._lock:
            if self._stopping.is_set():
                raise ApiError(503, "the server is shutting down; retry against another instance")
            job = Job(req)
            self._queue.put(job)
        return job

    def stop(self, timeout: float | None = None) -> None:
        """Stop taking jobs, finish the ones already accepted, and end the thread."""
        with self._lock:
            self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        """Whether the worker thread is running."""
        return self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------------ the loop
    def _next(self, timeout: float) -> Job | None:
        if self._held:
            return self._held.popleft()
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def _collect(self) -> list[Job]:
        first = self._next(0.05)
        if first is None:
            return []
        batch, rows = [first], first.req.n_rows
        deadline = time.monotonic() + self.window_s
        while rows < self.max_rows:
            wait = deadline - time.monotonic()
            if wait <= 0 and self._queue.empty() and not self._held:
                break
            job = self._next(max(wait, 0.0))
            if job is None:
                break
            if rows + job.req.n_rows > self.max_rows:
                self._held.appendleft(job)  # first in line for the next batch
                break
            batch.append(job)
            rows += job.req.n_rows
        return batch

    def _loop(self) -> None:
        while True:
            batch = self._collect()
            if not batch:
                if self._stopping.is_set() and self._queue.empty() and not self._held:
                    return
                continue
            try:
                self._process(batch)
            except Exception as exc:  # never let the worker die
                self.stats["errors"] += 1
                traceback.print_exc()
                for job in batch:
                    job.fail(ApiError(500, f"internal error while decoding: {type(exc).__name__}: {exc}"))

    # ------------------------------------------------------------------ one batch
    def _process(self, batch: list[Job]) -> None:
        self.stats["batches"] += 1
        self.stats["jobs"] += len(batch)
        ready = []
        for job in batch:
            if job.cancelled:
                continue
            try:
                self._prepare(job)
                ready.append(job)
            except Exception as exc:
                job.fail(_as_api_error(exc))
        echo = [j for j in ready if j.req.echo]
        if echo:
            try:
                self._echo(echo)
            except Exception as exc:
                if len(echo) == 1:
                    echo[0].fail(_as_api_error(exc))
                for job in echo if len(echo) > 1 else []:  # isolate: redo each alone, only the culprit fails
                    try:
                        self._echo([job])
                    except Exception as exc1:
                        job.fail(_as_api_error(exc1))
        ready = [j for j in ready if not j.finished]
        for job in ready:
            if job.max_new == 0:
                for row in range(job.req.n_rows):
                    job.put("done", row, {"text": "", "units": [], "logprobs": [], "tops": [],
                                          "finish_reason": "length", "delta": ""})
                job.put("end")
        todo = [j for j in ready if j.max_new > 0]
        for mode in sorted({j.req.mode for j in todo}):
            self._decode_isolated([j for j in todo if j.req.mode == mode], mode)

    def _prepare(self, job: Job) -> None:
        """Tokenize, fit into the context window, resolve ``max_tokens``; raises ApiError(400)."""
        ens, req = self.ens, job.req
        job.prompt_ids = []  # per prompt: per expert ids
        rooms, units = [], []
        for i, p in enumerate(req.prompts):
            per_e = [prompt_ids_for(e, p) for e in ens.experts]
            job.prompt_ids.append(per_e)
            if ens.unit == "token":
                units.append(len(per_e[0]))
                needs = [len(x) for x in per_e]
                if req.echo and any(x != per_e[0] for x in per_e):
                    raise ApiError(400, "the experts tokenize this prompt differently, so echo has no single "
                                   "token sequence to score", "prompt")
            else:
                from ..align.prompt import split_prompt

                # The byte track covers the whole prompt from its head (align/bytes.py); its paths
                # run about one token per canonical token, so the canonical length is the need.
                needs = [len(x) for x in per_e]
                if isinstance(p, str):
                    units.append(len(p.encode("utf-8")))
                else:  # chat: the longest of the experts' renderings, in bytes
                    units.append(max(len(e.tokenizer.decode(x).encode("utf-8")) for e, x in zip(ens.experts, per_e)))
                if req.echo and req.logprobs is not None:  # the echo pass walks the bytes from the empty text
                    for e in ens.experts:
                        h, t = split_prompt(e, e.encode(""), True)
                        need = len(h) + len(t) + len(p.encode("utf-8"))
                        _fits(e, need, 0, "the echoed prompt")
            room = None
            for e, need in zip(ens.experts, needs):
                if e.context_window is not None:
                    r = e.context_window - need
                    room = r if room is None else min(room, r)
                    if r < 0 or (r == 0 and not req.echo):
                        raise ApiError(400, f"prompt {i} needs {need} tokens of expert {e.name!r}, whose context "
                                       f"window is {e.context_window}; shorten the prompt", "prompt",
                                       "context_length_exceeded")
            rooms.append(room)
        job.prompt_units = units
        known = [r for r in rooms if r is not None]
        room = min(known) if known else None
        if req.max_tokens is None:  # chat without max_tokens: what fits (vLLM's default)
            job.max_new = room if room is not None else 16
        else:
            job.max_new = req.max_tokens
            if room is not None and job.max_new > room:
                raise ApiError(400, f"max_tokens = {job.max_new} does not fit: the prompt leaves room for at most "
                               f"{room} new {ens.unit}s in the smallest context window "
                               f"({min(e.context_window for e in ens.experts if e.context_window)}); lower max_tokens",
                               "max_tokens", "context_length_exceeded")
        w = req.weights if req.weights is not None else ens.weights
        job.W = as_weight_matrix(w, len(ens.experts), req.n_rows, req.mode)
        job.rows_left = req.n_rows
        if not req.echo:
            for i in range(len(req.prompts)):
                job.put("prompt", i, {"prompt_units": units[i], "echo": None})

    # ------------------------------------------------------------------ echo (teacher forcing)
    def _echo(self, jobs: list[Job]) -> None:
        """The prompts of ``jobs`` as units, and their log-probabilities (first unit: None) for the
        jobs that asked for ``logprobs`` (one teacher-forced pass per expert for all of them)."""
        ens = self.ens
        items = [(job, i) for job in jobs for i in range(len(job.req.prompts))]
        if ens.unit == "token":
            units = [job.prompt_ids[i][0] for job, i in items]
        else:
            units = [list(job.req.prompts[i].encode("utf-8")) for job, i in items]
        scored = [k for k, (job, _) in enumerate(items) if job.req.logprobs is not None and len(units[k]) >= 2]
        dists: dict[int, torch.Tensor] = {}
        if scored:
            self.stats["echo_calls"] += 1
            if ens.unit == "token":
                got = _token_echo(ens.experts, [units[k] for k in scored])  # each [N, T-1, V]
            else:
                from ..score import byte_tables

                texts = [items[k][0].req.prompts[items[k][1]] for k in scored]
                _, fulls = byte_tables(ens.experts, [""] * len(texts), texts, True, ens.byte_beam, ens.byte_prune)
                got = [torch.as_tensor(np.stack([f[j][1:] for f in fulls])) for j in range(len(texts))]
            dists = dict(zip(scored, got))
        for k, ((job, i), u) in enumerate(zip(items, units)):
            lps, tops = [None], [None]
            if k in dists:
                d = dists[k]
                w = np.tile(job.W[0], (d.shape[1], 1))  # the job's weights at every position
                mixed = mix_logprobs(d, w, job.req.mode)  # [T-1, U]
                lps += mixed.gather(1, torch.tensor(u[1:])[:, None])[:, 0].tolist()
                tops += [topk(mixed[t], job.req.logprobs) for t in range(mixed.shape[0])]
            else:
                lps, tops = [None] * len(u), [None] * len(u)
            p = job.req.prompts[i]
            text = p if isinstance(p, str) else ens.experts[0].tokenizer.decode(p)  # token ids: decoded as is
            job.put("prompt", i, {"prompt_units": job.prompt_units[i], "prompt_text": text,
                                  "echo": {"units": list(u), "logprobs": lps, "tops": tops}})

    # ------------------------------------------------------------------ decoding
    def _decode_isolated(self, jobs: list[Job], mode: str) -> None:
        try:
            self._decode(jobs, mode)
        except Exception as exc:
            if len(jobs) == 1:
                jobs[0].fail(_as_api_error(exc))
                return
            for job in jobs:
                if job.finished:
                    continue
                if job.streamed:  # cannot take back what was sent; say so
                    job.fail(ApiError(500, f"the batch this request was decoded in failed ({type(exc).__name__}: "
                                      f"{exc}); retry the request"))
                    continue
                job.steps = {}
                job.rows_left = job.req.n_rows
                try:
                    self._decode([job], mode)
                except Exception as exc1:
                    job.fail(_as_api_error(exc1))

    def _decode(self, jobs: list[Job], mode: str) -> None:
        ens = self.ens
        prompts, W, max_new, temps, tops, seeds, stops, owner = [], [], [], [], [], [], [], []
        for job in jobs:
            req = job.req
            base = req.seed if req.seed is not None else random.getrandbits(63)
            for i, p in enumerate(req.prompts):
                for j in range(req.n):
                    row = i * req.n + j
                    prompts.append(p)
                    W.append(job.W[row])
                    max_new.append(job.max_new)
                    temps.append(req.temperature)
                    tops.append(req.top_p)
                    seeds.append((base, row))  # choice `row` uses the stream (seed, row)
                    stops.append(list(req.stop))
                    owner.append((job, row))
        self.stats["engine_calls"] += 1
        self.stats["rows"] += len(prompts)
        watch = any(j.req.stream or j.req.logprobs is not None for j in jobs)
        state = _StreamState(ens, owner) if watch else None
        outs = generate_rows(
            ens.experts, ens.unit, prompts, np.asarray(W), mode, max_new, temps, tops, seeds, stops,
            None, ens.byte_beam, ens.byte_prune, on_step=state.on_step if state else None,
        )
        for g, (job, row) in enumerate(owner):
            if job.req.stream:
                continue  # sent by on_step when the row finished
            steps = job.steps.get(row, [])
            job.put("done", row, {"text": outs[g].text, "units": list(outs[g].units),
                                  "logprobs": list(outs[g].logprobs), "tops": [s[2] for s in steps],
                                  "finish_reason": outs[g].finish_reason, "delta": None})
        for job in jobs:
            job.put("end")


class _StreamState:
    """Per-row bookkeeping of ``on_step``: top-k log-probs and the text already streamed."""

    def __init__(self, ens, owner):
        self.unit = ens.unit
        self.dec = ens.experts[0].tokenizer if ens.unit == "token" else None
        self.owner = owner
        self.sent = [""] * len(owner)
        self.hold = [max((len(s) for s in job.req.stop), default=1) - 1 for job, _ in owner]

    def on_step(self, step) -> None:
        """The ``generate_rows`` hook: top-k of the rows that want log-probs, text deltas of streamed rows."""
        finished = set(step.finished)
        for i, g in enumerate(step.rows):
            job, row = self.owner[g]
            k = job.req.logprobs
            if not job.req.stream and k is None:
                continue
            top = topk(step.dists[i], k) if k is not None else None
            unit, lp = step.units[i], step.logprobs[i]
            if not job.req.stream:
                job.steps.setdefault(row, []).append((unit, lp, top))
                continue
            out = step.outputs[g]
            if g in finished:
                text = out.text
                delta = text[len(self.sent[g]):] if text.startswith(self.sent[g]) else ""
                self.sent[g] = text
            else:
                text = _render(self.unit, self.dec, out.units).rstrip("\ufffd")  # incomplete UTF-8 waits
                if self.hold[g]:
                    text = text[: max(len(text) - self.hold[g], 0)]  # may be the start of a stop string
                delta = ""
                if len(text) > len(self.sent[g]) and text.startswith(self.sent[g]):
                    delta = text[len(self.sent[g]):]
                    self.sent[g] = text
            if job.cancelled:
                continue
            job.streamed = True
            job.put("step", row, unit, lp, top, delta)
            if g in finished:
                job.put("done", row, {"text": out.text, "units": list(out.units), "logprobs": list(out.logprobs),
                                      "tops": None, "finish_reason": out.finish_reason, "delta": ""})
                job.rows_left -= 1
                if job.rows_left == 0:
                    job.put("end")


def _token_echo(experts, seqs: list[list[int]]) -> list[torch.Tensor | None]:
    """Per sequence, ``[N, len-1, V]``: each expert's next-token log-probs after every proper prefix
    ids[:1], ..., ids[:-1] (None for one-token sequences)."""
    per_expert = []
    idx = [k for k, s in enumerate(seqs) if len(s) >= 2]
    for e in experts:
        out: dict[int, torch.Tensor] = {}
        if idx:
            nodes, first = e.prefill([seqs[k][:1] for k in idx])
            try:
                feed = [seqs[k][1:-1] for k in idx]
                more = [i for i, f in enumerate(feed) if f]
                rest = e.score_chunks([nodes[i] for i in more], [feed[i] for i in more]) if more else []
                rest_of = dict(zip(more, rest))
                for i, k in enumerate(idx):
                    d = first[i : i + 1]
                    if i in rest_of:
                        d = torch.cat([d, rest_of[i]], 0)
                    out[k] = d.double().cpu()  # mixed in float64, like the score tables
            finally:
                for nid in nodes:
                    e.store.release(nid)
        per_expert.append(out)
    return [torch.stack([pe[k] for pe in per_expert]) if k in per_expert[0] else None for k in range(len(seqs))]


def _fits(expert, need: int, extra: int, what: str) -> None:
    if expert.context_window is not None and need + extra > expert.context_window:
        raise ApiError(400, f"{what} needs {need + extra} tokens of expert {expert.name!r}, whose context window "
                       f"is {expert.context_window}; shorten it", "prompt", "context_length_exceeded")


def _as_api_error(exc: Exception) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ValueError):  # the library's input errors name the problem and the fix
        return ApiError(400, str(exc))
    if type(exc).__module__.startswith("jinja2"):  # a chat template refused the messages
        return ApiError(400, f"the chat template refused these messages: {exc}", "messages")
    traceback.print_exception(exc)
    return ApiError(500, f"internal error: {type(exc).__name__}: {exc}")
