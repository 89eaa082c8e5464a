"""The engine thread: a bounded request queue, admission into the running batch, echo scoring.

HTTP handlers validate a request (protocol.py) and :meth:`Scheduler.submit` it as a :class:`Job`
with an event sink. One worker thread owns the models (HF tokenizers and the experts' KV stores
are not meant for concurrent use). Each turn of its loop it

1. takes the new jobs from the queue and *prepares* them: tokenizes each prompt for each expert
   (chat messages with the expert's own chat template, or the default one), checks the context
   windows, and answers ``echo`` jobs' prompt scores (one teacher-forced pass for all of them);
2. *admits* waiting rows (prompt × n) into the :class:`~logit_swarm.serve.engine.StepDecoder`
   according to the batching policy;
3. decodes *one step* for every live row and sends each row's unit (streams), top-k
   log-probabilities and, when a row ends, its result;
4. drops the rows of jobs whose client went away.

Batching policies (``--batching``): ``continuous`` (default; while fewer than ``max_batch_rows``
run, waiting rows join every ``join_every`` steps, and leave when done), ``static`` (the issue-6 behaviour kept
for comparison: a batch is collected for ``window_s`` after its first request and decoded until
its last row ends while new requests wait), ``sequential`` (one request at a time).

A row's result never depends on the rows it shares steps with: its random stream is (seed,
choice index), its state depends only on its own prompt, and greedy picks the argmax of its own
mixture.
"""

from __future__ import annotations

import queue
import random
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..align.prompt import split_prompt
from ..decode import prompt_ids_for
from ..mixing import as_weight_matrix
from .chat import ChatRenderer
from .echo import echo_scores
from .engine import PROMPT_TAIL, RowSpec, StepDecoder, topk
from .protocol import ApiError, GenRequest

POLICIES = ("continuous", "static", "sequential")


class EventSink(Protocol):
    """Where a job's events go (the HTTP side; called from the engine thread)."""

    def put(self, event: tuple) -> None:
        """Deliver one event."""


class QueueSink:
    """An :class:`EventSink` that is a thread-safe queue (tests and synchronous callers)."""

    def __init__(self):
        self.queue: queue.Queue = queue.Queue()

    def put(self, event: tuple) -> None:
        """Deliver one event."""
        self.queue.put(event)


@dataclass
class Job:
    """One request as the engine sees it.

    Events (tuples): ``("prompt", i, info)`` once per prompt (prompt units, echoed units and
    log-probs); ``("step", row, unit, logprob, top, delta, expert_logprobs, text_offset)`` per
    unit of a streamed row; ``("done", row, result)`` once per row; ``("end",)`` after the last row; or
    ``("error", ApiError)`` instead of whatever was still to come.
    """

    req: GenRequest
    sink: EventSink
    cancelled: bool = False  # set by the HTTP side when the client went away
    submitted: float = field(default_factory=time.monotonic)
    first_unit: float | None = None
    max_new: int = 0
    finished: bool = False
    rows_left: int = 0
    pending: deque = field(default_factory=deque)  # row indices not admitted yet
    steps: dict = field(default_factory=dict)  # row -> [(unit, logprob, top)] of non-streamed logprob jobs
    sent: dict = field(default_factory=dict)  # row -> streamed text so far
    rendered: dict = field(default_factory=dict)  # row -> length of the row's text so far (streams)
    prompt_ids: list = field(default_factory=list)  # per prompt: per expert token ids
    prompt_units: list = field(default_factory=list)
    seed: int = 0
    W: np.ndarray | None = None

    def put(self, *event) -> None:
        """Send one event (nothing after the end or an error)."""
        if not self.finished:
            self.sink.put(event)
            if event[0] in ("end", "error"):
                self.finished = True

    def fail(self, err: ApiError) -> None:
        """End the job with an error."""
        self.put("error", err)


