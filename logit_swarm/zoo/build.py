"""Building the zoo: resolve a plan, train tokenizers, train experts (in parallel), mark complete.

A build resumes: experts whose ``card.json`` carries the current recipe hash are kept, the
others are trained, each in its own process with one CPU thread (``jobs`` at a time), written to
a temporary directory and moved into place atomically. The completion marker is written last
(see :mod:`logit_swarm.zoo.cache`). One thread per expert makes the weights independent of how
many experts train side by side, and is also the fastest use of a small CPU for models this size.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue as queue_mod
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from . import cache, corpora
from . import spec as zspec
from .cards import make_card, render_readme, summary_table, versions
from .spec import ExpertSpec
from .vocab import TOKENIZER_FILES, TokenizerSpec, encode_documents, train_tokenizer, write_tokenizer

TOKENIZER_TEXT_SEED = 0  # tokenizers do not depend on the build seed


class Plan:
    """Everything a build needs, resolved up front: specs, recipe hashes, default directory."""

    def __init__(self, size: str = "tiny", seed: int = 0, data_dir: str | os.PathLike | None = None,
                 experts: list[str] | None = None, steps_scale: float = 1.0):
        zspec.check_size(size)
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if not (isinstance(steps_scale, (int, float)) and steps_scale > 0):
            raise ValueError(f"steps_scale must be > 0, got {steps_scale!r}")
        if data_dir is not None and not Path(data_dir).is_dir():
            raise FileNotFoundError(f"data directory {str(data_dir)!r} does not exist; drop --data "
                                    "(the zoo needs none) or point it at a folder with tinyshakespeare/")
        self.size, self.seed, self.steps_scale = size, seed, float(steps_scale)
        self.zoo_version = zspec.ZOO_VERSION
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
        env = os.environ.get(cache.ENV_ZOO)
        if env:
            return Path(env).expanduser()
        return cache.cache_root() / f"{self.size}-{self.zoo_hash[:12]}"

    def steps(self, s: ExpertSpec) -> int:
        """Training steps of ``s`` after ``steps_scale`` (at least 1)."""
        return max(1, int(round(s.steps * self.steps_scale)))


def expert_seed(seed: int, name: str) -> int:
    """The seed of one expert, derived from the zoo seed and its name (stable across runs)."""
    return int(hashlib.sha256(f"{seed}/{name}".encode()).hexdigest()[:8], 16)


# ------------------------------------------------------------------------------------------
# Completion


def expert_is_current(d: Path, recipe_hash: str) -> bool:
    """Whether ``d`` is a finished expert directory of recipe ``recipe_hash``."""
    card = cache.read_card(d)
    if not card or card.get("recipe_hash") != recipe_hash:
        return False
    return all((d / f).is_file() for f in ("config.json", "model.safetensors") + TOKENIZER_FILES)


def is_complete(out: Path, plan: Plan) -> bool:
    """Whether ``out`` holds the complete zoo of ``plan`` (marker present, every expert current)."""
    m = cache.read_marker(out)
    if not m or m.get("zoo_hash") != plan.zoo_hash:
        return False
    return all(expert_is_current(Path(out) / s.name, plan.expert_hashes[s.name]) for s in plan.experts)


def paths_of(out: Path, plan: Plan) -> dict[str, Path]:
    """Expert name -> directory, in zoo order."""
    return {s.name: Path(out) / s.name for s in plan.experts}


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
            # Synthetic documents are 7-120 characters; ask for enough, then cut to the budget.
            docs = corpora.training_documents(specialty, max(16, chars // 7), TOKENIZER_TEXT_SEED, data_dir)
        texts += corpora.take_chars(docs, chars)
    return texts


def ensure_tokenizer(out: Path, name: str, plan: Plan):
    """(tokenizer, directory) of ``plan``'s tokenizer ``name``: from ``<out>/_tokenizers`` or trained now."""
    from tokenizers import Tokenizer

    spec = plan.tokenizers[name]
    h = plan.tokenizer_hashes[name]
    target = out / cache.TOKENIZER_DIR / name
    stamp = target / "recipe_hash"
    if not (stamp.is_file() and stamp.read_text().strip() == h and (target / "tokenizer.json").is_file()):
        tok = train_tokenizer(spec, tokenizer_texts(spec, plan.data_dir))
        tmp = cache.temp_dir_for(target)
        write_tokenizer(tok, spec, tmp)
        (tmp / "recipe_hash").write_text(h + "\n")
        cache.replace_dir(tmp, target)
    # Always load from disk, so every expert uses exactly what the files say.
    return Tokenizer.from_file(str(target / "tokenizer.json")), target


# ------------------------------------------------------------------------------------------
# One expert


