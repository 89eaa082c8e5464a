"""Engine events → OpenAI response bodies and server-sent event chunks (pure functions).

Events come from :mod:`logit_swarm.serve.scheduler`: ``("prompt", i, info)``, ``("step", row,
unit, logprob, top, delta, expert_logprobs, text_offset)``, ``("done", row, result)``, ``("end",)``.
"""

from __future__ import annotations

import json

from . import protocol as P


def _sse(obj) -> str:
    return "data: " + json.dumps(obj, ensure_ascii=False, allow_nan=False) + "\n\n"


def _gather(events) -> tuple[dict, dict]:
    prompts, done = {}, {}
    for ev in events:
        if ev[0] == "prompt":
            prompts[ev[1]] = ev[2]
        elif ev[0] == "done":
            done[ev[1]] = ev[2]
    return prompts, done


def _usage(served: P.ServedModel, prompts: dict, done: dict) -> dict:
    n_prompt = sum(p["prompt_units"] for p in prompts.values())
    n_out = sum(len(r["units"]) for r in done.values())
    return P.usage(n_prompt, n_out, served.usage_unit)


def completion_body(served: P.ServedModel, table: P.UnitTable, req: P.GenRequest, events) -> dict:
    """The ``text_completion`` body of a non-streamed request."""
    prompts, done = _gather(events)
    choices = []
    for row in range(req.n_rows):
        r, pinfo = done[row], prompts[row // req.n]
        text = r["text"]
        units, lps = list(r["units"]), list(r["logprobs"])
        tops = list(r["tops"] or [None] * len(units))
        offsets = list(r["offsets"] or [])
        if req.echo:
            echo, ptext = pinfo["echo"], pinfo["prompt_text"]
            text = ptext + text
            units, lps, tops = echo["units"] + units, echo["logprobs"] + lps, echo["tops"] + tops
            offsets = list(echo["offsets"] or []) + [len(ptext) + o for o in offsets]
        lp = None
        if req.logprobs is not None:
            lp = P.completion_logprobs(units, lps, tops, table, req.token_ids, offsets)
        c = {"index": row, "text": text, "logprobs": lp, "finish_reason": r["finish_reason"]}
        if req.expert_logprobs:
            c["expert_logprobs"] = r["expert_logprobs"]
        choices.append(c)
    return {"id": P.new_id(req.kind), "object": "text_completion", "created": P.now(), "model": served.name,
            "choices": choices, "usage": _usage(served, prompts, done)}


def chat_body(served: P.ServedModel, table: P.UnitTable, req: P.GenRequest, events) -> dict:
    """The ``chat.completion`` body of a non-streamed request."""
    prompts, done = _gather(events)
    choices = []
    for row in range(req.n_rows):
        r = done[row]
        lp = None
        if req.logprobs is not None:
            lp = P.chat_logprobs(r["units"], r["logprobs"], r["tops"], table, req.token_ids)
        c = {"index": row, "message": {"role": "assistant", "content": r["text"]}, "logprobs": lp,
             "finish_reason": r["finish_reason"]}
        if req.expert_logprobs:
            c["expert_logprobs"] = r["expert_logprobs"]
        choices.append(c)
    return {"id": P.new_id(req.kind), "object": "chat.completion", "created": P.now(), "model": served.name,
            "choices": choices, "usage": _usage(served, prompts, done)}


class _Stream:
    """State of one streamed answer: the chunk envelope, per-row text offsets, usage counts."""

    def __init__(self, served: P.ServedModel, table: P.UnitTable, req: P.GenRequest):
        self.served, self.table, self.req = served, table, req
        self.chat = req.kind == "chat"
        self.id, self.created = P.new_id(req.kind), P.now()
        self.obj = "chat.completion.chunk" if self.chat else "text_completion"
        self.echo_len = [0] * req.n_rows
        self.n_prompt, self.n_out = 0, 0

    def chunk(self, choices, usage=None) -> str:
        c = {"id": self.id, "object": self.obj, "created": self.created, "model": self.served.name,
             "choices": choices}
        if self.req.include_usage:
            c["usage"] = usage
        return _sse(c)

    def on_prompt(self, i: int, info: dict):
        req = self.req
        self.n_prompt += info["prompt_units"]
        if not req.echo:
            return
        echo = info["echo"]
        for row in range(i * req.n, (i + 1) * req.n):
            lp = None
            if req.logprobs is not None:
                lp = P.completion_logprobs(echo["units"], echo["logprobs"], echo["tops"], self.table, req.token_ids,
                                           echo["offsets"])
            self.echo_len[row] = len(info["prompt_text"])
            yield self.chunk([{"index": row, "text": info["prompt_text"], "logprobs": lp, "finish_reason": None}])

    def on_step(self, ev):
        _, row, unit, lp_val, top, delta, expert_lps, offset = ev
        req, lp = self.req, None
        if req.logprobs is not None:
            if self.chat:
                lp = P.chat_logprobs([unit], [lp_val], [top], self.table, req.token_ids)
            else:
                lp = P.completion_logprobs([unit], [lp_val], [top], self.table, req.token_ids,
                                           [self.echo_len[row] + offset])
        elif not delta and not req.expert_logprobs:
            return None
        c = {"index": row, "delta": {"content": delta}} if self.chat else {"index": row, "text": delta}
        c.update({"logprobs": lp, "finish_reason": None})
        if req.expert_logprobs:
            c["expert_logprobs"] = [expert_lps]
            c["unit"] = self.table.string(unit, req.token_ids)
        return self.chunk([c])

    def on_done(self, row: int, r: dict) -> str:
        self.n_out += len(r["units"])
        c = {"index": row, "delta": {}} if self.chat else {"index": row, "text": ""}
        c.update({"logprobs": None, "finish_reason": r["finish_reason"]})
        return self.chunk([c])


async def stream_chunks(served: P.ServedModel, table: P.UnitTable, req: P.GenRequest, first, events):
    """Server-sent events of a streamed request: ``first`` (already taken) then ``events``."""
    st = _Stream(served, table, req)
    if st.chat:
        for row in range(req.n_rows):
            yield st.chunk([{"index": row, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                             "finish_reason": None}])

    async def all_events():
        yield first
        async for ev in events:
            yield ev

    try:
        async for ev in all_events():
            if ev[0] == "prompt":
                for c in st.on_prompt(ev[1], ev[2]):
                    yield c
            elif ev[0] == "step":
                c = st.on_step(ev)
                if c is not None:
                    yield c
            elif ev[0] == "done":
                yield st.on_done(ev[1], ev[2])
        if req.include_usage:
            yield st.chunk([], P.usage(st.n_prompt, st.n_out, served.usage_unit))
    except P.ApiError as err:
        yield _sse(err.body())
    yield "data: [DONE]\n\n"
