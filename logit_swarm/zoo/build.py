"""Building the zoo: tokenizers, experts, model cards, and the on-disk cache.

Layout of a zoo directory::

    <zoo>/zoo.json              completion marker, written last (recipe hash, experts, timings)
    <zoo>/<expert>/             one standard HF directory per expert: config.json,
                                model.safetensors, generation_config.json, tokenizer.json,
                                tokenizer_config.json, special_tokens_map.json, card.json, README.md
    <zoo>/_tokenizers/<name>/   each trained tokenizer once (experts copy its files)

Crash safety: every expert (and tokenizer) is written to a temporary directory next to its
target and moved into place with ``os.replace``; ``zoo.json`` is removed before anything is
rebuilt and written (atomically) only after every expert is in place, so a partly built zoo is
never taken for a complete one. An interrupted build resumes: experts whose ``card.json``
carries the current recipe hash are kept. A lock file serialises concurrent builds of one zoo.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from . import corpora, spec as zspec
from .spec import ExpertSpec, ZOO_VERSION
from .vocab import TOKENIZER_FILES, TokenizerSpec, encode_documents, train_tokenizer, write_tokenizer

ENV_ZOO = "LOGIT_SWARM_ZOO"
MARKER = "zoo.json"
TOKENIZER_DIR = "_tokenizers"
TOKENIZER_TEXT_SEED = 0  # tokenizers do not depend on the build seed


# ------------------------------------------------------------------------------------------
# Where the zoo lives


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/logit_swarm/zoo`` (default ``~/.cache/logit_swarm/zoo``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "logit_swarm" / "zoo"


class Plan:
    """Everything a build needs to know, resolved up front (specs, hashes, directory)."""

    def __init__(self, size: str = "tiny", seed: int = 0, data_dir: str | os.PathLike | None = None,
                 experts: list[str] | None = None, steps_scale: float = 1.0):
        zspec.check_size(size)
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if not (steps_scale > 0):
            raise ValueError(f"steps_scale must be > 0, got {steps_scale!r}")
        if data_dir is not None and not Path(data_dir).is_dir():
            raise FileNotFoundError(f"data directory {str(data_dir)!r} does not exist; drop --data "
                                    "(the zoo needs none) or point it at a folder with tinyshakespeare/")
        self.size, self.seed, self.steps_scale = size, seed, float(steps_scale)
        self.data_dir = str(Path(data_dir).resolve()) if data_dir is not None else None
        with_data = self.data_dir is not None and (Path(self.data_dir) / "tinyshakespeare" / "input.txt").is_file()
        self.experts: list[ExpertSpec] = zspec.select(zspec.expert_specs(size, with_data), experts)
        all_toks = zspec.tokenizer_specs(size)
        self.tokenizers: dict[str, TokenizerSpec] = {s.tokenizer: all_toks[s.tokenizer] for s in self.experts}
        used = {sp for s in self.experts for sp, _ in s.corpus}
        used |= {sp for t in self.tokenizers.values() for sp, _ in t.corpus}
        self.digests = zspec.corpus_digests(used, self.data_dir)
        self.tokenizer_hashes = {n: zspec.tokenizer_hash(t, self.digests) for n, t in self.tokenizers.items()}
        self.expert_hashes = {s.name: zspec.expert_hash(s, self.tokenizers[s.tokenizer], seed, self.steps_scale,
                                                        self.digests) for s in self.experts}
        self.zoo_hash = zspec.zoo_hash(size, self.expert_hashes)

    def default_dir(self) -> Path:
        """``$LOGIT_SWARM_ZOO`` if set, else ``<cache root>/<size>-<recipe hash>``."""
        env = os.environ.get(ENV_ZOO)
        if env:
            return Path(env).expanduser()
        return cache_root() / f"{self.size}-{self.zoo_hash[:12]}"

    def steps(self, s: ExpertSpec) -> int:
        """Training steps of ``s`` after ``steps_scale`` (at least 1)."""
        return max(1, int(round(s.steps * self.steps_scale)))


def expert_seed(seed: int, name: str) -> int:
    """The seed of one expert, derived from the zoo seed and its name (stable across runs)."""
    return int(hashlib.sha256(f"{seed}/{name}".encode()).hexdigest()[:8], 16)


# ------------------------------------------------------------------------------------------
# Completion


def read_marker(out: Path) -> dict | None:
    """The zoo's completion marker, or None if absent or unreadable."""
    try:
        return json.loads((Path(out) / MARKER).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_card(expert_dir: Path) -> dict | None:
    """An expert's ``card.json``, or None if absent or unreadable."""
    try:
        return json.loads((Path(expert_dir) / "card.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, NotADirectoryError):
        return None


def _expert_ok(d: Path, recipe_hash: str) -> bool:
    card = read_card(d)
    if not card or card.get("recipe_hash") != recipe_hash:
        return False
    return all((d / f).is_file() for f in ("config.json", "model.safetensors") + TOKENIZER_FILES)


def is_complete(out: Path, plan: Plan) -> bool:
    """Whether ``out`` holds the complete zoo of ``plan`` (marker last, every expert current)."""
    m = read_marker(out)
    if not m or m.get("zoo_hash") != plan.zoo_hash:
        return False
    return all(_expert_ok(Path(out) / s.name, plan.expert_hashes[s.name]) for s in plan.experts)


def paths_of(out: Path, plan: Plan) -> dict[str, Path]:
    """Expert name -> directory, in zoo order."""
    return {s.name: Path(out) / s.name for s in plan.experts}


# ------------------------------------------------------------------------------------------
# Atomic file system helpers


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON to ``path`` via a temporary file and ``os.replace`` (never half-written)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _replace_dir(tmp: Path, target: Path) -> None:
    # os.replace cannot overwrite a non-empty directory: move the old one aside first, so the
    # target is at every instant either the complete old or the complete new directory
    # (a crash in between leaves it absent, which the next build repairs).
    if target.exists():
        if read_card(target) is None and any(target.iterdir()):
            raise ValueError(f"{target} exists and is not a zoo expert; choose another --out")
        trash = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, trash)
        os.replace(tmp, target)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, target)


@contextlib.contextmanager
def _lock(out: Path) -> Iterator[None]:
    """An exclusive lock on ``out`` (POSIX flock; a no-op where unavailable)."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(out / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _clean_leftovers(out: Path) -> None:
    # Temporary directories of a crashed build: ".<name>.tmp-<pid>" / ".<name>.old-<pid>".
    for d in list(out.iterdir()) + (list((out / TOKENIZER_DIR).iterdir()) if (out / TOKENIZER_DIR).is_dir() else []):
        if d.name.startswith(".") and (".tmp-" in d.name or ".old-" in d.name):
            shutil.rmtree(d, ignore_errors=True) if d.is_dir() else d.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------
# Tokenizers


def tokenizer_texts(tok: TokenizerSpec, data_dir: str | None) -> list[str]:
    """The texts ``tok`` is trained on: its corpus mix, each specialty cut to its character budget."""
    texts: list[str] = []
    for specialty, chars in tok.corpus:
        if chars <= 0:
            continue
        if specialty in ("code", "shakespeare"):
            docs = corpora.training_documents(specialty, 0, TOKENIZER_TEXT_SEED, data_dir, max_chars=chars)
        else:
            # Synthetic documents are 20-80 characters; ask for enough, then cut to the budget.
            docs = corpora.training_documents(specialty, max(16, chars // 20), TOKENIZER_TEXT_SEED, data_dir)
        total = 0
        for d in docs:
            if total >= chars:
                break
            texts.append(d)
            total += len(d)
    return texts


def ensure_tokenizer(out: Path, name: str, plan: Plan):
    """The trained tokenizer ``name`` of ``plan``, from ``<out>/_tokenizers`` or trained now."""
    from tokenizers import Tokenizer

    spec = plan.tokenizers[name]
    h = plan.tokenizer_hashes[name]
    target = out / TOKENIZER_DIR / name
    stamp = target / "recipe_hash"
    if stamp.is_file() and stamp.read_text().strip() == h and (target / "tokenizer.json").is_file():
        return Tokenizer.from_file(str(target / "tokenizer.json")), target
    tok = train_tokenizer(spec, tokenizer_texts(spec, plan.data_dir))
    tmp = target.with_name(f".{name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    write_tokenizer(tok, spec, tmp)
    (tmp / "recipe_hash").write_text(h + "\n")
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    # Reload from disk so every expert uses exactly what the files say.
    return Tokenizer.from_file(str(target / "tokenizer.json")), target


# ------------------------------------------------------------------------------------------
# Experts


def expert_documents(s: ExpertSpec, tokens_needed: int, seed: int, data_dir: str | None) -> list[tuple[str, list[str]]]:
    """(specialty, documents) for each part of ``s.corpus``, enough for ``tokens_needed`` tokens."""
    out = []
    for i, (specialty, weight) in enumerate(s.corpus):
        share = weight / sum(w for _, w in s.corpus)
        need = int(tokens_needed * share)
        if specialty in ("code", "shakespeare"):
            # ~3 characters per token; finite corpora are cut, not repeated.
            docs = corpora.training_documents(specialty, 0, seed + i, data_dir, max_chars=max(200_000, 3 * need))
        else:
            # Synthetic documents are ~10-25 tokens; more distinct documents than windows need.
            docs = corpora.training_documents(specialty, min(60_000, max(2_000, need // 12)), seed + i, data_dir)
        out.append((specialty, docs))
    return out


def _param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def build_expert(out: Path, s: ExpertSpec, plan: Plan, device: str, progress: bool) -> dict:
    """Train expert ``s`` and move its finished directory into ``out``; returns its card."""
    from . import train as ztrain

    t0 = time.time()
    tok, tok_dir = ensure_tokenizer(out, s.tokenizer, plan)
    tspec = plan.tokenizers[s.tokenizer]
    seed = expert_seed(plan.seed, s.name)
    steps = plan.steps(s)
    parts = expert_documents(s, steps * s.batch * (s.seq_len + 1), seed, plan.data_dir)
    docs, weights, corpus_card = [], [], []
    for (specialty, texts), (_, w) in zip(parts, s.corpus):
        ids = encode_documents(tok, tspec, texts)
        docs += ids
        weights += [w / len(ids)] * len(ids)
        corpus_card.append({"specialty": specialty, "weight": w, "documents": len(ids),
                            "tokens": int(sum(map(len, ids))), "characters": int(sum(map(len, texts)))})
    stream = ztrain.pack_documents(docs, weights, s.seq_len)
    sp = tspec.specials
    config = ztrain.model_config(s, tok.get_vocab_size(with_added_tokens=True), tok.token_to_id(sp["bos"]),
                                 tok.token_to_id(sp["eos"]), tok.token_to_id(sp["pad"]))
    result = ztrain.train_expert(s, config, stream, steps, seed, device=device, progress=progress)

    tmp = out / f".{s.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    with _quiet_transformers():
        result.model.save_pretrained(tmp)
    for f in TOKENIZER_FILES:
        shutil.copyfile(tok_dir / f, tmp / f)
    card = _card(s, plan, tspec, result, corpus_card, seed, device, time.time() - t0, _param_count(result.model))
    (tmp / "card.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (tmp / "README.md").write_text(render_readme(card), encoding="utf-8")
    _replace_dir(tmp, out / s.name)
    return card


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' own progress bars (our per-expert bar is the progress report)."""
    from transformers.utils import logging as tf_logging

    was = tf_logging.is_progress_bar_enabled()
    tf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            tf_logging.enable_progress_bar()


def _versions() -> dict:
    import tokenizers
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__}


