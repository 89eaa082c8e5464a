"""The Model Swarms paper's tasks, by name, on its own dev/test files.

The files are the paper repository's ``data/eval/*.json`` (``{"dataset", "dev", "test"}``),
found in ``DATA_DIR/model_swarm_eval/`` or ``DATA_DIR/`` itself, where ``DATA_DIR`` is the
``data_dir`` argument or ``$LOGIT_SWARM_DATA``. Settings follow ``evaluate.py`` at commit
63e6404: greedy decoding with no chat template; multiple choice by generation (10 tokens) and
the paper's parser; GSM8K 200 tokens, last 5 (dev) / 10 (test) words, substring match; NLGraph 10
tokens, substring match; RealToxicityPrompts 20 tokens, 1 − toxicity; AbstainQA on MMLU;
multi-task domains as the harmonic mean of two multiple-choice tasks; reward models 200 tokens,
min-max normalised; human-interest topics 512 tokens with the chat template, rated by a judge.

What needs more than the files:

* ``realtoxicityprompts``: a local toxicity classifier, ``scorer=DIR_OR_CALLABLE`` or
  ``$LOGIT_SWARM_TOXICITY_SCORER`` (the paper called Google's Perspective API).
* ``rm``, ``rm-concise``, ``rm-verbose``, ``rm-reverse``: a local reward model,
  ``scorer=...`` or ``$LOGIT_SWARM_REWARD_MODEL`` (the paper used internlm2-7b-reward).
* ``human-*``: a judge model, ``judge=DIR_OR_URL`` (a local model directory or an endpoint URL)
  or ``$LOGIT_SWARM_JUDGE`` (the paper used Gemini 1.5 Flash). There is no default: a pool
  expert as judge favours its own outputs (name one with ``judge={"expert": i}``; it warns).

Any option can be overridden at load time, e.g. ``load_task("mmlu", scoring="loglik_per_byte")``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .records import PAPER_SUBDIR
from .spec import register_task
from .templates import PAPER_INSTRUCTION, PAPER_INSTRUCTION_COMPLETE

ENV_TOXICITY = "LOGIT_SWARM_TOXICITY_SCORER"
ENV_REWARD = "LOGIT_SWARM_REWARD_MODEL"
ENV_JUDGE = "LOGIT_SWARM_JUDGE"

#: Multiple-choice tasks: name -> (file, instruction line of the prompt).
MULTIPLE_CHOICE: dict[str, tuple[str, str | None]] = {
    "mmlu": ("mmlu.json", PAPER_INSTRUCTION),
    "mmlu-pro": ("mmlu_pro.json", PAPER_INSTRUCTION),
    "hellaswag": ("hellaswag.json", PAPER_INSTRUCTION_COMPLETE),
    # No instruction line; the file's few-shot icl_prompt is prepended instead.
    "knowledge-crosswords": ("knowledge_crosswords.json", None),
    "truthfulqa": ("truthfulqa.json", PAPER_INSTRUCTION),
    # The parts of the multi-task domains.
    "hearsay": ("hearsay.json", PAPER_INSTRUCTION),
    "citation-prediction-classification": ("citation_prediction_classification.json", PAPER_INSTRUCTION),
    "medqa": ("medqa.json", PAPER_INSTRUCTION),
    "medmcqa": ("medmcqa.json", PAPER_INSTRUCTION),
    "scifact": ("scifact.json", PAPER_INSTRUCTION),
    "stem": ("stem.json", PAPER_INSTRUCTION),
    "normad-country": ("normad_country.json", PAPER_INSTRUCTION),
    "normad-value": ("normad_value.json", PAPER_INSTRUCTION),
}

#: The paper's multi-task domains (``evaluate.py``: ``multitask_domain_dataset_dict``).
DOMAINS: dict[str, tuple[str, str]] = {
    "legal": ("hearsay", "citation-prediction-classification"),
    "medical": ("medqa", "medmcqa"),
    "science": ("scifact", "stem"),
    "culture": ("normad-country", "normad-value"),
}

#: The 16 human-interest topics (judge objective), by file stem.
HUMAN_TOPICS = ("asian_food", "cartoons", "drone_AI", "electric_vehicles", "finance", "legal_AI",
                "luxury_car", "music_instrument", "olympics", "phd_application", "plastic",
                "policy", "sandbox_games", "social_network", "south_america", "us_tourism")

#: The nine single tasks of the paper's Table 1.
SINGLE_TASKS = ("mmlu", "mmlu-pro", "hellaswag", "knowledge-crosswords", "gsm8k", "nlgraph",
                "truthfulqa", "realtoxicityprompts", "abstainqa")


def paper_dir(data_dir: Path) -> Path:
    """Where the paper's files are under a data directory."""
    sub = data_dir / PAPER_SUBDIR
    return sub if sub.is_dir() else data_dir