def expert_documents(s: ExpertSpec, docs_needed: int, seed: int, data_dir: str | None) -> list[tuple[str, list[str]]]:
    """(specialty, documents) for each part of ``s.corpus``, about ``docs_needed`` in all.

    Synthetic specialties are sampled (2k to 60k distinct documents; training draws from them
    with replacement); finite corpora (code, Shakespeare) are cut to about 1000 characters per
    document a run draws (at least 100k characters).
    """
    out = []
    total = sum(w for _, w in s.corpus)
    for i, (specialty, weight) in enumerate(s.corpus):
        need = max(1, int(docs_needed * weight / total))
        if specialty in ("code", "shakespeare"):
            docs = corpora.training_documents(specialty, 0, seed + i, data_dir, max_chars=max(100_000, 1000 * need))
        else:
            docs = corpora.training_documents(specialty, min(60_000, max(2_000, need)), seed + i, data_dir)
        out.append((specialty, docs))
    return out


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' own progress bars and warnings (our bars are the progress report)."""
    from transformers.utils import logging as tf_logging

    was_bar, level = tf_logging.is_progress_bar_enabled(), tf_logging.get_verbosity()
    tf_logging.disable_progress_bar()
    tf_logging.set_verbosity_error()
    try:
        yield
    finally:
        tf_logging.set_verbosity(level)
        if was_bar:
            tf_logging.enable_progress_bar()


