"""How far is a one-hot byte-level score from the expert's own canonical token-level score?

For each zoo expert: held-out (context, continuation) pairs are scored (a) at token level, the
expert's own log-likelihood of its canonical tokens, and (b) at byte level with one-hot weights,
which marginalises over all tokenizations (align/bytes.py), with the default pruning and, on short
continuations, exactly. Also: for multiple-choice questions, how often the two rank the same
choice first. Then the same gap for tiny random models over real vocabularies (GPT-2, Llama-2,
Llama-3, Qwen2, Phi-3), whose untrained distributions spread mass over many tokenizations.

Then the same gap for the real pretrained models of ../shared/models (stories260K,
TinyStories-656K, slm4096: models nobody here trained), on text each can spell, and how the three
mix at byte level (``--real-only`` runs just that part).

    python experiments/byte_vs_token.py [--pairs 30] [--questions 40] [--data ../shared/data] [--real-only]

Writes experiments/results/byte_vs_token.{json,md} and byte_vs_token_real.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import logit_swarm as ls  # noqa: E402


def split_pairs(texts, n, max_bytes, rng, max_ctx=300):
    pairs = []
    for t in texts:
        words = t.split(" ")
        if len(words) < 4:
            continue
        k = rng.randint(1, len(words) - 2)
        ctx, cont = " ".join(words[:k]), " " + " ".join(words[k:])
        cont = cont.encode()[:max_bytes].decode("utf-8", errors="ignore")
        pairs.append((ctx[-max_ctx:], cont))
        if len(pairs) == n:
            break
    return pairs


def gaps(e, pairs, exact: bool):
    ctx = [c for c, _ in pairs]
    cont = [x for _, x in pairs]
    tok = np.array(ls.Ensemble([e], unit="token").logprob(ctx, cont))
    byte = np.array(ls.Ensemble([e], unit="byte").logprob(ctx, cont))
    out = {"pairs": len(pairs), "mean_token_nats": float(tok.mean()), "mean_byte_nats": float(byte.mean()),
           "mean_abs_gap_nats": float(np.abs(byte - tok).mean()), "max_abs_gap_nats": float(np.abs(byte - tok).max()),
           "mean_gap_nats": float((byte - tok).mean())}
    if exact:
        ex = np.array(ls.Ensemble([e], unit="byte", byte_beam=None, byte_prune=1e-12).logprob(ctx, cont))
        out["mean_abs_gap_exact_vs_pruned"] = float(np.abs(ex - byte).mean())
        out["mean_gap_exact_vs_token"] = float((ex - tok).mean())
    return out


def mc_agreement(e, records):
    agree = 0
    for r in records:
        ctx = [r["prompt"]] * len(r["choices"])
        tok = ls.Ensemble([e], unit="token").logprob(ctx, r["choices"])
        byte = ls.Ensemble([e], unit="byte").logprob(ctx, r["choices"])
        agree += int(np.argmax(tok) == np.argmax(byte))
    return agree / max(1, len(records))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=30)
    ap.add_argument("--questions", type=int, default=40)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results"))
    ap.add_argument("--models", default=str(ROOT.parent / "shared" / "models"))
    ap.add_argument("--real-only", action="store_true", help="only the real pretrained models of --models")
    args = ap.parse_args(argv)
    rng = random.Random(0)
    if Path(args.models).exists():
        real_models(Path(args.models), Path(args.out))
    if args.real_only:
        return

    from logit_swarm.zoo import zoo_experts
    from logit_swarm.zoo.corpora import SPECIALTIES, heldout_text, task_records

    rows = []
    texts = {s: heldout_text(s) for s in SPECIALTIES}
    mix_texts = [t for s in SPECIALTIES for t in texts[s][:20]]
    rng.shuffle(mix_texts)
    mc = task_records("facts", "dev", args.questions, seed=0, kind="multiple_choice") if args.questions else []
    for name, path in sorted(zoo_experts().items()):
        e = ls.load_expert(path, name=name)
        long_pairs = split_pairs(mix_texts, args.pairs, 80, rng)
        # Exact marginal = every tokenization, one KV node each: exponential in length, so short
        # pairs, and none near a run of spaces (18 spaces have 2^17 tokenizations with a vocabulary
        # of whitespace tokens; the code expert has one).
        short_pairs = [pq for pq in split_pairs(mix_texts, 3 * args.pairs, 6, rng, max_ctx=80)
                       if "   " not in pq[0][-24:] + pq[1]][: args.pairs]
        from logit_swarm.experts.hf import read_card

        own = read_card(path).get("specialty")
        own_pairs = split_pairs(texts[own][20:], args.pairs, 80, rng) if own in texts else []
        r = {"expert": name, "tokenizer_vocab": e.vocab_size, **gaps(e, long_pairs, exact=False),
             "short": gaps(e, short_pairs, exact=True),
             "own_specialty": {"specialty": own, **gaps(e, own_pairs, exact=False)} if own_pairs else None}
        r["mc_first_choice_agreement"] = mc_agreement(e, mc) if mc else None
        rows.append(r)
        print(json.dumps(r), flush=True)

    real = []
    tok_root = Path(args.data) / "tokenizers"
    if tok_root.exists():
        from helpers import random_lm_for_tokenizer

        samples = [("Hello wörld, this is", " a test 😀 of 12345 bytes"), ("def f(x):\n", "    return x  # ok"),
                   ("日本語の", "テキスト and more"), ("The year", " 2024 was long.")]
        with tempfile.TemporaryDirectory() as td:
            for k, name in enumerate(["gpt2", "llama2", "llama3", "qwen2", "phi3"]):
                d = random_lm_for_tokenizer(str(tok_root / name), Path(td) / name, seed=k)
                e = ls.load_expert(d, name=name)
                g = gaps(e, samples, exact=False)
                real.append({"tokenizer": name, **g})
                print(json.dumps(real[-1]), flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "byte_vs_token.json").write_text(json.dumps({"zoo": rows, "real_vocab_random_models": real}, indent=2) + "\n")
    md = ["# One-hot byte-level score vs the expert's own token-level score", "",
          "Gap = byte − token, nats per continuation (byte ≥ token when other tokenizations carry mass).",
          "exact* = no beam, paths below 1e-12 of the text's mass dropped (the unpruned marginal keeps one KV "
          "node per tokenization, exponentially many); pruned = the defaults (beam 8, prune 1e-4).", "",
          "Mixed = held-out text of every specialty (mostly outside the expert's own); own = held-out text of the",
          "expert's own specialty. MC agreement: how often the two scores rank the same choice first on zoo-facts questions.", "",
          "| expert | pairs | mean token nats (mixed) | mean \\|gap\\| mixed, ≤80 B | max \\|gap\\| | mean \\|gap\\| own specialty, ≤80 B | mean \\|gap\\| exact*, ≤6 B | exact* vs pruned | MC first-choice agreement |",
          "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["short"]
        o = r["own_specialty"]
        md.append(f"| {r['expert']} | {r['pairs']} | {r['mean_token_nats']:.2f} | {r['mean_abs_gap_nats']:.3f} | "
                  f"{r['max_abs_gap_nats']:.3f} | " + (f"{o['mean_abs_gap_nats']:.3f} ({o['specialty']})" if o else "n/a")
                  + f" | {abs(s['mean_gap_exact_vs_token']):.3f} | "
                  f"{s['mean_abs_gap_exact_vs_pruned']:.2e} | "
                  + (f"{r['mc_first_choice_agreement']:.3f}" if r["mc_first_choice_agreement"] is not None else "n/a") + " |")
    if real:
        md += ["", "Tiny random (untrained) models over real vocabularies:", "",
               "| tokenizer | mean token nats | mean byte nats | mean \\|gap\\| |", "|---|---|---|---|"]
        for r in real:
            md.append(f"| {r['tokenizer']} | {r['mean_token_nats']:.2f} | {r['mean_byte_nats']:.2f} | {r['mean_abs_gap_nats']:.2f} |")
    (out / "byte_vs_token.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


SLM_TEXT = ("Q: What is SLM?\nA: SLM is a Small Language Model trained on a single page of memory. "
            "It is web scale, cloud native, and proudly")


def story_text(models: Path) -> str:
    """The 457-byte STORY of ../shared/models/verify.py (read, not copied: see its SOURCES.md)."""
    import ast

    tree = ast.parse((models / "verify.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "STORY" for t in node.targets):
            return ast.literal_eval(node.value)
    raise ValueError(f"{models / 'verify.py'} has no STORY")


def sentence_pairs(text: str, max_bytes: int = 80, max_ctx: int = 200) -> list[tuple[str, str]]:
    """(everything before, next sentence) pairs; the continuation starts with its space."""
    import re

    cuts = [m.end() for m in re.finditer(r"[.!?\n](?=[ \"\n]|$)", text)]
    pairs = []
    for a, b in zip(cuts, cuts[1:]):
        cont = text[a:b].encode()[:max_bytes].decode("utf-8", errors="ignore")
        if cont.strip():
            pairs.append((text[max(0, a - max_ctx):a], cont))
    return pairs


def real_models(models: Path, out: Path) -> None:
    """One-hot byte vs token gap on the real models, on pairs each can spell; then the three mixed."""
    from logit_swarm.align.view import view_text

    names = ["stories260K", "TinyStories-656K", "slm4096"]
    experts = [ls.load_expert(models / n, name=n) for n in names]
    story = sentence_pairs(story_text(models), max_bytes=80, max_ctx=40)  # slm4096: 128 positions
    slm = [(SLM_TEXT[max(0, k - 80):k], SLM_TEXT[k:k + 40]) for k in range(6, len(SLM_TEXT) - 10, 12)]  # window 128
    rows = []
    for e in experts:
        rules = e.vocab_bytes.rules
        pairs = [(c, x) for c, x in (slm if e.name == "slm4096" else story)
                 if view_text(rules, c + x) == (c + x).encode()]  # text it can spell as it is
        rows.append({"model": e.name, "rules": rules.describe(), **gaps(e, pairs, exact=False)})
        print(json.dumps(rows[-1]), flush=True)
    mix = []
    for label, pairs in (("STORY sentences", story), ("slm4096 line", slm)):
        ctx, cont = [c for c, _ in pairs], [x for _, x in pairs]
        ens = ls.Ensemble(experts, weights=[1 / 3] * 3)
        r = {"text": label, "pairs": len(pairs), "uniform_mixture_mean_nats": float(np.mean(ens.logprob(ctx, cont)))}
        for i, e in enumerate(experts):
            lp = np.array(ls.Ensemble(experts, weights=np.eye(3)[i]).logprob(ctx, cont))
            r[e.name] = {"finite_pairs": int(np.isfinite(lp).sum()),
                         "mean_nats_finite": float(lp[np.isfinite(lp)].mean()) if np.isfinite(lp).any() else None}
        mix.append(r)
        print(json.dumps(r), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "byte_vs_token_real.json").write_text(json.dumps({"one_hot": rows, "mixture": mix}, indent=2) + "\n")
    md = ["# Real pretrained models (../shared/models): one-hot byte vs token, and the three mixed", "",
          "CPU, 2 cores shared with other jobs (scores do not depend on it). Byte level with the default pruning",
          "(beam 8, prune 1e-4). Pairs: the sentences of verify.py's STORY (stories260K, TinyStories-656K) or",
          "of slm4096's memorised training line, each after the text before it, kept only when the model's",
          "tokenizer spells the text as it is (its text view changes nothing).", "",
          "| model | text rules | pairs | mean token nats | mean byte nats | mean \\|gap\\| | max \\|gap\\| |",
          "|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['model']} | {'; '.join(r['rules']) or 'lossless'} | {r['pairs']} | {r['mean_token_nats']:.3f} | "
                  f"{r['mean_byte_nats']:.3f} | {r['mean_abs_gap_nats']:.4f} | {r['max_abs_gap_nats']:.4f} |")
    md += ["", "Byte-level scores of the uniform mixture and of each model alone (one-hot) on all pairs of a text;",
           "a model alone gives -inf to a pair with a byte it cannot produce (finite pairs counted):", "",
           "| text | pairs | uniform mixture, mean nats | " + " | ".join(f"{n} alone: finite, mean nats" for n in names) + " |",
           "|---|---|---|" + "---|" * len(names)]
    for r in mix:
        cells = [f"{r[n]['finite_pairs']}, {r[n]['mean_nats_finite']:.2f}" if r[n]["mean_nats_finite"] is not None
                 else "0, -" for n in names]
        md.append(f"| {r['text']} | {r['pairs']} | {r['uniform_mixture_mean_nats']:.2f} | " + " | ".join(cells) + " |")
    (out / "byte_vs_token_real.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