class Scheduler:
    """The engine thread (see the module docstring).

    Args:
        ensemble: the :class:`~logit_swarm.Ensemble` served (used only by this thread).
        policy: "continuous", "static" or "sequential".
        max_batch_rows: the most rows decoded together.
        max_queue: the most requests waiting; more get 429 (retry later).
        window_s: (static policy) how long a batch collects requests after its first.
        metrics: a :class:`~logit_swarm.serve.metrics.Metrics` or None.
        chat: how chat messages become prompt ids (:class:`~logit_swarm.serve.chat.ChatRenderer`).
        join_every: while rows decode, new requests are taken (prepared, echoed, prefilled) only
            every this many steps, so their prefill work is batched and interrupts fewer steps.
    """

    def __init__(self, ensemble, policy: str = "continuous", max_batch_rows: int = 64, max_queue: int = 1024,
                 window_s: float = 0.005, metrics=None, chat: ChatRenderer | None = None, join_every: int = 8):
        if policy not in POLICIES:
            raise ValueError(f"unknown batching policy {policy!r}; use one of {', '.join(POLICIES)}")
        self.ens = ensemble
        self.policy = policy
        self.max_rows = int(max_batch_rows)
        self.max_queue = int(max_queue)
        self.window_s = float(window_s)
        self.metrics = metrics
        self.chat = chat or ChatRenderer(ensemble.experts)
        self.decoder = StepDecoder(ensemble.experts, ensemble.unit, ensemble.byte_beam, ensemble.byte_prune)
        self.owner: dict[int, tuple[Job, int]] = {}  # decoder row -> (job, choice index)
        self.waiting: deque[Job] = deque()  # prepared jobs with rows not admitted yet
        self._queue: queue.Queue[Job] = queue.Queue()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        if join_every < 1:
            raise ValueError(f"join_every must be ≥ 1, got {join_every}")
        self.join_every = int(join_every)
        self._turns = 0
        #: Counters: jobs, steps, engine_calls (batched prefills of joining rows), rows, echo_calls,
        #: cancelled_rows, errors, max_running_rows.
        self.stats = {"jobs": 0, "steps": 0, "engine_calls": 0, "rows": 0, "echo_calls": 0, "cancelled_rows": 0,
                      "errors": 0, "max_running_rows": 0}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the engine thread."""
        self._thread = threading.Thread(target=self._loop, name="logit-swarm-engine", daemon=True)
        self._thread.start()

    def submit(self, req: GenRequest, sink: EventSink) -> Job:
        """Queue a validated request: 503 once shutdown began, 429 when the queue is full."""
        with self._lock:
            if self._stopping.is_set():
                raise ApiError(503, "the server is shutting down; retry against another instance")
            if self._queue.qsize() + len(self.waiting) >= self.max_queue:
                raise ApiError(429, f"the server's queue is full ({self.max_queue} requests waiting); retry later "
                               "or start it with a larger --max-queue", code="queue_full", type="rate_limit_error")
            job = Job(req, sink)
            self._queue.put(job)
        return job

    def refuse_new(self) -> None:
        """From now on, :meth:`submit` answers 503 (the jobs accepted are still decoded)."""
        with self._lock:
            self._stopping.set()

    def stop(self, timeout: float | None = None) -> None:
        """Stop taking jobs, finish the ones accepted, end the thread."""
        with self._lock:
            self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        """Whether the engine thread runs."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def queue_length(self) -> int:
        """Requests waiting (not yet decoding)."""
        return self._queue.qsize() + len(self.waiting)

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        while True:
            try:
                busy = self._turn()
            except Exception as exc:  # never let the engine die; fail what was in flight
                self._fail_all(exc)
                busy = False
            if not busy and self._stopping.is_set() and self._queue.empty() and not self.waiting:
                return

    def _turn(self) -> bool:
        """One turn of the loop; returns whether there was anything to do."""
        idle = not self.decoder.rows and not self.waiting
        self._turns += 1
        if self.decoder.rows and self._turns % self.join_every:
            self._drop_cancelled()
            self._step()  # a decode-only turn: joiners are prefilled together every join_every steps
            return True
        new = self._take(block=idle)
        if new:
            self._prepare_all(new)
        self._drop_cancelled()
        self._admit()
        if self.metrics is not None:
            self.metrics.set_load(self.queue_length, len(self.decoder))
        if not self.decoder.rows:
            return bool(new)
        self._step()
        return True

    def _take(self, block: bool) -> list[Job]:
        out = []
        try:
            out.append(self._queue.get(timeout=0.05) if block else self._queue.get_nowait())
        except queue.Empty:
            return out
        if self.policy == "static" and block and self.window_s > 0:  # collect the batch's window
            deadline = time.monotonic() + self.window_s
            while (left := deadline - time.monotonic()) > 0:
                try:
                    out.append(self._queue.get(timeout=left))
                except queue.Empty:
                    break
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                return out

    def _fail_all(self, exc: Exception) -> None:
        self.stats["errors"] += 1
        traceback.print_exc()
        err = ApiError(500, f"internal error while decoding: {type(exc).__name__}: {exc}; retry the request")
        jobs = {id(j): j for j, _ in self.owner.values()}
        self.owner.clear()
        try:
            self.decoder.close()
        except Exception:  # the states may be what broke; start over with a fresh decoder
            traceback.print_exc()
        self.decoder = StepDecoder(self.ens.experts, self.ens.unit, self.ens.byte_beam, self.ens.byte_prune)
        for job in jobs.values():
            job.fail(err)

    def _drop_cancelled(self) -> None:
        for rid, (job, _) in list(self.owner.items()):
            if job.cancelled:
                self.decoder.cancel(rid)
                del self.owner[rid]
                self.stats["cancelled_rows"] += 1
        if any(j.cancelled for j in self.waiting):
            self.waiting = deque(j for j in self.waiting if not j.cancelled)

    # ------------------------------------------------------------------ admission
    def _admit(self) -> None:
        running = len(self.decoder)
        if self.policy != "continuous" and running:
            return  # static / sequential: nothing joins a running batch
        room = self.max_rows - running
        taken: list[tuple[Job, int]] = []
        while self.waiting and room > 0:
            job = self.waiting[0]
            while job.pending and room > 0:
                taken.append((job, job.pending.popleft()))
                room -= 1
            if job.pending:
                break
            self.waiting.popleft()
            if self.policy == "sequential":
                break
        if not taken:
            return
        specs = [self._row_spec(job, row) for job, row in taken]
        self.stats["engine_calls"] += 1
        self.stats["rows"] += len(specs)
        for rid, owner in zip(self.decoder.add(specs), taken):
            self.owner[rid] = owner
        self.stats["max_running_rows"] = max(self.stats["max_running_rows"], len(self.decoder))

    def _row_spec(self, job: Job, row: int) -> RowSpec:
        req = job.req
        i = row // req.n
        k = req.logprobs
        return RowSpec(ids=job.prompt_ids[i], empty=req.prompts[i] == "", weights=job.W[row], mode=req.mode,
                       max_new=job.max_new, temperature=req.temperature, top_p=req.top_p, seed=(job.seed, row),
                       stop=list(req.stop), want_dist=k is not None and k != 0)

    # ------------------------------------------------------------------ one decode step
    def _step(self) -> None:
        render = {rid for rid, (job, _) in self.owner.items() if job.req.stream}
        results = self.decoder.step(render)
        self.stats["steps"] += 1
        now = time.monotonic()
        for s in results:
            job, row = self.owner[s.row]
            if job.first_unit is None:
                job.first_unit = now
                if self.metrics is not None:
                    self.metrics.first_unit(now - job.submitted)
            self._deliver(job, row, s)
            if s.finished:
                del self.owner[s.row]
        if self.metrics is not None:
            self.metrics.units(len(results))

    def _deliver(self, job: Job, row: int, s) -> None:
        req = job.req
        top = topk(s.dist, req.logprobs) if s.dist is not None else ([] if req.logprobs == 0 else None)
        if not req.stream:
            if req.logprobs is not None or req.expert_logprobs:
                job.steps.setdefault(row, []).append((top, s.expert_logprobs))
        else:
            offset = job.rendered.get(row, 0)  # the text before this unit
            job.rendered[row] = len(s.text or "")
            delta = self._delta(job, row, s)
            job.put("step", row, s.unit, s.logprob, top, delta, s.expert_logprobs, offset)
        if s.finished:
            out = s.out
            steps = job.steps.pop(row, [])
            offsets = None
            if req.logprobs is not None and not req.stream:
                offsets = self.decoder.prefix_lengths(out.units, job.prompt_ids[row // req.n][0][-PROMPT_TAIL:])
            job.put("done", row, {"text": out.text, "units": list(out.units), "logprobs": list(out.logprobs),
                                  "tops": [t for t, _ in steps] if steps else None, "offsets": offsets,
                                  "expert_logprobs": [x for _, x in steps] if req.expert_logprobs else None,
                                  "finish_reason": out.finish_reason})
            job.rows_left -= 1
            if job.rows_left == 0:
                job.put("end")
                if self.metrics is not None:
                    self.metrics.latency(time.monotonic() - job.submitted)

    def _delta(self, job: Job, row: int, s) -> str:
        """New text of a streamed row, held back while it may be the start of a stop string or an
        incomplete UTF-8 character."""
        sent = job.sent.get(row, "")
        text = s.out.text if s.finished else (s.text or "").rstrip("\ufffd")
        if not s.finished:
            hold = max((len(x) for x in job.req.stop), default=1) - 1
            if hold:
                text = text[: max(len(text) - hold, 0)]
        if len(text) > len(sent) and text.startswith(sent):
            job.sent[row] = text
            return text[len(sent):]
        return ""

    # ------------------------------------------------------------------ preparing new jobs
    def _prepare_all(self, jobs: list[Job]) -> None:
        self.stats["jobs"] += len(jobs)
        ready = []
        for job in jobs:
            if job.cancelled:
                continue
            try:
                self._prepare(job)
                ready.append(job)
            except Exception as exc:
                job.fail(as_api_error(exc))
        echo = [j for j in ready if j.req.echo]
        if echo:
            self._echo_isolated(echo)
        for job in ready:
            if job.finished:
                continue
            if job.max_new == 0:
                for row in range(job.req.n_rows):
                    job.put("done", row, {"text": "", "units": [], "logprobs": [], "tops": [], "offsets": [],
                                          "expert_logprobs": [], "finish_reason": "length"})
                job.put("end")
                if self.metrics is not None:
                    self.metrics.latency(time.monotonic() - job.submitted)
            else:
                job.pending = deque(range(job.req.n_rows))
                job.rows_left = job.req.n_rows
                self.waiting.append(job)

    def _prepare(self, job: Job) -> None:
        """Tokenize, fit into the context windows, resolve ``max_tokens``; raises ApiError(400)."""
        ens, req = self.ens, job.req
        job.prompt_ids, job.prompt_units = [], []
        rooms = []
        for i, p in enumerate(req.prompts):
            per_e = [self._ids(e, p) for e in ens.experts]
            job.prompt_ids.append(per_e)
            needs = self._needs(job, i, p, per_e)
            rooms.append(_room(ens.experts, needs, i, req.echo))
        known = [r for r in rooms if r is not None]
        room = min(known) if known else None
        if req.max_tokens is None:  # chat without max_tokens: what fits (vLLM's default)
            job.max_new = room if room is not None else 16
        else:
            job.max_new = req.max_tokens
            if room is not None and job.max_new > room:
                window = min(e.context_window for e in ens.experts if e.context_window)
                raise ApiError(400, f"max_tokens = {job.max_new} does not fit: the prompt leaves room for at most "
                               f"{room} new {ens.unit}s in the smallest context window ({window}); lower "
                               "max_tokens", "max_tokens", "context_length_exceeded")
        w = req.weights if req.weights is not None else ens.weights
        job.W = as_weight_matrix(w, len(ens.experts), req.n_rows, req.mode)
        job.seed = req.seed if req.seed is not None else random.getrandbits(63)
        if not req.echo:
            for i in range(len(req.prompts)):
                job.put("prompt", i, {"prompt_units": job.prompt_units[i], "echo": None})

    def _ids(self, expert, prompt) -> list[int]:
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], dict):
            return self.chat.render(expert, prompt)
        return prompt_ids_for(expert, prompt)

    def _needs(self, job: Job, i: int, p, per_e: list[list[int]]) -> list[int]:
        """Tokens each expert needs for prompt ``i`` (before generation); records its usage units."""
        ens, req = self.ens, job.req
        if ens.unit == "token":
            job.prompt_units.append(len(per_e[0]))
            if req.echo and any(x != per_e[0] for x in per_e):
                raise ApiError(400, "the experts tokenize this prompt differently, so echo has no single "
                               "token sequence to score", "prompt")
            return [len(x) for x in per_e]
        if isinstance(p, str):
            job.prompt_units.append(len(p.encode("utf-8")))
        else:  # chat: the longest of the experts' renderings, in bytes
            job.prompt_units.append(max(len(e.tokenizer.decode(x).encode("utf-8"))
                                        for e, x in zip(ens.experts, per_e)))
        if req.echo and req.logprobs is not None:  # the echo pass walks the bytes from the empty text
            for e in ens.experts:
                h, t = split_prompt(e, e.encode(""), True)
                _fits(e, len(h) + len(t) + len(p.encode("utf-8")), "the echoed prompt")
        splits = [split_prompt(e, x, p == "") for e, x in zip(ens.experts, per_e)]
        return [len(h) + len(t) for h, t in splits]

    # ------------------------------------------------------------------ echo
    def _echo_isolated(self, jobs: list[Job]) -> None:
        try:
            self._echo(jobs)
        except Exception as exc:
            if len(jobs) == 1:
                jobs[0].fail(as_api_error(exc))
                return
            for job in jobs:  # redo each alone: only the culprit fails
                try:
                    self._echo([job])
                except Exception as exc1:
                    job.fail(as_api_error(exc1))

    def _echo(self, jobs: list[Job]) -> None:
        """Prompt units and (jobs with ``logprobs``) their log-probabilities, all jobs at once."""
        items = [(job, i) for job in jobs for i in range(len(job.req.prompts))]
        want = [job.req.logprobs is not None for job, _ in items]
        if any(want):
            self.stats["echo_calls"] += 1
        echoes = echo_scores(self.ens, self.decoder, [job.prompt_ids[i][0] for job, i in items],
                             [job.req.prompts[i] for job, i in items], [job.req.bos[i] for job, i in items],
                             [job.W[0] for job, _ in items], [job.req.mode for job, _ in items],
                             [job.req.logprobs for job, _ in items])
        for (job, i), echo in zip(items, echoes):
            p = job.req.prompts[i]
            text = p if isinstance(p, str) else self.ens.experts[0].tokenizer.decode(p)
            job.put("prompt", i, {"prompt_units": job.prompt_units[i], "prompt_text": text, "echo": echo})