def _card(s: ExpertSpec, plan: Plan, tspec: TokenizerSpec, result, corpus_card, seed, device, seconds, params) -> dict:
    return {
        "name": s.name,
        "zoo_version": ZOO_VERSION,
        "recipe_hash": plan.expert_hashes[s.name],
        "architecture": type(result.model).__name__,
        "model_type": s.arch,
        "parameters": params,
        "d_model": s.d_model, "layers": s.n_layers, "heads": s.n_heads,
        "specialty": s.specialty,
        "note": s.note,
        "tokenizer": {"name": tspec.name, "kind": tspec.kind, "vocab_size": tspec.vocab_size,
                      "description": tspec.describe(), "recipe_hash": plan.tokenizer_hashes[tspec.name]},
        "vocab_size": tspec.vocab_size,
        "training": {"corpus": corpus_card, "steps": result.steps, "batch": s.batch, "seq_len": s.seq_len,
                     "lr": s.lr, "tokens_seen": result.tokens_seen, "first_loss": round(result.first_loss, 4),
                     "final_loss": round(result.final_loss, 4), "seed": plan.seed, "expert_seed": seed,
                     "size": plan.size, "steps_scale": plan.steps_scale, "device": device,
                     "threads": result.threads, "train_seconds": round(result.seconds, 2)},
        "build_seconds": round(seconds, 2),
        "versions": _versions(),
    }


