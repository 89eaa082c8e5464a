"""``logit-swarm generate``: generate text with a saved recipe (an ensemble).

::

    logit-swarm generate --recipe best.json --prompt "Q: What is the capital of Dugleam?\\nA:"
    logit-swarm generate --recipe best.json --file prompts.txt --max-new-tokens 32 --json
    echo "Hello" | logit-swarm generate --recipe best.json --file -

Decoding settings default to the recipe's (written by the search from its task), then to
greedy decoding of 32 units. ``--file`` reads one prompt per line, or ``{"prompt": ...}``
records from a ``.jsonl`` file; ``\\n`` in ``--prompt`` is a newline.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..windows import add_truncation_argument


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``generate`` sub-command."""
    p = subparsers.add_parser(
        "generate", help="generate text with a saved recipe",
        description="Load a recipe (experts + weights + mode) and generate a continuation for each "
        "prompt. Decoding defaults come from the recipe.",
    )
    p.add_argument("--recipe", required=True, help="recipe JSON (from `logit-swarm search` or Ensemble.save)")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable; \\n = newline)")
    p.add_argument("--file", help="prompts: one per line, or .jsonl records with a 'prompt' field; - = stdin")
    p.add_argument("--max-new-tokens", type=int, help="most units to generate (default: the recipe's, else 32)")
    p.add_argument("--temperature", type=float, help="0 = greedy (default: the recipe's, else 0)")
    p.add_argument("--seed", type=int, help="seed for sampling (default: the recipe's, else 0)")
    p.add_argument("--stop", action="append", help="stop string (repeatable; default: the recipe's)")
    p.add_argument("--device", default="cpu", help="device for the experts (default: cpu)")
    p.add_argument("--json", action="store_true", help="one JSON object per prompt: {prompt, output}")
    add_truncation_argument(p)
    p.set_defaults(func=run)
    return p


def read_prompts(args: argparse.Namespace) -> list[str]:
    """Prompts from --prompt and --file, in that order."""
    prompts = [s.replace("\\n", "\n") for s in args.prompt]
    if args.file:
        if args.file == "-":
            text, name = sys.stdin.read(), "<stdin>"
        else:
            path = Path(args.file).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"prompt file {args.file!r} does not exist")
            text, name = path.read_text(encoding="utf-8"), args.file
        if name.endswith(".jsonl"):
            for i, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    raise ValueError(f"{name} line {i} is not JSON; use one {{\"prompt\": ...}} per line") from None
                if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str):
                    raise ValueError(f"{name} line {i} has no string 'prompt' field")
                prompts.append(rec["prompt"])
        else:
            prompts.extend(line.replace("\\n", "\n") for line in text.splitlines() if line.strip())
    if not prompts:
        raise ValueError("no prompts: give --prompt TEXT or --file FILE")
    return prompts


def run(args: argparse.Namespace) -> int:
    """Run ``generate``; returns the exit code."""
    from logit_swarm.recipe import read_recipe

    read_recipe(args.recipe)  # a bad recipe fails here, before any model is loaded
    prompts = read_prompts(args)
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")

    import logit_swarm as ls

    print(f"loading recipe {args.recipe} ...", file=sys.stderr)
    ens = ls.Ensemble.load(args.recipe, device=args.device)
    dec = dict(ens.decoding or {})
    max_new = args.max_new_tokens if args.max_new_tokens is not None else int(dec.get("max_new_tokens", 32))
    temperature = args.temperature if args.temperature is not None else float(dec.get("temperature", 0.0))
    seed = args.seed if args.seed is not None else int(dec.get("seed", 0))
    stop = args.stop if args.stop is not None else dec.get("stop")
    rows: list[Any] = prompts
    if dec.get("chat"):  # the task sent prompts as one user message; so do we
        rows = [[{"role": "user", "content": p}] for p in prompts]
    print(f"generating {len(prompts)} continuation(s), up to {max_new} {ens.unit}s each ...", file=sys.stderr)
    outs = ens.generate(rows, max_new_tokens=max_new, temperature=temperature, seed=seed, stop=stop,
                        truncation=args.truncation)
    for i, (p, o) in enumerate(zip(prompts, outs)):
        if args.json:
            print(json.dumps({"prompt": p, "output": o}, ensure_ascii=False))
        else:
            if len(prompts) > 1:
                print(f"--- {i}")
            print(o)
    return 0
