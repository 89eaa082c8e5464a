"""Text scorers for reward and toxicity utilities: local HF classifiers or Python callables.

A scorer maps a list of texts to one float each. It is given in a spec (or in Python) as:

* a Python callable ``texts -> scores``;
* ``"package.module:function"``: an importable callable (as lm-eval's ``!function``);
* a local directory of a Hugging Face sequence-classification model
  (``AutoModelForSequenceClassification``; ``*.safetensors`` weights only, no remote code),
  or ``{model: DIR, label: NAME, device: cpu, batch_size: 16, max_length: 512}``.

For a classifier with one output the score is that logit (reward models); with several, the
softmax probability of ``label`` (for toxicity, a label containing "toxic" is found by itself).
Nothing is ever downloaded: a missing directory is an error.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

Scorer = Callable[[Sequence[str]], Sequence[float]]


class HFClassifierScorer:
    """A local sequence-classification model as a scorer (loaded on first call).

    ``label``: which output is the score when the model has several (name or index);
    ``"auto-toxic"`` picks the label whose name contains "toxic" (not "non"-toxic).
    """

    def __init__(self, path: str | os.PathLike, label: str | int | None = None, device: str = "cpu",
                 batch_size: int = 16, max_length: int | None = 512):
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"scorer model directory {str(self.path)!r} does not exist")
        if not any(self.path.glob("*.safetensors")):
            raise ValueError(f"scorer model {str(self.path)!r} has no *.safetensors weights; only "
                             "safetensors are loaded (re-save it with save_pretrained(..., "
                             "safe_serialization=True))")
        self.label = label
        self.device = device
        self.batch_size = int(batch_size)
        self.max_length = max_length
        self._model = None
        self._tok = None
        self._index: int | None = None

    def _load(self) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        # local_files_only: a scorer is a local directory; never ask a hub about it.
        tok = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        model = AutoModelForSequenceClassification.from_pretrained(
            str(self.path), use_safetensors=True, trust_remote_code=False, local_files_only=True)
        model.eval().to(self.device)
        if tok.pad_token is None:
            # Classifiers that pool the last token find it through pad_token_id.
            if tok.eos_token is not None:
                tok.pad_token = tok.eos_token
            else:
                self.batch_size = 1
        if tok.pad_token_id is not None:
            model.config.pad_token_id = tok.pad_token_id
        self._tok, self._model = tok, model
        self._index = self._label_index(model.config)

    def _label_index(self, config: Any) -> int | None:
        k = int(config.num_labels)
        if k == 1:
            return None
        names = {int(i): str(n) for i, n in (config.id2label or {}).items()}
        if self.label == "auto-toxic":
            hits = [i for i, n in names.items() if "toxic" in n.lower() and "non" not in n.lower()]
            if len(hits) == 1:
                return hits[0]
            raise ValueError(f"scorer {str(self.path)!r}: cannot tell which of the labels "
                             f"{list(names.values())} means toxic; give label: NAME")
        if self.label is None:
            raise ValueError(f"scorer {str(self.path)!r} has {k} labels {list(names.values())}; "
                             "say which one is the score with label: NAME")
        if isinstance(self.label, int) or str(self.label).isdigit():
            idx = int(self.label)
            if not 0 <= idx < k:
                raise ValueError(f"label index {idx} out of range for {k} labels")
            return idx
        for i, n in names.items():
            if n == str(self.label):
                return i
        raise ValueError(f"scorer {str(self.path)!r} has no label {self.label!r}; "
                         f"labels: {list(names.values())}")

    @property
    def tokenizer(self) -> Any:
        """The classifier's tokenizer (loads the model on first use)."""
        if self._tok is None:
            self._load()
        return self._tok

    def __call__(self, texts: Sequence[str]) -> list[float]:
        """One score per text."""
        import torch

        if self._model is None:
            self._load()
        out: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            batch = [t if t else " " for t in texts[start:start + self.batch_size]]
            enc = self._tok(batch, return_tensors="pt", padding=True, truncation=self.max_length is not None,
                            max_length=self.max_length)
            with torch.no_grad():
                logits = self._model(**{k: v.to(self.device) for k, v in enc.items()}).logits.float()
            if self._index is None:
                vals = logits[:, 0]
            else:
                vals = torch.softmax(logits, dim=-1)[:, self._index]
            out.extend(vals.cpu().tolist())
        return out

    def chat_text(self, prompt: str, response: str) -> str | None:
        """The (user, assistant) pair in the classifier's chat template, if it has one."""
        tok = self.tokenizer
        if not getattr(tok, "chat_template", None):
            return None
        return tok.apply_chat_template([{"role": "user", "content": prompt},
                                        {"role": "assistant", "content": response}], tokenize=False)

    def num_tokens(self, text: str) -> int:
        """Length of ``text`` in the classifier's tokens (the paper's length measure)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def import_callable(ref: str) -> Callable:
    """Import ``"package.module:attr"`` and check that it is callable."""
    mod_name, _, attr = ref.partition(":")
    if not mod_name or not attr:
        raise ValueError(f"a callable reference looks like 'package.module:function', got {ref!r}")
    try:
        obj = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import {ref!r}: {exc}") from None
    if not callable(obj):
        raise ValueError(f"{ref!r} is not callable")
    return obj


def make_scorer(value: Any, base_dir: str | os.PathLike | None = None,
                default_label: str | None = None) -> Scorer:
    """Build a scorer from a spec value (see the module docstring)."""
    if value is None:
        raise ValueError("no scorer given")
    if callable(value):
        return value
    opts: dict[str, Any] = {}
    if isinstance(value, Mapping):
        opts = dict(value)
        if "model" not in opts:
            raise ValueError("a scorer mapping needs model: DIR (a local sequence-classification "
                             "model directory)")
        value = opts.pop("model")
    ref = str(value)
    path = Path(ref).expanduser()
    if not path.is_absolute() and base_dir is not None and (Path(base_dir) / path).exists():
        path = Path(base_dir) / path
    if path.is_dir():
        opts.setdefault("label", default_label)
        return HFClassifierScorer(path, **opts)
    if ":" in ref and not path.exists() and not opts:
        return import_callable(ref)
    raise FileNotFoundError(f"scorer {ref!r} is neither a local model directory nor an importable "
                            "'module:function'")


def run_scorer(scorer: Scorer, texts: Sequence[str]) -> np.ndarray:
    """Call ``scorer`` and check it returned one finite number per text."""
    if not texts:
        return np.zeros(0)
    vals = np.asarray(list(scorer(list(texts))), dtype=np.float64).reshape(-1)
    if vals.shape[0] != len(texts):
        raise ValueError(f"scorer returned {vals.shape[0]} scores for {len(texts)} texts")
    if not np.all(np.isfinite(vals)):
        raise ValueError("scorer returned NaN or inf")
    return vals
