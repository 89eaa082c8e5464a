"""Multiple choice: accuracy by generation + the paper's parser, or by log-likelihood.

Spec options (besides the common ones)::

    kind: multiple_choice
    scoring: generate          # generate (paper) | loglik_per_byte | loglik  (MC_SCORINGS)
    prompt: "{prompt}"         # a format template, e.g. "Q: {question}\\n{choices}\\nA:", or
                               # paper (the paper's template). Default: the prompt as written
                               # (lm-eval's convention); paper for the paper's tasks and files
    instruction: "Please choose an option that best answers the question."   # paper prompt only
    icl_prompt: from_data      # few-shot prefix: from_data (the file's icl_prompt) | a string | null
    target: text               # loglik: score the option text, or its label (label)
    separator: " "             # loglik: put between prompt and option; a whitespace separator
                               # is left out when the prompt ends with whitespace or the option
                               # starts with it (never doubled). "" joins them as they are
    max_new_tokens: 10         # generate: the paper's 10 tokens, greedy

``generate`` decodes every (particle, question) row in shared batches and parses the answer
exactly as the paper does (a label in the first 5 characters, else in the last 5, else an
option text as a substring; otherwise wrong). The ``loglik`` scorings never decode: each
option's log-probability comes from the per-expert table, built once per split, so any number of
particles after the first costs no forward pass. Ties between best options split the credit.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from . import backend
from .base import GENERATION_OPTIONS, EvalResult, Task, register_kind
from .metrics import choice_credit
from .parsing import parse_choice_paper
from .records import Record, mc_example
from .registry import Registry
from .templates import PAPER_INSTRUCTION, check_template, join_continuation, paper_mc_prompt, render

MCScoring = Callable[["MultipleChoiceTask", backend.Pool, str, list[Record]], EvalResult]
#: How a multiple-choice question is answered: generate + parse, or compare option likelihoods.
MC_SCORINGS: Registry[MCScoring] = Registry("multiple-choice scoring")


@register_kind("multiple_choice", aliases=("mc", "multiple-choice"))
class MultipleChoiceTask(Task):
    """Accuracy on multiple-choice questions (see the module docstring for the spec)."""

    OPTIONS = Task.OPTIONS | GENERATION_OPTIONS | {"scoring", "prompt", "instruction",
                                                   "icl_prompt", "target", "separator"}
    DEFAULT_SCORING = "generate"

    def __init__(self, spec, base_dir=None, data_dir=None):
        super().__init__(spec, base_dir, data_dir)
        self.scoring_name = MC_SCORINGS.canonical(self.spec.get("scoring", self.DEFAULT_SCORING))
        self.scoring = MC_SCORINGS.get(self.scoring_name)
        # lm-eval's convention: the prompt as written; files in the paper's format keep its template.
        default_prompt = "paper" if self.data is not None and self.data.paper_format else "{prompt}"
        self.prompt = self.spec.get("prompt", default_prompt)
        if self.prompt != "paper":
            check_template(str(self.prompt))
        self.instruction = self.spec.get("instruction", PAPER_INSTRUCTION)
        icl = self.spec.get("icl_prompt", "from_data")
        self.icl_prompt = self.data.extras.get("icl_prompt") if icl == "from_data" else icl
        self.target = self.spec.get("target", "text")
        if self.target not in ("text", "label"):
            raise ValueError(f"target must be 'text' or 'label', got {self.target!r}")
        self.separator = str(self.spec.get("separator", " "))
        self.gen = backend.GenerationSettings.from_spec(self.spec, max_new_tokens=10)

    def normalise(self, raw: Record) -> Record:
        """A raw record as ``{prompt, labels, choices, answer}``."""
        return mc_example(raw, self.fields)

    def build_prompt(self, ex: Record) -> str:
        """The text shown to the experts for example ``ex``."""
        if self.prompt == "paper":
            return paper_mc_prompt(ex["prompt"], ex["labels"], ex["choices"],
                                   instruction=self.instruction, icl_prompt=self.icl_prompt)
        return render(str(self.prompt), ex)

    def _evaluate(self, pool, split, allow_test):
        exs = self.examples(split)
        return self.scoring(self, pool, split, exs)

    def option_pairs(self, split: str = "dev") -> tuple[list[str], list[str], list[int]]:
        """What the loglik scorings score on ``split``: (contexts, continuations, options per
        question), one (context, continuation) pair per option, in question order."""
        return _option_pairs(self, split, self.examples(split))

    def solved(self, scores):
        """A question is solved with full credit (a tie between best options is not)."""
        return np.asarray(scores) >= 1.0 - 1e-9


def parse_and_grade(exs: list[Record], outputs: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
    """Parse every output with the paper's rule: (correct [P, n], unparsed [P, n]) as floats."""
    P, n = len(outputs), len(exs)
    correct = np.zeros((P, n))
    unparsed = np.zeros((P, n))
    for p, row in enumerate(outputs):
        for i, (ex, out) in enumerate(zip(exs, row, strict=True)):
            label = parse_choice_paper(out, ex["labels"], ex["choices"])
            unparsed[p, i] = label is None
            correct[p, i] = label == ex["labels"][ex["answer"]]
    return correct, unparsed