def build_expert(out: Path, s: ExpertSpec, plan: Plan, device: str = "cpu",
                 on_step: Callable[[int, float], None] | None = None) -> dict:
    """Train expert ``s``, move its finished directory into ``out``, return its card."""
    from . import train as ztrain

    t0 = time.time()
    tok, tok_dir = ensure_tokenizer(out, s.tokenizer, plan)
    tspec = plan.tokenizers[s.tokenizer]
    seed = expert_seed(plan.seed, s.name)
    steps = plan.steps(s)
    docs, weights, corpus_card = [], [], []
    for (specialty, texts), (_, w) in zip(expert_documents(s, steps * s.batch, seed, plan.data_dir), s.corpus):
        ids = encode_documents(tok, tspec, texts)
        docs += ids
        weights += [w / len(ids)] * len(ids)
        corpus_card.append({"specialty": specialty, "weight": w, "documents": len(ids),
                            "tokens": int(sum(map(len, ids))), "characters": int(sum(map(len, texts)))})
    sp = tspec.specials
    bos, eos, pad = (tok.token_to_id(sp[k]) for k in ("bos", "eos", "pad"))
    data = ztrain.DocumentSet.build(docs, weights, pad, prefix_id=None if tspec.adds_bos else eos)
    config = ztrain.model_config(s, tok.get_vocab_size(with_added_tokens=True), bos, eos, pad)
    with quiet_transformers():
        result = ztrain.train_expert(s, config, data, steps, seed, device=device, on_step=on_step)
        tmp = cache.temp_dir_for(out / s.name)
        result.model.save_pretrained(tmp)
    for f in TOKENIZER_FILES:
        shutil.copyfile(tok_dir / f, tmp / f)
    card = make_card(spec=s, tokenizer_spec=tspec, plan=plan, result=result, corpus=corpus_card,
                     expert_seed=seed, device=device, seconds=time.time() - t0,
                     parameters=sum(p.numel() for p in result.model.parameters()),
                     architecture=type(result.model).__name__)
    (tmp / "card.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (tmp / "README.md").write_text(render_readme(card), encoding="utf-8")
    cache.replace_dir(tmp, out / s.name)
    return card


# ------------------------------------------------------------------------------------------
# Progress


class _Bars:
    """One tqdm bar per expert on stderr (or nothing when progress is off)."""

    def __init__(self, plan: Plan, names: list[str], enabled: bool):
        self.bars = {}
        if not enabled:
            return
        from tqdm.auto import tqdm

        for i, n in enumerate(names):
            s = next(x for x in plan.experts if x.name == n)
            self.bars[n] = tqdm(total=plan.steps(s), desc=f"{n:>8}", unit="step", file=sys.stderr,
                                position=i, leave=True, dynamic_ncols=True, mininterval=0.5)

    def update(self, name: str, step: int, loss: float) -> None:
        """Show that expert ``name`` finished step ``step`` with training loss ``loss``."""
        bar = self.bars.get(name)
        if bar is not None:
            bar.n = step + 1
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
            bar.refresh()

    def close(self) -> None:
        """Close every bar (they stay on screen)."""
        for bar in self.bars.values():
            bar.close()


# ------------------------------------------------------------------------------------------
# Parallel training


_PROGRESS = None  # the parent's progress queue, set in each worker by _worker_init


def _worker_init(threads: int, progress_queue) -> None:
    import signal

    import torch

    global _PROGRESS
    # Ctrl-C is the parent's business: it terminates the workers, whose writes are atomic.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    _PROGRESS = progress_queue


def _worker_build(out: str, plan: Plan, name: str, device: str) -> dict:
    s = next(x for x in plan.experts if x.name == name)
    last = plan.steps(s) - 1

    def on_step(step: int, loss: float) -> None:
        if _PROGRESS is not None and (step % 5 == 0 or step == last):
            _PROGRESS.put((name, step, loss))

    return build_expert(Path(out), s, plan, device, on_step)


def _cost(s: ExpertSpec, plan: Plan) -> float:
    # Rough training FLOPs, to start the longest jobs first.
    return plan.steps(s) * s.batch * s.n_layers * s.d_model ** 2 * (1 + s.d_model / 128)


def _train_parallel(out: Path, plan: Plan, todo: list[ExpertSpec], device: str, jobs: int, threads: int,
                    bars: _Bars) -> dict[str, dict]:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # fork after torch has started threads is unsafe
    q = ctx.Queue() if bars.bars else None
    pool = ctx.Pool(processes=jobs, initializer=_worker_init, initargs=(threads, q))
    cards: dict[str, dict] = {}
    try:
        pending = {s.name: pool.apply_async(_worker_build, (str(out), plan, s.name, device))
                   for s in sorted(todo, key=lambda s: -_cost(s, plan))}
        while pending:
            time.sleep(0.2)
            _drain(q, bars)
            for name in [n for n, r in pending.items() if r.ready()]:
                cards[name] = pending.pop(name).get()  # re-raises a worker's error here
        _drain(q, bars)
        pool.close()
    except BaseException:
        # An error or Ctrl-C: stop every worker now. Finished experts are in place and will be
        # reused; an expert cut short leaves at most a temporary directory, removed next time.
        pool.terminate()
        raise
    finally:
        pool.join()
    return cards


def _drain(q, bars: _Bars) -> None:
    if q is None:
        return
    while True:
        try:
            name, step, loss = q.get_nowait()
        except queue_mod.Empty:
            return
        bars.update(name, step, loss)


# ------------------------------------------------------------------------------------------
# The whole zoo


def default_jobs(plan: Plan, device: str, n_todo: int) -> int:
    """Parallel training processes: one per CPU core (at most 8), one on a GPU or for micro."""
    if device != "cpu" or plan.size == "micro":
        return 1
    return max(1, min(n_todo, os.cpu_count() or 1, 8))


def build(plan: Plan, out: str | os.PathLike | None = None, device: str = "cpu", progress: bool = True,
          force: bool = False, threads: int | None = None, jobs: int | None = None) -> dict[str, Path]:
    """Build (or reuse) the zoo of ``plan`` in ``out``; returns expert name -> directory.

    ``jobs`` experts train at once, each in its own process (``jobs=1``: in this process);
    ``threads`` is torch's CPU threads per expert (default 1 on CPU: identical weights whatever
    ``jobs`` is; on CUDA the default leaves torch's setting alone).
    """
    device = _check_device(device)
    out = Path(out).expanduser() if out is not None else plan.default_dir()
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a directory")
    if not force and is_complete(out, plan):
        return paths_of(out, plan)
    if threads is None and device == "cpu":
        threads = 1
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if jobs is not None and jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    t0 = time.time()
    with cache.locked(out):
        if not force and is_complete(out, plan):  # another process finished it while we waited
            return paths_of(out, plan)
        (out / cache.MARKER).unlink(missing_ok=True)  # from here on the zoo is incomplete
        cache.clean_leftovers(out)
        cache.remove_stale_experts(out, {s.name for s in plan.experts})
        cards: dict[str, dict] = {}
        todo = []
        for s in plan.experts:
            d = out / s.name
            if not force and expert_is_current(d, plan.expert_hashes[s.name]):
                cards[s.name] = {**cache.read_card(d), "_reused": True}
            else:
                todo.append(s)
        # Tokenizers first (shared by several experts; the workers then only read them).
        for name in dict.fromkeys(s.tokenizer for s in todo):
            ensure_tokenizer(out, name, plan)
        n_jobs = jobs or default_jobs(plan, device, len(todo))
        bars = _Bars(plan, [s.name for s in todo], progress)
        try:
            if n_jobs > 1 and len(todo) > 1:
                cards.update(_train_parallel(out, plan, todo, device, n_jobs, threads or 1, bars))
            else:
                with _threads(threads):
                    for s in todo:
                        cards[s.name] = build_expert(out, s, plan, device,
                                                     lambda step, loss, n=s.name: bars.update(n, step, loss))
        finally:
            bars.close()
        cache.write_json_atomic(out / cache.MARKER, {
            "complete": True, "zoo_version": plan.zoo_version, "zoo_hash": plan.zoo_hash,
            "order": [s.name for s in plan.experts], "size": plan.size, "seed": plan.seed,
            "steps_scale": plan.steps_scale, "data_dir": plan.data_dir,
            "experts": {s.name: {"path": s.name, "recipe_hash": plan.expert_hashes[s.name],
                                 "specialty": s.specialty, "architecture": s.arch, "tokenizer": s.tokenizer}
                        for s in plan.experts},
            "jobs": n_jobs, "threads": threads, "build_seconds": round(time.time() - t0, 2), "versions": versions(),
        })
    if progress:
        print(summary_table({s.name: cards[s.name] for s in plan.experts}), file=sys.stderr)
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
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
