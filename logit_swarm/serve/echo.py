"""Prompt scores for ``echo``: the log-probability of every prompt unit given the ones before it.

Token units: the prompt's token ids exactly as given (or as encoded), teacher-forced through
each expert once, then mixed per position with the request's weights.

Byte units: the library's own byte-level scores (:meth:`~logit_swarm.Ensemble.table` of the
pair ``("", prompt)``, align/bytes.py): the value at byte t is log p(byte_t | bytes_<t) from the
empty text. So summing the echoed values over a continuation's bytes gives exactly what
:meth:`~logit_swarm.Ensemble.logprob` computes for (context, continuation) once byte scores are
independent of where the context ends (one definition for the library, search and server).
A prompt sent as byte ids starting with the STOP unit (256, the byte tokenizer's BOS/EOS, which
lm-eval puts in front of a text it scores from its start) gets the first byte's score as well.
"""

from __future__ import annotations

import numpy as np
import torch

from ..align.bytes import STOP
from ..mixing import mix_logprobs
from .engine import topk


def echo_scores(ens, decoder, token_ids, prompts, bos, weights, modes, ks) -> list[dict]:
    """Per prompt ``{"units", "logprobs", "tops", "offsets"}``; the first unit's entries are None.

    ``decoder``: the :class:`~logit_swarm.serve.engine.StepDecoder` whose text rules give the
    ``text_offset`` of every unit.

    ``token_ids``: per prompt the ids (token units); ``prompts``: the texts (byte units);
    ``bos``: whether a byte prompt started with the STOP unit; ``ks``: top-k per prompt (None =
    no log-probs wanted).
    """
    if ens.unit == "token":
        out = _token_echo(ens.experts, token_ids, weights, modes, ks)
    else:
        out = _byte_echo(ens, prompts, bos, weights, modes, ks)
    for o, k in zip(out, ks):
        o["offsets"] = decoder.prefix_lengths(o["units"]) if k is not None else None
    return out


def _token_echo(experts, seqs, weights, modes, ks) -> list[dict]:
    todo = [j for j, (s, k) in enumerate(zip(seqs, ks)) if k is not None and len(s) >= 2]
    dists = _teacher_forced(experts, [seqs[j] for j in todo])
    out = []
    for j, s in enumerate(seqs):
        lps, tops = [None] * len(s), [None] * len(s)
        if j in todo:
            d = dists[todo.index(j)]  # [N, T-1, V]
            mixed = mix_logprobs(d, np.tile(weights[j], (d.shape[1], 1)), modes[j])
            lps = [None] + mixed.gather(1, torch.tensor(s[1:])[:, None])[:, 0].tolist()
            tops = [None] + [topk(mixed[t], ks[j]) for t in range(mixed.shape[0])]
        out.append({"units": list(s), "logprobs": lps, "tops": tops})
    return out


def _teacher_forced(experts, seqs: list[list[int]]) -> list[torch.Tensor]:
    """Per sequence ``[N, len-1, V]``: each expert's next-token log-probs after ids[:1] ... ids[:-1]."""
    if not seqs:
        return []
    per_expert = []
    for e in experts:
        nodes, first = e.prefill([s[:1] for s in seqs])
        try:
            feed = [s[1:-1] for s in seqs]
            more = [i for i, f in enumerate(feed) if f]
            rest = dict(zip(more, e.score_chunks([nodes[i] for i in more], [feed[i] for i in more]) if more else []))
            per_expert.append([torch.cat([first[i:i + 1]] + ([rest[i]] if i in rest else []), 0).double().cpu()
                               for i in range(len(seqs))])
        finally:
            for nid in nodes:
                e.store.release(nid)
    return [torch.stack([pe[i] for pe in per_expert]) for i in range(len(seqs))]


def _byte_echo(ens, prompts, bos, weights, modes, ks) -> list[dict]:
    todo = [j for j, k in enumerate(ks) if k is not None and (len(prompts[j].encode("utf-8")) >= 2 or bos[j])]
    table = None
    if todo:
        keep_full = any(ks[j] != 0 or modes[j] == "logits" for j in todo)
        table = ens.table([""] * len(todo), [prompts[j] for j in todo], keep_full=keep_full)
        ends = np.cumsum(table.num_units)
    out = []
    for j, p in enumerate(prompts):
        units = ([STOP] if bos[j] else []) + list(p.encode("utf-8"))
        lps, tops = [None] * len(units), [None] * len(units)
        if j in todo:
            t = todo.index(j)
            sl = slice(int(ends[t] - table.num_units[t]), int(ends[t]))
            scores = table.unit_scores(np.asarray(weights[j])[None], modes[j])[0, sl]
            first = 0 if bos[j] else 1  # without the STOP marker nothing conditions the first byte
            lps = [None] + scores[first:].tolist()
            if ks[j] == 0 or not len(scores):
                tops = [None] + [[] for _ in scores[first:]]
            else:
                full = torch.as_tensor(table.full[sl][first:]).permute(1, 0, 2)  # [N, T, 257]
                mixed = mix_logprobs(full, np.tile(weights[j], (full.shape[1], 1)), modes[j])
                tops = [None] + [topk(mixed[i], ks[j]) for i in range(mixed.shape[0])]
        out.append({"units": units, "logprobs": lps, "tops": tops})
    return out