@MC_SCORINGS.register("generate")
def score_by_generation(task: MultipleChoiceTask, pool, split, exs) -> EvalResult:
    """Greedy generation (10 tokens by default) parsed with the paper's rule."""
    prompts = [task.build_prompt(ex) for ex in exs]
    outputs = backend.generate_rows(task.cache, pool, prompts, task.gen)
    correct, unparsed = parse_and_grade(exs, outputs)
    acc = correct.mean(1)
    return EvalResult(acc, {"accuracy": acc, "unparsed": unparsed.mean(1)}, split, len(exs),
                      per_example=correct, outputs=outputs)


def _option_pairs(task: MultipleChoiceTask, split, exs) -> tuple[list[str], list[str], list[int]]:
    """(contexts, continuations, options per example) of a split, rendered once per example
    list: a search evaluates the same split every iteration, and rendering the prompts again
    would cost more than reading the likelihood table."""
    memo = task.__dict__.setdefault("_option_pairs_memo", {})
    hit = memo.get((split, id(exs)))
    if hit is not None and hit[0] is exs:  # the cached entry keeps exs alive, so ids cannot clash
        return hit[1]
    contexts: list[str] = []
    conts: list[str] = []
    counts = []
    for ex in exs:
        prompt = task.build_prompt(ex)
        options = ex["choices"] if task.target == "text" else ex["labels"]
        # By default a space joins the option to the prompt as a separate word, as in lm-eval,
        # unless one side already carries the whitespace.
        for opt in options:
            contexts.append(prompt)
            conts.append(join_continuation(prompt, task.separator, opt))
        counts.append(len(options))
    memo[(split, id(exs))] = (exs, (contexts, conts, counts))
    return contexts, conts, counts


def option_logprobs(task: MultipleChoiceTask, pool, split, exs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per option log P(separator + target | prompt): ([P, n, C] nats, [n, C] bytes, [n, C] valid)."""
    contexts, conts, counts = _option_pairs(task, split, exs)
    lp, nbytes = backend.pair_logprobs(task.cache, pool, f"{task.name}/{split}/mc",
                                       contexts, conts)
    P, n, C = pool.W.shape[0], len(exs), max(counts)
    # (question, option) of every flat pair, scattered in one step per array.
    qi = np.repeat(np.arange(n), counts)
    oi = np.arange(len(qi)) - np.repeat(np.cumsum(counts) - np.asarray(counts), counts)
    scores = np.full((P, n, C), -np.inf)
    scores[:, qi, oi] = lp
    nb = np.ones((n, C))
    nb[qi, oi] = np.maximum(nbytes, 1)
    valid = np.zeros((n, C), bool)
    valid[qi, oi] = True
    return scores, nb, valid


def _loglik_result(exs, scores, valid, split) -> EvalResult:
    answer = np.array([ex["answer"] for ex in exs])
    credit = choice_credit(scores, answer, valid)
    acc = credit.mean(1)
    return EvalResult(acc, {"accuracy": acc}, split, len(exs), per_example=credit)


@MC_SCORINGS.register("loglik_per_byte", aliases=("loglik-norm", "acc_norm"))
def score_by_loglik_per_byte(task: MultipleChoiceTask, pool, split, exs) -> EvalResult:
    """The option with the highest log-likelihood per UTF-8 byte wins (fair across lengths and
    tokenizers)."""
    scores, nb, valid = option_logprobs(task, pool, split, exs)
    return _loglik_result(exs, scores / nb[None], valid, split)


@MC_SCORINGS.register("loglik", aliases=("loglik-raw", "acc"))
def score_by_loglik(task: MultipleChoiceTask, pool, split, exs) -> EvalResult:
    """The option with the highest total log-likelihood wins (favours short options)."""
    scores, _, valid = option_logprobs(task, pool, split, exs)
    return _loglik_result(exs, scores, valid, split)