def render_readme(card: dict) -> str:
    """The human-readable model card (README.md) of an expert."""
    t = card["training"]
    corpus = "; ".join(f"{c['specialty']} ({c['documents']} documents, {c['tokens']} tokens)" for c in t["corpus"])
    return (
        f"# {card['name']}\n\n"
        f"A tiny expert of the logit_swarm zoo ({card['zoo_version']}), trained from scratch on "
        f"data generated on this machine. {card['note'][:1].upper() + card['note'][1:]}.\n\n"
        f"| field | value |\n|---|---|\n"
        f"| architecture | {card['architecture']} ({card['model_type']}), d_model {card['d_model']}, "
        f"{card['layers']} layers, {card['heads']} heads |\n"
        f"| parameters | {card['parameters']:,} |\n"
        f"| tokenizer | {card['tokenizer']['name']}: {card['tokenizer']['description']} |\n"
        f"| vocabulary size | {card['vocab_size']} |\n"
        f"| specialty | {card['specialty']} |\n"
        f"| training corpus | {corpus} |\n"
        f"| steps | {t['steps']} x {t['batch']} x {t['seq_len']} tokens, AdamW lr {t['lr']} |\n"
        f"| loss | {t['first_loss']} -> {t['final_loss']} (nats/token) |\n"
        f"| seed | {t['seed']} (expert seed {t['expert_seed']}) |\n"
        f"| build time | {card['build_seconds']} s on {t['device']} ({t['threads']} threads) |\n"
        f"| recipe hash | `{card['recipe_hash'][:16]}` |\n\n"
        "Load with `transformers.AutoModelForCausalLM.from_pretrained(dir)` and "
        "`AutoTokenizer.from_pretrained(dir)`.\n"
    )


