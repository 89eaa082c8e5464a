"""Tiny experts built locally for tests: trained tokenizers + random-initialised models.

Everything is deterministic and takes seconds; nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Alice went to the market and bought 12 apples, 7 pears and 3 melons.",
    "def add(a, b):\n    return a + b\n",
    "In 1999 the river rose; in 2024 it fell again.",
    "Hello world! Hello there, general Kenobi.",
    "café naïve über 日本語 😀 🚀",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000",
    "for i in range(10):\n    print(i * i)\n",
] * 20


def train_tokenizer(kind: str, vocab_size: int, out: Path, chat: bool = False):
    """Train a tokenizer of ``kind`` ("bytelevel" or "sentencepiece") and save it to ``out``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    if kind == "bytelevel":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
        )
        tok.train_from_iterator(CORPUS, trainer)
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                       eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                                       pad_token="<|endoftext|>")
    elif kind == "sentencepiece":
        base = Tokenizer(models.BPE(unk_token="<unk>"))
        base.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
        trainer = trainers.BpeTrainer(vocab_size=vocab_size - 256, special_tokens=["<unk>", "<s>", "</s>"],
                                      show_progress=False)
        base.train_from_iterator(CORPUS, trainer)
        data = json.loads(base.to_str())
        trained = data["model"]["vocab"]
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in data["model"]["merges"]]
        vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
        for b in range(256):
            vocab[f"<0x{b:02X}>"] = len(vocab)
        for t, _ in sorted(trained.items(), key=lambda kv: kv[1]):
            if t not in vocab:
                vocab[t] = len(vocab)
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
        tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                         decoders.Fuse(), decoders.Strip(" ", 1, 0)])
        tok.add_special_tokens(["<unk>", "<s>", "</s>"])
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                           special_tokens=[("<s>", 1)])
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                       unk_token="<unk>", pad_token="</s>")
    else:
        raise ValueError(kind)
    if chat:
        fast.chat_template = (
            "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}"
        )
    fast.save_pretrained(str(out))
    return fast


def make_model(arch: str, tokenizer, out: Path, seed: int = 0, dtype=torch.float32, layers: int = 2,
               width: int = 32, positions: int = 512, init: float = 0.2, vocab_size: int | None = None):
    """Random-initialised tiny causal LM of ``arch`` over ``tokenizer``, saved to ``out``
    (``vocab_size``: embedding rows, default ``len(tokenizer)``; more = padded rows)."""
    from transformers import AutoModelForCausalLM, GemmaConfig, GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

    v = vocab_size or len(tokenizer)
    bos = tokenizer.bos_token_id
    eos = tokenizer.eos_token_id
    common = dict(vocab_size=v, bos_token_id=bos, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
                  initializer_range=init, tie_word_embeddings=False)
    if arch == "gpt2":
        cfg = GPT2Config(n_positions=positions, n_embd=width, n_layer=layers, n_head=2, **common)
    else:
        kw = dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=positions, **common)
        if arch == "llama":
            cfg = LlamaConfig(**kw)
        elif arch == "mistral":
            cfg = MistralConfig(sliding_window=None, **kw)
        elif arch == "qwen2":
            cfg = Qwen2Config(**kw)
        elif arch == "gemma":
            cfg = GemmaConfig(head_dim=width // 4, **kw)
        else:
            raise ValueError(arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg).to(dtype)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def random_lm_for_tokenizer(tokenizer_dir: str, out: Path, arch: str = "llama", seed: int = 0):
    """A tiny random model over a real tokenizer (e.g. ../shared/data/tokenizers/llama3)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    if tok.eos_token is None:
        # bare tokenizer.json files: name the family's end-of-text token
        for cand in ("</s>", "<|end_of_text|>", "<|endoftext|>", "<|im_end|>"):
            if cand in tok.get_vocab():
                tok.eos_token = cand
                break
    if tok.bos_token is None:
        for cand in ("<s>", "<|begin_of_text|>"):
            if cand in tok.get_vocab():
                tok.bos_token = cand
                break
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return make_model(arch, tok, out, seed=seed, width=16, layers=1)
