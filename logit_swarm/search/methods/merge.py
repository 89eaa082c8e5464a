"""Weight-space merges (the paper's SLERP baseline), run for real on the model weights.

A merge needs experts that share one architecture, one tokenizer and every parameter's shape (on
the zoo: facts_a and facts_b, two Llamas). Otherwise the method is absent with the reason
"n/a (architectures differ)" -- there is no mixing-space analogue of interpolating weights.

``slerp``  spherical linear interpolation of two experts' weights, per tensor (mergekit's rule:
           interpolate the directions, fall back to linear when they are nearly parallel), with
           the interpolation factor t chosen on dev from :data:`SLERP_TS`; the merged model is one
           new expert, evaluated alone.

Its evaluations (one per t on dev) are model builds, not mixing-weight utilities, so the row
shows no evaluation count.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from logit_swarm.experts.hf import HFExpert

from .base import MethodInfo, MethodUnavailable, OutputResult, register_method

__all__ = ["SLERP_TS", "slerp_tensor", "merge_compatible", "slerp_expert", "run_slerp"]

#: Interpolation factors tried on dev (0 = the first expert, 1 = the second).
SLERP_TS = (0.25, 0.5, 0.75)


def slerp_tensor(a: torch.Tensor, b: torch.Tensor, t: float, eps: float = 1e-8) -> torch.Tensor:
    """SLERP between two tensors of one shape, treated as flat vectors (float64 inside)."""
    x, y = a.double().flatten(), b.double().flatten()
    nx, ny = x.norm(), y.norm()
    if nx < eps or ny < eps:
        return ((1 - t) * a.double() + t * b.double()).to(a.dtype)
    cos = torch.clamp(torch.dot(x / nx, y / ny), -1.0, 1.0)
    omega = torch.arccos(cos)
    if omega.abs() < 1e-4:  # nearly parallel: linear interpolation is the limit
        out = (1 - t) * x + t * y
    else:
        so = torch.sin(omega)
        out = torch.sin((1 - t) * omega) / so * x + torch.sin(t * omega) / so * y
    return out.reshape(a.shape).to(a.dtype)


def merge_compatible(experts: Any) -> str | None:
    """None if the experts can be merged in weight space, else why not."""
    if not all(isinstance(e, HFExpert) for e in experts):
        return "n/a (weight-space merges need local HF models)"
    if len({type(e.model) for e in experts}) > 1 or len({e.fingerprint for e in experts}) > 1:
        return "n/a (architectures differ)"
    if len(experts) != 2:
        return f"n/a (SLERP merges two experts; the pool has {len(experts)})"
    a, b = experts
    sa, sb = a.model.state_dict(), b.model.state_dict()
    if sa.keys() != sb.keys() or any(sa[k].shape != sb[k].shape for k in sa):
        return "n/a (architectures differ)"
    return None


def slerp_expert(experts: Any, t: float) -> HFExpert:
    """A new expert whose weights are the SLERP of the two experts' weights at ``t``."""
    a, b = experts
    sa, sb = a.model.state_dict(), b.model.state_dict()
    model = copy.deepcopy(a.model)
    model.load_state_dict({k: slerp_tensor(sa[k], sb[k], t) if sa[k].is_floating_point() else sa[k] for k in sa})
    return HFExpert(model, a.tokenizer, name=f"slerp({a.name},{b.name},{t:g})")


def run_slerp(task: Any, experts: Any, split: str, mode: str, allow_test: bool,
              tuned: Mapping[str, Any] | None) -> OutputResult:
    """The :class:`~.base.OutputMethod`: t chosen on dev, the merged expert evaluated alone."""
    why = merge_compatible(experts)
    if why is not None:
        raise MethodUnavailable(why)
    details: dict[str, Any] = {}
    if tuned is None:
        tried = {}
        for t in SLERP_TS:
            tried[t] = float(task.evaluate([slerp_expert(experts, t)], np.ones((1, 1)), split=split)[0])
        t_best = max(tried, key=lambda k: tried[k])  # first of equal utilities
        details["t_search"] = {str(k): v for k, v in tried.items()}
    else:
        t_best = float(tuned["t"])
    r = task.evaluate_detailed([slerp_expert(experts, t_best)], np.ones((1, 1)), split=split, allow_test=allow_test)
    per = None if r.per_example is None else np.asarray(r.per_example)[0]
    details.update(t=t_best, tuned={"t": t_best})
    return OutputResult(float(r.utility[0]), per, details, summary=f"SLERP weights, t {t_best:g}")


register_method(MethodInfo(
    name="slerp", label="SLERP (weight merge)", family="merge", kind="output", run=run_slerp,
    mapping="SLERP: the two experts' weights interpolated on the sphere per tensor, for real; n/a when "
            "architectures differ (no mixing-space analogue)."))
