"""Prompt templates: the paper's exact multiple-choice prompt, and ``str.format`` templates.

A spec's ``prompt:`` is either ``paper`` (multiple-choice kinds) or a format string over the
example's fields: ``{prompt}`` (alias ``{question}``), ``{choices}`` (the options as
``"A: text"`` lines), ``{labels}`` (``"A, B, C"``) and any field of the raw record.
Write ``{{`` and ``}}`` for literal braces.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from typing import Any

#: The paper's instruction line for multiple-choice questions (``evaluate.py``).
PAPER_INSTRUCTION = "Please choose an option that best answers the question."
#: The paper's instruction line for HellaSwag.
PAPER_INSTRUCTION_COMPLETE = "Please choose an option that best completes the sentence."
#: The paper's AbstainQA self-check, appended after the proposed answer.
ABSTAIN_SUFFIX = "\nIs the proposed answer true or false? Directly answer with true or false."
#: The paper's LLM-judge prompt. The paper's string literal also contains a stray " + " and four
#: spaces (a line-continuation slip in ``gemini_eval``); this is the intended text without them.
JUDGE_TEMPLATE = (
    "For the following instruction and response, please rate the response on a scale of 1 to 10, "
    "where 1 is the worst and 10 is the best. Please respond with \"Rating: ?/10\" first and then "
    "provide your reason.\n\nInstruction: {prompt}\n\nResponse: {response}"
)


def paper_mc_prompt(question: str, labels: Sequence[str], texts: Sequence[str],
                    instruction: str | None = PAPER_INSTRUCTION, icl_prompt: str | None = None) -> str:
    """The paper's multiple-choice prompt, byte for byte::

        [icl_prompt + "\\n"][instruction + "\\n"]Question: <question>
        A: <option A>
        ...
        The answer is

    Knowledge Crosswords uses ``instruction=None`` and its file's ``icl_prompt``.
    """
    prompt = "Question: " + question + "\n"
    if instruction:
        prompt = instruction + "\n" + prompt
    for label, text in zip(labels, texts, strict=True):
        prompt += label + ": " + text + "\n"
    prompt += "The answer is"
    if icl_prompt:
        prompt = icl_prompt + "\n" + prompt
    return prompt


def join_continuation(context: str, separator: str, continuation: str) -> str:
    """What is scored after ``context``: ``separator + continuation``, except that a whitespace
    separator is dropped when the context already ends with whitespace or the continuation
    already starts with it (lm-eval's convention: whitespace is never doubled)."""
    if separator and separator.isspace() and (context[-1:].isspace() or continuation[:1].isspace()):
        return continuation
    return separator + continuation


def choice_lines(labels: Sequence[str], texts: Sequence[str]) -> str:
    """Options as ``"A: text"`` lines joined by newlines (no trailing newline)."""
    return "\n".join(f"{label}: {text}" for label, text in zip(labels, texts, strict=True))


class _Fields(dict):
    def __missing__(self, key: str) -> Any:
        raise ValueError(
            f"prompt template uses {{{key}}}, but the example has no such field; "
            f"available: {', '.join('{' + k + '}' for k in sorted(self))}"
        )


def template_fields(example: Mapping[str, Any]) -> dict[str, Any]:
    """The names a template may use for ``example`` (raw record fields, then canonical ones)."""
    raw = example.get("raw") or {}
    out: dict[str, Any] = {k: v for k, v in raw.items() if isinstance(k, str)}
    for key in ("prompt", "context", "target", "answer"):
        if key in example:
            out[key] = example[key]
    if "prompt" in example:
        out["question"] = example["prompt"]
    if "choices" in example:
        out["choices"] = choice_lines(example["labels"], example["choices"])
        out["labels"] = ", ".join(example["labels"])
        if "answer" in example:
            out["answer"] = example["labels"][example["answer"]]
    return out


def render(template: str, example: Mapping[str, Any]) -> str:
    """Fill a ``str.format`` template from ``example`` (see the module docstring)."""
    return string.Formatter().vformat(template, (), _Fields(template_fields(example)))


def check_template(template: str) -> None:
    """Raise ``ValueError`` early when ``template`` is not a valid format string."""
    try:
        list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"bad prompt template {template!r}: {exc}. Write {{{{ for a literal brace") from None