# ------------------------------------------------------------------------------------------
# The whole zoo


def _remove_stale(out: Path, plan: Plan) -> None:
    # Expert directories of an older recipe that this one no longer has (only our own, i.e.
    # directories with a zoo card; nothing else in `out` is touched).
    names = {s.name for s in plan.experts}
    for d in out.iterdir():
        if d.is_dir() and not d.name.startswith((".", "_")) and d.name not in names:
            card = read_card(d)
            if card and "zoo_version" in card:
                shutil.rmtree(d)


def build(plan: Plan, out: str | os.PathLike | None = None, device: str = "cpu", progress: bool = True,
          force: bool = False, threads: int | None = None) -> dict[str, Path]:
    """Build (or reuse) the zoo of ``plan`` in ``out``; returns expert name -> directory."""
    device = _check_device(device)
    out = Path(out).expanduser() if out is not None else plan.default_dir()
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a directory")
    if not force and is_complete(out, plan):
        return paths_of(out, plan)
    t0 = time.time()
    with _lock(out), _threads(threads):
        if not force and is_complete(out, plan):  # another process finished it while we waited
            return paths_of(out, plan)
        (out / MARKER).unlink(missing_ok=True)  # from here on the zoo is incomplete
        _clean_leftovers(out)
        _remove_stale(out, plan)
        cards: dict[str, dict] = {}
        for s in plan.experts:
            d = out / s.name
            if not force and _expert_ok(d, plan.expert_hashes[s.name]):
                cards[s.name] = read_card(d)
                cards[s.name]["_reused"] = True
                continue
            cards[s.name] = build_expert(out, s, plan, device, progress)
        write_json_atomic(out / MARKER, {
            "complete": True, "zoo_version": ZOO_VERSION, "order": [s.name for s in plan.experts], "zoo_hash": plan.zoo_hash, "size": plan.size,
            "seed": plan.seed, "steps_scale": plan.steps_scale, "data_dir": plan.data_dir,
            "experts": {s.name: {"path": s.name, "recipe_hash": plan.expert_hashes[s.name],
                                 "specialty": s.specialty, "architecture": s.arch, "tokenizer": s.tokenizer}
                        for s in plan.experts},
            "build_seconds": round(time.time() - t0, 2), "versions": _versions(),
        })
    if progress:
        print(summary_table(cards), file=sys.stderr)
        print(f"zoo ready in {out} ({time.time() - t0:.1f} s)", file=sys.stderr)
    return paths_of(out, plan)


def _check_device(device: str) -> str:
    import torch

    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"unknown device {device!r}; use cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for but no CUDA GPU is available; use --device cpu")
    return device


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    import torch

    if n is None:
        yield
        return
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def summary_table(cards: dict[str, dict]) -> str:
    """A fixed-width table of the built (or reused) experts."""
    rows = [("expert", "arch", "tokenizer", "vocab", "specialty", "params", "steps", "loss", "seconds")]
    for name, c in cards.items():
        t = c["training"]
        secs = "cached" if c.get("_reused") else f"{c['build_seconds']:.1f}"
        rows.append((name, c["model_type"], c["tokenizer"]["name"], str(c["vocab_size"]), c["specialty"],
                     f"{c['parameters'] / 1e6:.2f}M", str(t["steps"]), f"{t['final_loss']:.3f}", secs))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