def _fixed(spec: dict[str, Any]):
    def make(data_dir: Path | None, overrides: Mapping[str, Any]):
        return dict(spec), paper_dir(data_dir)

    return make


_SCORER_HINT = "DIR_OR_CALLABLE (a local sequence-classification model directory or a Python callable texts -> scores)"
_JUDGE_HINT = "DIR_OR_URL (a local model directory or an OpenAI-compatible endpoint URL)"


def _needs(spec: dict[str, Any], key: str, env: str, what: str, name: str, hint: str = _SCORER_HINT):
    def make(data_dir: Path | None, overrides: Mapping[str, Any]):
        value = overrides.get(key) or os.environ.get(env)
        if not value:
            raise ValueError(f"task {name!r} needs {what}: pass {key}={hint} or set {env}")
        return {**spec, key: value}, paper_dir(data_dir)

    return make


def _env_set(env: str):
    return lambda: bool(os.environ.get(env))


def _register() -> None:
    common = {"needs_data": True, "files_dir": paper_dir}
    for name, (file, instruction) in MULTIPLE_CHOICE.items():
        spec = {"kind": "multiple_choice", "data": file, "scoring": "generate", "prompt": "paper",
                "instruction": instruction, "icl_prompt": "from_data", "max_new_tokens": 10}
        register_task(name, _fixed(spec), files=(file,), **common,
                      description=f"paper multiple choice ({file}), accuracy by generation")
    register_task("gsm8k", _fixed({"kind": "exact_match", "data": "gsm8k.json", "prompt": "{prompt}",
                                   "match": "paper-gsm8k", "max_new_tokens": 200}),
                  files=("gsm8k.json",), **common,
                  description="paper GSM8K: 200 tokens, gold number in the last 5/10 words")
    register_task("nlgraph", _fixed({"kind": "exact_match", "data": "nlgraph.json", "prompt": "{prompt}",
                                     "match": "substring", "max_new_tokens": 10}),
                  files=("nlgraph.json",), **common,
                  description="paper NLGraph (connectivity yes/no, shortest path): substring match")
    register_task("abstainqa", _fixed({"kind": "abstain", "data": "mmlu.json", "prompt": "paper",
                                       "instruction": PAPER_INSTRUCTION, "max_new_tokens": 10}),
                  files=("mmlu.json",), **common,
                  description="paper AbstainQA on MMLU: effective reliability with self-check")
    register_task("realtoxicityprompts",
                  _needs({"kind": "toxicity", "data": "realtoxicityprompts.json", "max_new_tokens": 20},
                         "scorer", ENV_TOXICITY, "a local toxicity scorer", "realtoxicityprompts"),
                  files=("realtoxicityprompts.json",), requires=f"a toxicity scorer (${ENV_TOXICITY})",
                  is_available=_env_set(ENV_TOXICITY), **common,
                  description="paper RealToxicityPrompts: mean 1 − toxicity of 20-token continuations")
    for name, (a, b) in DOMAINS.items():
        files = (MULTIPLE_CHOICE[a][0], MULTIPLE_CHOICE[b][0])
        register_task(name, _fixed({"kind": "multi", "tasks": [a, b], "aggregate": "harmonic"}),
                      files=files, **common,
                      description=f"paper multi-task domain: harmonic mean of {a} and {b}")
    for objective in ("default", "concise", "verbose", "reverse"):
        name = "rm" if objective == "default" else f"rm-{objective}"
        spec = {"kind": "reward", "data": "rm.json", "objective": objective, "normalise": "dev",
                "max_new_tokens": 200}
        register_task(name, _needs(spec, "scorer", ENV_REWARD, "a local reward model", name),
                      files=("rm.json",), requires=f"a reward model (${ENV_REWARD})",
                      is_available=_env_set(ENV_REWARD), **common,
                      description=f"paper reward-model objective ({objective})")
    for topic in HUMAN_TOPICS:
        file = f"human_{topic}.json"
        name = f"human-{topic.lower().replace('_', '-')}"
        register_task(name,
                      _needs({"kind": "judge", "data": file, "max_new_tokens": 512, "chat": True},
                             "judge", ENV_JUDGE, "a judge model", name, _JUDGE_HINT),
                      files=(file,), requires=f"a judge model (judge= or ${ENV_JUDGE})",
                      is_available=_env_set(ENV_JUDGE), **common,
                      description=f"paper human-interest topic {topic!r}: mean judge rating 1-10")


_register()
