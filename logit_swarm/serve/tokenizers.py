"""The served tokenizer over HTTP: lm-eval's / vLLM's ``/tokenizer_info``, ``/tokenize``,
``/detokenize``, and the tokenizer files.

Token units: the experts' shared tokenizer (the first expert's files). Byte units: the **byte
tokenizer** of the mixture's units: ids 0..255 are the UTF-8 bytes, 256 is ``<|stop|>`` (the
byte STOP unit, the tokenizer's EOS; lm-eval puts it in front of a text it scores from its start
and the server then scores the first byte too). It is also served as a ``tokenizer.json`` that
``transformers.AutoTokenizer`` loads (a byte-level BPE with no merges), so a client that wants a
local tokenizer gets the exact one.

The HTTP side uses its own copy of the tokenizer (the engine thread owns the experts' one).
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

from ..align.vocab import byte_to_unicode
from .protocol import STOP_ID, STOP_STRING, ApiError

#: Tokenizer files sent by ``GET /v1/models/{model}/tokenizer`` (text files only).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt")


def byte_tokenizer_files(context_window: int | None) -> dict[str, str]:
    """``tokenizer.json`` + ``tokenizer_config.json`` of the byte tokenizer (ids = byte values)."""
    vocab = {ch: b for b, ch in byte_to_unicode().items()}
    tok = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": STOP_ID, "content": STOP_STRING, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": []},
    }
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": STOP_STRING, "bos_token": None,
              "pad_token": None, "model_max_length": context_window or 10**30, "clean_up_tokenization_spaces": False}
    return {"tokenizer.json": json.dumps(tok, ensure_ascii=False), "tokenizer_config.json": json.dumps(config)}


class ServedTokenizer:
    """Tokenize / detokenize / describe the server's units (see the module docstring).

    Args:
        ensemble: the served ensemble (only read at construction).
        max_model_len: the advertised context window.
        chat: the :class:`~logit_swarm.serve.chat.ChatRenderer` (for ``/tokenize`` of messages).
    """

    def __init__(self, ensemble, max_model_len: int | None, chat):
        self.unit = ensemble.unit
        self.max_model_len = max_model_len
        self.chat = chat
        self.experts = [e.name for e in ensemble.experts]
        e = ensemble.experts[0]
        self.expert0 = e
        self.tok = copy.deepcopy(e.tokenizer) if self.unit == "token" else None
        self.files = _token_files(e) if self.unit == "token" else byte_tokenizer_files(max_model_len)
        self.stop_ids = list(e.stop_ids) if self.unit == "token" else [STOP_ID]
        self.vocab_size = e.vocab_size if self.unit == "token" else STOP_ID + 1
        self.fingerprint = e.fingerprint if self.unit == "token" else "logit_swarm-bytes-v1"

    # ------------------------------------------------------------------ descriptions
    def info(self) -> dict:
        """``GET /tokenizer_info`` (vLLM's fields, which lm-eval's RemoteTokenizer reads)."""
        if self.unit == "byte":
            return {"tokenizer_class": "ByteTokenizer", "eos_token": STOP_STRING, "bos_token": None,
                    "pad_token": None, "model_max_length": self.max_model_len, "chat_template": None,
                    "unit": "byte", "vocab_size": self.vocab_size}
        t = self.tok
        return {"tokenizer_class": type(t).__name__, "eos_token": t.eos_token, "bos_token": t.bos_token,
                "pad_token": t.pad_token, "model_max_length": self.max_model_len,
                "chat_template": getattr(t, "chat_template", None) or None, "unit": "token",
                "vocab_size": self.vocab_size}

    def payload(self) -> dict:
        """``GET /v1/models/{model}/tokenizer``: the files plus what a client needs besides them."""
        return {"object": "tokenizer", "unit": self.unit, "files": self.files, "stop_ids": self.stop_ids,
                "context_window": self.max_model_len, "vocab_size": self.vocab_size,
                "fingerprint": self.fingerprint, "experts": self.experts}

    # ------------------------------------------------------------------ tokenize / detokenize
    def tokenize(self, prompt: str | None, messages: list[dict] | None, add_special: bool | None) -> list[int]:
        """Ids of a prompt (``add_special`` default True, as vLLM) or of chat messages."""
        if (prompt is None) == (messages is None):
            raise ApiError(400, "give exactly one of 'prompt' and 'messages'", "prompt")
        if messages is not None:
            text = self._chat_text(messages)
            add_special = bool(add_special)
        else:
            text = prompt
            add_special = True if add_special is None else add_special
        if self.unit == "byte":
            parts = text.split(STOP_STRING)
            ids = [STOP_ID] if add_special else []
            for i, part in enumerate(parts):
                ids += ([STOP_ID] if i else []) + list(part.encode("utf-8"))
            return ids
        return list(self.tok(text, add_special_tokens=add_special)["input_ids"])

    def _chat_text(self, messages: list[dict]) -> str:
        msgs = [{"role": m["role"], "content": m.get("content") or ""} for m in messages]
        if self.unit == "token" and getattr(self.tok, "chat_template", None):
            return self.tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        if self.unit == "byte":
            raise ApiError(400, "a byte-level mixture has no single chat rendering (each expert renders the "
                           "messages with its own template); tokenize text", "messages")
        return self.chat.text(self.expert0, msgs)

    def detokenize(self, ids: list[int]) -> str:
        """Text of ids (special tokens kept)."""
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ApiError(400, f"token id {bad[0]} is outside the vocabulary (0..{self.vocab_size - 1})", "tokens")
        if self.unit == "byte":
            out, run = [], []
            for t in ids + [STOP_ID]:
                if t == STOP_ID:
                    out.append(bytes(run).decode("utf-8", errors="replace"))
                    run = []
                else:
                    run.append(t)
            return STOP_STRING.join(out)
        return self.tok.decode(ids)


def _token_files(e) -> dict[str, str]:
    """The tokenizer's text files as stored with the expert (or as ``save_pretrained`` writes them)."""
    files: dict[str, str] = {}
    src = Path(e.path) if getattr(e, "path", None) else None
    if src is not None and (src / "tokenizer.json").exists():
        paths = [src / name for name in TOKENIZER_FILES]
        return _read_texts([p for p in paths if p.is_file()])
    with tempfile.TemporaryDirectory() as tmp:
        e.tokenizer.save_pretrained(tmp)
        files = _read_texts(sorted(Path(tmp).iterdir()))
    return files


def _read_texts(paths) -> dict[str, str]:
    out = {}
    for f in paths:
        try:
            out[f.name] = f.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            pass  # binary files (a SentencePiece .model) are not sent; tokenizer.json suffices
    return out
