"""Exact match: generate an answer, extract it, compare with the gold string.

Spec options (besides the common ones)::

    kind: exact_match
    prompt: "{prompt}"       # format template; the paper sends the raw question
    match: auto              # a registered matcher (parsing.MATCHERS): substring (paper NLGraph),
                             # paper_gsm8k (last 5/10 words, substring), last_number, yes_no,
                             # exact, auto (yes/no -> yes_no, number -> last_number, else exact)
    max_new_tokens: 10       # the paper: 10, and 200 for GSM8K

Utility: the fraction of examples matched. Every (particle, question) row is decoded in shared
batches.
"""

from __future__ import annotations

import numpy as np

from . import backend
from .base import GENERATION_OPTIONS, EvalResult, Task, register_kind
from .parsing import MATCHERS
from .records import Record, em_example
from .templates import check_template, render


@register_kind("exact_match", aliases=("em", "exact-match"))
class ExactMatchTask(Task):
    """Accuracy of generated answers under a registered matcher (see the module docstring)."""

    OPTIONS = Task.OPTIONS | GENERATION_OPTIONS | {"prompt", "match"}

    def __init__(self, spec, base_dir=None, data_dir=None):
        super().__init__(spec, base_dir, data_dir)
        self.prompt = str(self.spec.get("prompt", "{prompt}"))
        check_template(self.prompt)
        self.match_name = MATCHERS.canonical(self.spec.get("match", "auto"))
        self.matcher = MATCHERS.get(self.match_name)
        self.gen = backend.GenerationSettings.from_spec(self.spec, max_new_tokens=10)

    def normalise(self, raw: Record) -> Record:
        """A raw record as ``{prompt, answer}``."""
        return em_example(raw, self.fields)

    def build_prompt(self, ex: Record) -> str:
        """The text shown to the experts for example ``ex``."""
        return render(self.prompt, ex)

    def grade(self, exs: list[Record], outputs: list[list[str]], split: str) -> np.ndarray:
        """[P, n] 1.0 where the matcher accepts the output, else 0.0."""
        return np.array([[float(self.matcher(out, ex["answer"], split)) for ex, out in zip(exs, row, strict=True)]
                         for row in outputs])

    def solved(self, scores):
        """A question is solved when its answer matched."""
        return np.asarray(scores) >= 1.0 - 1e-9

    def _evaluate(self, pool, split, allow_test):
        exs = self.examples(split)
        outputs = backend.generate_rows(self.cache, pool, [self.build_prompt(e) for e in exs], self.gen)
        correct = self.grade(exs, outputs, split)
        acc = correct.mean(1)
        empty = np.array([[not o for o in row] for row in outputs], dtype=float).mean(1)
        return EvalResult(acc, {"accuracy": acc, "empty": empty}, split, len(exs),
                          per_example=correct, outputs=outputs)
