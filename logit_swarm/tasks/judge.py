"""LLM-as-judge: a model rates each response 1-10 ("Rating: N/10"); utility = mean rating.

Spec options (besides the common ones)::

    kind: judge
    data: human_phd_application.json   # {"prompt"} records
    judge: {expert: 0}          # an expert of the pool, by index or name (run with one-hot
                                # weights), or {model: DIR}: a local expert loaded by
                                # logit_swarm.load_expert
    judge_template: ...         # default: the paper's prompt, with {prompt} and {response}
    judge_max_new_tokens: 20    # the paper: 20 tokens, temperature 0
    judge_chat: false           # send the judge prompt as a chat user message
    max_new_tokens: 512         # responses (the paper: 512 tokens with the chat template)
    chat: true

The paper's judge was Gemini 1.5 Flash; here it is any local model. A pool expert judges alone,
which is the pool's ensemble with one-hot weights on it (run at the expert's own token level,
exact and cheaper than the pool's byte level). A reply without a parseable rating scores 1, as
in the paper. Identical (prompt, response) pairs, common when particles agree, are judged once,
all in one batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from . import backend
from .base import GENERATION_OPTIONS, EvalResult, Task, register_kind
from .parsing import find_rating
from .records import Record, prompt_example
from .templates import JUDGE_TEMPLATE, check_template


@register_kind("judge", aliases=("llm_judge", "human"))
class JudgeTask(Task):
    """Mean 1-10 rating of each particle's responses by a judge model (see the module docstring)."""

    OPTIONS = Task.OPTIONS | GENERATION_OPTIONS | {"judge", "judge_template", "judge_max_new_tokens",
                                                   "judge_chat"}

    def __init__(self, spec, base_dir=None, data_dir=None):
        super().__init__(spec, base_dir, data_dir)
        judge = self.spec.get("judge", {"expert": 0})
        if isinstance(judge, (int, str)) and not isinstance(judge, bool):
            judge = {"expert": judge}
        if not isinstance(judge, Mapping) or len(set(judge) & {"expert", "model"}) != 1:
            raise ValueError("judge must be {expert: INDEX_OR_NAME} or {model: DIR}")
        self.judge = dict(judge)
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
        self._judge_model: Any = None

    def normalise(self, raw: Record) -> Record:
        """A raw record as ``{prompt}``."""
        return prompt_example(raw, self.fields)

    def judge_expert(self, pool: backend.Pool) -> Any:
        """The judge: an expert of the pool (index or name) or a locally loaded model."""
        if "model" in self.judge:
            if self._judge_model is None:
                import logit_swarm as ls

                path = self.judge["model"]
                if self.base_dir is not None and not str(path).startswith("/"):
                    cand = self.base_dir / str(path)
                    path = str(cand) if cand.exists() else path
                self._judge_model = ls.load_expert(path)
            return self._judge_model
        ref = self.judge["expert"]
        if isinstance(ref, int) or str(ref).lstrip("-").isdigit():
            i = int(ref)
            if not -len(pool.experts) <= i < len(pool.experts):
                raise ValueError(f"judge expert index {i} is out of range for {len(pool.experts)} experts")
            return pool.experts[i]
        names = [getattr(e, "name", None) for e in pool.experts]
        if ref not in names:
            raise ValueError(f"no expert named {ref!r} in the pool; experts: {names}")
        return pool.experts[names.index(ref)]

    def rate(self, pool: backend.Pool, prompts: list[str], responses: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Judge (prompt, response) pairs: (ratings, parse failure flags), distinct pairs once."""
        pairs = list(zip(prompts, responses, strict=True))
        distinct = list(dict.fromkeys(pairs))
        texts = [self.template.format(prompt=p, response=r) for p, r in distinct]
        judge_pool = backend.Pool([self.judge_expert(pool)], np.ones((1, 1)), "probs")
        replies = backend.generate_rows(self.cache, judge_pool, texts, self.judge_gen)[0]
        by_pair = {pair: reply for pair, reply in zip(distinct, replies, strict=True)}
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
