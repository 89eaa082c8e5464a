"""AbstainQA: answer a multiple-choice question, then decide whether to stand by the answer.

The paper's two-step procedure (``evaluate.py``, run on the MMLU split):

1. the multiple-choice prompt, 10 new tokens, parsed like any multiple-choice answer;
2. the self-check prompt ``prompt + "\\nProposed answer: " + output + "\\nIs the proposed answer
   true or false? Directly answer with true or false."``, 10 new tokens; the model abstains
   when its reply contains "false".

Utility: effective reliability, (answered correctly − answered wrongly) / N, in [−1, 1].
Both steps decode all (particle, question) rows in shared batches; each particle checks its
own answer with its own weights. The spec takes the multiple-choice options
(``prompt``, ``instruction``, ``icl_prompt``, ``max_new_tokens``) and ``check_max_new_tokens``.
"""

from __future__ import annotations

import numpy as np

from . import backend
from .base import EvalResult, register_kind
from .metrics import effective_reliability
from .multiple_choice import MultipleChoiceTask, parse_and_grade
from .parsing import says_false
from .templates import ABSTAIN_SUFFIX


def self_check_prompt(prompt: str, output: str) -> str:
    """The paper's self-check prompt for a proposed answer."""
    return prompt + "\nProposed answer: " + output + ABSTAIN_SUFFIX


@register_kind("abstain", aliases=("abstainqa",))
class AbstainTask(MultipleChoiceTask):
    """Effective reliability with self-checked abstention (see the module docstring)."""

    OPTIONS = (MultipleChoiceTask.OPTIONS - {"scoring", "target", "separator"}) | {"check_max_new_tokens"}

    def __init__(self, spec, base_dir=None, data_dir=None):
        super().__init__(spec, base_dir, data_dir)
        self.check_gen = backend.GenerationSettings.from_spec(
            {**self.spec, "max_new_tokens": self.spec.get("check_max_new_tokens", 10)})

    def solved(self, scores):
        """Solved: answered (not abstained) and correct (per-question score +1)."""
        return np.asarray(scores) > 0

    def _evaluate(self, pool, split, allow_test):
        exs = self.examples(split)
        prompts = [self.build_prompt(ex) for ex in exs]
        outputs = backend.generate_rows(self.cache, pool, prompts, self.gen)
        correct, unparsed = parse_and_grade(exs, outputs)
        P, n = correct.shape
        # Step 2 is one batch of P x n rows; row (p, i) carries particle p's weights, so every
        # particle judges its own answer with its own mixture.
        checks = [self_check_prompt(pr, out) for row in outputs for pr, out in zip(prompts, row, strict=True)]
        checked = backend.generate_flat(self.cache, pool, checks, np.repeat(pool.W, n, axis=0),
                                        self.check_gen)
        abstain = np.array([says_false(r) for r in checked]).reshape(P, n)
        util = effective_reliability(correct.astype(bool), abstain)
        answered = ~abstain
        ans_acc = np.where(answered.sum(1) > 0,
                           (correct * answered).sum(1) / np.maximum(answered.sum(1), 1), 0.0)
        parts = {"accuracy": correct.mean(1), "abstain_rate": abstain.mean(1),
                 "answered_accuracy": ans_acc, "unparsed": unparsed.mean(1)}
        return EvalResult(util, parts, split, n, per_example=np.where(abstain, 0.0, 2 * correct - 1),
                          outputs=outputs)