def _room(experts, needs: list[int], i: int, echo: bool) -> int | None:
    """New units that fit after prompt ``i`` in the smallest window; 400 when the prompt does not fit."""
    room = None
    for e, need in zip(experts, needs):
        if e.context_window is not None:
            r = e.context_window - need
            room = r if room is None else min(room, r)
            if r < 0 or (r == 0 and not echo):
                raise ApiError(400, f"prompt {i} needs {need} tokens of expert {e.name!r}, whose context "
                               f"window is {e.context_window}; shorten the prompt", "prompt",
                               "context_length_exceeded")
    return room


def _fits(expert, need: int, what: str) -> None:
    if expert.context_window is not None and need > expert.context_window:
        raise ApiError(400, f"{what} needs {need} tokens of expert {expert.name!r}, whose context window "
                       f"is {expert.context_window}; shorten it", "prompt", "context_length_exceeded")


def as_api_error(exc: Exception) -> ApiError:
    """The HTTP error for an exception raised while preparing or decoding a request."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ValueError):  # the library's input errors name the problem and the fix
        return ApiError(400, str(exc))
    if type(exc).__module__.startswith("jinja2"):  # a chat template refused the messages
        return ApiError(400, f"the chat template refused these messages: {exc}", "messages")
    traceback.print_exception(exc)
    return ApiError(500, f"internal error: {type(exc).__name__}: {exc}")

