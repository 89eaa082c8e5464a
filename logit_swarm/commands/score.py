"""``logit-swarm score``: log-likelihood of continuations under a recipe (or one-off mixture)."""

from __future__ import annotations

import json
import sys

from ..windows import add_truncation_argument


def register(sub) -> None:
    """Add the ``score`` sub-command."""
    p = sub.add_parser(
        "score",
        help="log P(continuation | context) under a recipe, in nats",
        description="Score (context, continuation) pairs with a recipe's ensemble. Reads JSONL "
        "records {\"context\": ..., \"continuation\": ...} from --file (or - for stdin) and prints "
        "one JSON line per pair with the score in nats and bits per byte.",
    )
    p.add_argument("--recipe", required=True, help="recipe JSON (from `search` or Ensemble.save)")
    p.add_argument("--file", required=True, help="JSONL with context/continuation fields, or - for stdin")
    p.add_argument("--device", default="cpu")
    add_truncation_argument(p)
    p.set_defaults(func=run)


def run(args) -> int:
    """Entry point of ``logit-swarm score``."""
    import math

    from ..ensemble import Ensemble

    fh = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")
    ctx, cont = [], []
    with fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                ctx.append(rec["context"])
                cont.append(rec["continuation"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"{args.file}:{n}: expected a JSON object with 'context' and 'continuation'") from None
    ens = Ensemble.load(args.recipe, device=args.device)
    for c, x, s in zip(ctx, cont, ens.logprob(ctx, cont, truncation=args.truncation)):
        nb = len(x.encode("utf-8"))
        bpb = -s / math.log(2) / nb if nb else 0.0
        print(json.dumps({"context": c, "continuation": x, "logprob": s, "bits_per_byte": bpb}, ensure_ascii=False))
    return 0
