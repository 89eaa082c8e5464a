"""The specialisation matrix: each expert's bits per byte on each specialty's held-out text.

For one document the expert sees its canonical tokenization ``ids = tokenizer(text)`` (with BOS
if its tokenizer adds one) followed by its EOS, and is charged ``-log p`` of every token after
the first context token; a tokenizer that adds no BOS gets its EOS as the first context token,
the way documents follow one another in training. The sum over documents, in bits, divided by
the documents' UTF-8 byte count is comparable across tokenizers (the stop decision is included
in the numerator, not in the byte count).

Documents longer than the expert's trained context are scored with a sliding window (stride
half the window), each token scored once with at least half a window of context.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from . import corpora

DEFAULT_WINDOW = 256


def _windows(n: int, window: int) -> list[tuple[int, int, int]]:
    """(start, end, first scored position) windows covering targets 1..n-1 of a length-n row."""
    if n <= window:
        return [(0, n, 1)]
    out, stride = [], window // 2
    start, scored = 0, 1
    while True:
        end = min(start + window, n)
        out.append((start, end, scored))
        if end == n:
            return out
        scored = end
        start = end - stride


def _trained_context(path: Path) -> int:
    try:
        card = json.loads((path / "card.json").read_text())
        return int(card["training"]["seq_len"])
    except (FileNotFoundError, KeyError, ValueError):
        return DEFAULT_WINDOW


@torch.no_grad()
def document_nll(model, tokenizer, docs: list[str], window: int, device: str = "cpu",
                 batch_size: int = 16) -> tuple[float, int]:
    """(total NLL in nats, total UTF-8 bytes) of ``docs`` under one expert (see module doc)."""
    eos = tokenizer.eos_token_id
    rows = []
    for d in docs:
        ids = tokenizer(d, add_special_tokens=True)["input_ids"]
        if not ids or ids[0] != tokenizer.bos_token_id or tokenizer.bos_token_id == eos:
            ids = [eos] + ids  # no BOS added: the previous document's EOS is the context
        rows.append(ids + [eos])
    pieces = [(r[s:e], first - s) for r in rows for (s, e, first) in _windows(len(r), window)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    total = 0.0
    for i in range(0, len(pieces), batch_size):
        chunk = pieces[i:i + batch_size]
        width = max(len(p) for p, _ in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        score = torch.zeros((len(chunk), width), dtype=torch.bool)
        for j, (p, first) in enumerate(chunk):
            ids[j, :len(p)] = torch.tensor(p)
            mask[j, :len(p)] = 1
            score[j, first:len(p)] = True
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        tgt = ids[:, 1:].to(device)
        nll = -logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
        total += float(nll[score[:, 1:].to(device)].sum())
    return total, sum(len(d.encode("utf-8")) for d in docs)


def specialisation_matrix(paths: dict[str, Path], specialties: list[str] | None = None, device: str = "cpu",
                          max_docs: int | None = None, data_dir=None,
                          progress: bool = False) -> dict[str, dict[str, float]]:
    """Expert name -> specialty -> bits per byte (see the module docstring)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if specialties is None:
        specialties = list(corpora.SPECIALTIES)
        if data_dir is not None and (Path(data_dir) / "tinyshakespeare" / "input.txt").is_file():
            specialties += list(corpora.DATA_SPECIALTIES)
    texts = {sp: corpora.heldout_text(sp, n=max_docs, data_dir=data_dir) for sp in specialties}
    from .build import quiet_transformers

    out: dict[str, dict[str, float]] = {}
    for name, path in paths.items():
        path = Path(path)
        with quiet_transformers():
            tok = AutoTokenizer.from_pretrained(str(path))
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).to(device).eval()
        window = min(_trained_context(path), model.config.max_position_embeddings)
        out[name] = {}
        for sp in specialties:
            # quiet: long documents exceed model_max_length by design; they are scored in windows.
            with quiet_transformers():
                nll, nbytes = document_nll(model, tok, texts[sp], window, device=device)
            out[name][sp] = nll / math.log(2) / nbytes
        if progress:
            import sys

            print(f"  scored {name}", file=sys.stderr)
        del model
    return out


def diagonal_violations(matrix: dict[str, dict[str, float]], owners: dict[str, str]) -> list[str]:
    """Messages for every expert that is not the best (lowest bits per byte) on its specialty.

    ``owners`` maps expert name -> its specialty (from the cards).
    """
    bad = []
    for name, sp in owners.items():
        if name not in matrix or sp not in matrix[name]:
            continue
        best = min(matrix, key=lambda n: matrix[n].get(sp, math.inf))
        if best != name:
            bad.append(f"{name} is not best on {sp}: {matrix[name][sp]:.3f} vs {best} {matrix[best][sp]:.3f}")
    return bad


def format_matrix(matrix: dict[str, dict[str, float]], owners: dict[str, str] | None = None) -> str:
    """Fixed-width table; the best expert per column is starred, each expert's own column bracketed."""
    if not matrix:
        return "(empty zoo)"
    cols = list(next(iter(matrix.values())))
    best = {c: min(matrix, key=lambda n: matrix[n][c]) for c in cols}
    owners = owners or {}
    header = ["expert \\ bits/byte"] + cols
    rows = [header]
    for name, row in matrix.items():
        cells = [name]
        for c in cols:
            v = f"{row[c]:.3f}" + ("*" if best[c] == name else " ")
            cells.append(f"[{v}]" if owners.get(name) == c else f" {v} ")
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines) + "\n(* best on the column; [ ] the expert's own specialty)"
