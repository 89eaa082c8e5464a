"""Model cards (``card.json`` + ``README.md``) of zoo experts, and the build summary table."""

from __future__ import annotations

import platform


def versions() -> dict:
    """Versions of the libraries that determine an expert's bytes."""
    import tokenizers
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__}


def make_card(*, spec, tokenizer_spec, plan, result, corpus, expert_seed: int, device: str,
              seconds: float, parameters: int, architecture: str) -> dict:
    """The ``card.json`` content of one freshly trained expert."""
    return {
        "name": spec.name,
        "zoo_version": plan.zoo_version,
        "recipe_hash": plan.expert_hashes[spec.name],
        "architecture": architecture,
        "model_type": spec.arch,
        "parameters": parameters,
        "d_model": spec.d_model, "layers": spec.n_layers, "heads": spec.n_heads,
        "specialty": spec.specialty,
        "note": spec.note,
        "tokenizer": {"name": tokenizer_spec.name, "kind": tokenizer_spec.kind,
                      "vocab_size": tokenizer_spec.vocab_size, "description": tokenizer_spec.describe(),
                      "recipe_hash": plan.tokenizer_hashes[tokenizer_spec.name]},
        "vocab_size": tokenizer_spec.vocab_size,
        "training": {"corpus": corpus, "steps": result.steps, "batch": spec.batch, "seq_len": spec.seq_len,
                     "lr": spec.lr, "tokens_seen": result.tokens_seen, "first_loss": round(result.first_loss, 4),
                     "final_loss": round(result.final_loss, 4), "seed": plan.seed, "expert_seed": expert_seed,
                     "size": plan.size, "steps_scale": plan.steps_scale, "device": device,
                     "threads": result.threads, "train_seconds": round(result.seconds, 2),
                     "train_cpu_seconds": round(result.cpu_seconds, 2)},
        "build_seconds": round(seconds, 2),
        "versions": versions(),
    }


def render_readme(card: dict) -> str:
    """The human-readable model card (README.md) of an expert."""
    t = card["training"]
    corpus = "; ".join(f"{c['specialty']} ({c['documents']:,} documents, {c['tokens']:,} tokens)"
                       for c in t["corpus"])
    note = card["note"][:1].upper() + card["note"][1:]
    return (
        f"# {card['name']}\n\n"
        f"A tiny expert of the logit_swarm zoo ({card['zoo_version']}), trained from scratch on data "
        f"generated on the machine that built it. {note}.\n\n"
        "| field | value |\n|---|---|\n"
        f"| architecture | {card['architecture']} ({card['model_type']}), d_model {card['d_model']}, "
        f"{card['layers']} layers, {card['heads']} heads |\n"
        f"| parameters | {card['parameters']:,} |\n"
        f"| tokenizer | {card['tokenizer']['name']}: {card['tokenizer']['description']} |\n"
        f"| vocabulary size | {card['vocab_size']} |\n"
        f"| specialty | {card['specialty']} |\n"
        f"| training corpus | {corpus} |\n"
        f"| steps | {t['steps']} steps of {t['batch']} documents (at most {t['seq_len']} tokens each), "
        f"AdamW, peak lr {t['lr']} |\n"
        f"| loss | {t['first_loss']} -> {t['final_loss']} nats/token ({t['tokens_seen']:,} tokens seen) |\n"
        f"| seed | {t['seed']} (expert seed {t['expert_seed']}) |\n"
        f"| build time | {card['build_seconds']} s on {t['device']} ({t['threads']} thread(s)) |\n"
        f"| recipe hash | `{card['recipe_hash'][:16]}` |\n\n"
        "Load with `transformers.AutoModelForCausalLM.from_pretrained(dir)` and "
        "`transformers.AutoTokenizer.from_pretrained(dir)`.\n"
    )


def summary_table(cards: dict[str, dict]) -> str:
    """A fixed-width table of experts (``cards`` entries with ``_reused`` show "cached")."""
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
