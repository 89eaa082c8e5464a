"""LLM-as-judge: a model rates each response 1-10 ("Rating: N/10"); utility = mean rating.

Spec options (besides the common ones)::

    kind: judge
    data: human_phd_application.json   # {"prompt"} records
    judge: path/to/judge-model  # REQUIRED: a local model directory, or an OpenAI-compatible
                                # endpoint URL ("http://host:8000/v1", "URL#model"); also
                                # {model: DIR}, {url: URL, model: NAME}, {expert: INDEX_OR_NAME}
                                # (a pool expert, explicitly) or, in Python, a loaded expert
    judge_template: ...         # default: the paper's prompt, with {prompt} and {response}
    judge_max_new_tokens: 20    # the paper: 20 tokens, temperature 0
    judge_chat: false           # send the judge prompt as a chat user message
    max_new_tokens: 512         # responses (the paper: 512 tokens with the chat template)
    chat: true

The judge must be named: there is no default (the paper's judge was Gemini 1.5 Flash, outside
the pool). When the judge is one of the pool's experts (the same object, model directory or
endpoint), the first evaluation warns (:class:`SelfPreferenceWarning`): a model rating its own
mixture's outputs favours them. A pool expert judges alone (one-hot weights, at its own token
level). A reply without a parseable rating scores 1, as in the paper. Identical (prompt,
response) pairs, common when particles agree, are judged once, all in one batch, and every
reply is remembered across evaluations (``task.replies``); that memory is in
:meth:`JudgeTask.checkpoint_state`, so a resumed search asks the judge exactly what an
uninterrupted one asks.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import backend
from .base import GENERATION_OPTIONS, EvalResult, Task, register_kind
from .parsing import find_rating
from .records import Record, prompt_example
from .templates import JUDGE_TEMPLATE, check_template


class SelfPreferenceWarning(UserWarning):
    """The judge of a ``judge`` task is one of the experts being mixed."""


def judge_ref(value: Any) -> dict[str, Any]:
    """The spec's ``judge:`` as ``{"model": DIR}``, ``{"url": URL, "model": NAME|None}``,
    ``{"expert": INDEX_OR_NAME}`` or ``{"object": expert}``; a missing judge is an error."""
    if value is None:
        raise ValueError("a judge task needs judge: a local model directory or an endpoint URL "
                         "(http://host:port/v1, or URL#model) of the model that rates the responses; "
                         "{expert: INDEX} names a pool expert, which favours its own outputs")
    if isinstance(value, str):
        if backend.is_url(value):
            url, _, model = value.partition("#")
            return {"url": url, "model": model or None}
        return {"model": value}
    if isinstance(value, int) and not isinstance(value, bool):
        return {"expert": value}
    if isinstance(value, Mapping):
        keys = set(value) & {"expert", "model", "url"}
        if keys == {"expert"} or keys == {"url"} or keys == {"url", "model"}:
            return dict(value)
        if keys == {"model"}:
            m = str(value["model"])
            return judge_ref(m) if backend.is_url(m) else {"model": m}
        raise ValueError("judge must be a model directory, an endpoint URL, {model: DIR}, "
                         "{url: URL, model: NAME} or {expert: INDEX_OR_NAME}")
    if hasattr(value, "encode") and hasattr(value, "name"):
        return {"object": value}
    raise ValueError(f"judge must be a model directory or an endpoint URL, not {type(value).__name__}")


def _identity(expert: Any) -> tuple | None:
    """What makes two experts the same model: a resolved directory, or an endpoint and model."""
    try:
        d = expert.describe()
    except AttributeError:
        return None
    if d.get("path"):
        return ("path", str(Path(d["path"]).expanduser().resolve()))
    if d.get("url"):
        return ("url", str(d["url"]).rstrip("/"), d.get("model"))
    return None


def same_model(a: Any, b: Any) -> bool:
    """Whether experts ``a`` and ``b`` are the same model (object, directory or endpoint)."""
    if a is b or getattr(a, "inner", None) is b or getattr(b, "inner", None) is a:
        return True
    ia, ib = _identity(a), _identity(b)
    return ia is not None and ia == ib


@register_kind("judge", aliases=("llm_judge", "human"))
class JudgeTask(Task):
    """Mean 1-10 rating of each particle's responses by a judge model (see the module docstring)."""

    OPTIONS = Task.OPTIONS | GENERATION_OPTIONS | {"judge", "judge_template", "judge_max_new_tokens",
                                                   "judge_chat"}

    def __init__(self, spec, base_dir=None, data_dir=None):
        super().__init__(spec, base_dir, data_dir)
        self.judge = judge_ref(self.spec.get("judge"))
        self.template = str(self.spec.get("judge_template", JUDGE_TEMPLATE))
        check_template(self.template)
        try:
            self.template.format(prompt="", response="")
        except (KeyError, IndexError) as exc:
            raise ValueError(f"judge_template may use only {{prompt}} and {{response}}, not {exc}") from None
        self.gen = backend.GenerationSettings.from_spec(self.spec, max_new_tokens=512, chat=True)
        self.judge_gen = backend.GenerationSettings(
            max_new_tokens=int(self.spec.get("judge_max_new_tokens", 20)), temperature=0.0,
            seed=0, chat=bool(self.spec.get("judge_chat", False)), max_rows=self.gen.max_rows)
        self._judge_model: Any = self.judge.get("object")
        #: Judge prompt -> reply, for every prompt judged so far (checkpointed).
        self.replies: dict[str, str] = {}
        #: Judge prompts actually sent to the judge model (not answered from ``replies``).
        self.judge_calls = 0
        self._warned = False

    def normalise(self, raw: Record) -> Record:
        """A raw record as ``{prompt}``."""
        return prompt_example(raw, self.fields)

    def judge_expert(self, pool: backend.Pool) -> Any:
        """The judge: a pool expert (``{expert: ...}``) or a model loaded once from its directory
        or endpoint; warns once when it is one of the pool's experts."""
        if "expert" in self.judge:
            judge = self._pool_expert(pool, self.judge["expert"])
        else:
            if self._judge_model is None:
                self._judge_model = backend.load_expert(**self._judge_location())
            judge = self._judge_model
        if not self._warned and any(same_model(judge, e) for e in pool.experts):
            self._warned = True
            warnings.warn(f"task {self.name!r}: the judge {getattr(judge, 'name', judge)!r} is one of the "
                          "experts being mixed, so it rates its own outputs (self-preference); name a "
                          "model outside the pool with judge: for an unbiased utility",
                          SelfPreferenceWarning, stacklevel=3)
        return judge

    def _judge_location(self) -> dict[str, Any]:
        if "url" in self.judge:
            return {"path_or_url": self.judge["url"], "model": self.judge.get("model")}
        path = str(self.judge["model"])
        if self.base_dir is not None and not Path(path).expanduser().is_absolute():
            cand = self.base_dir / path
            path = str(cand) if cand.exists() else path
        return {"path_or_url": path}

    @staticmethod
    def _pool_expert(pool: backend.Pool, ref: Any) -> Any:
        if isinstance(ref, int) or str(ref).lstrip("-").isdigit():
            i = int(ref)
            if not -len(pool.experts) <= i < len(pool.experts):
                raise ValueError(f"judge expert index {i} is out of range for {len(pool.experts)} experts")
            return pool.experts[i]
        names = [getattr(e, "name", None) for e in pool.experts]
        if ref not in names:
            raise ValueError(f"no expert named {ref!r} in the pool; experts: {names}")
        return pool.experts[names.index(ref)]

    def checkpoint_state(self):
        """The judge's replies so far (prompt -> reply), in the order they were first asked."""
        return {"replies": [[k, v] for k, v in self.replies.items()]}

    def restore_state(self, state):
        """Take back the replies of a checkpoint (replacing those held now)."""
        if "replies" in state:
            self.replies = {str(k): str(v) for k, v in state["replies"]}

    def rate(self, pool: backend.Pool, prompts: list[str], responses: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Judge (prompt, response) pairs: (ratings, parse failure flags), distinct pairs once."""
        pairs = list(zip(prompts, responses, strict=True))
        distinct = list(dict.fromkeys(pairs))
        texts = {pair: self.template.format(prompt=pair[0], response=pair[1]) for pair in distinct}
        judge_pool = backend.Pool([self.judge_expert(pool)], np.ones((1, 1)), "probs")
        ask = list(dict.fromkeys(t for t in texts.values() if t not in self.replies))
        if ask:
            replies = backend.generate_rows(self.cache, judge_pool, ask, self.judge_gen)[0]
            self.replies.update(zip(ask, replies, strict=True))
            self.judge_calls += len(ask)
        by_pair = {pair: self.replies[text] for pair, text in texts.items()}
        found = [find_rating(by_pair[pair]) for pair in pairs]
        # A reply without a rating scores 1, the worst, as in the paper.
        ratings = np.array([1.0 if r is None else r for r in found])
        return ratings, np.array([r is None for r in found])

    def _evaluate(self, pool, split, allow_test):
        exs = self.examples(split)
        prompts = [e["prompt"] for e in exs]
        outputs = backend.generate_rows(self.cache, pool, prompts, self.gen)
        P, n = len(outputs), len(exs)
        ratings, failed = self.rate(pool, prompts * P, [o for row in outputs for o in row])
        ratings, failed = ratings.reshape(P, n), failed.reshape(P, n)
        return EvalResult(ratings.mean(1), {"rating": ratings.mean(1), "unparsed": failed.mean(1)},
                          split, n, per_example=ratings, outputs=outputs)
