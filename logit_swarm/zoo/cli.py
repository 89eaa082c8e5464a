"""``logit-swarm zoo build | list | matrix``: build, inspect and measure the embedded experts."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _add_where(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", metavar="DIR", help="zoo directory (default: $LOGIT_SWARM_ZOO, else "
                   "~/.cache/logit_swarm/zoo/<size>-<recipe hash>)")
    p.add_argument("--size", default="tiny", choices=["tiny", "small", "micro"],
                   help="tiny: ~5 min on 2 CPU cores (default); small: for a GPU; micro: seconds, for tests")
    p.add_argument("--seed", type=int, default=0, help="build seed (default 0)")
    p.add_argument("--data", metavar="DIR", help="optional data directory; with tinyshakespeare/ it adds "
                   "the 'bard' expert (the default zoo needs no data)")


def register(subparsers) -> None:
    """Add the ``zoo`` command and its ``build``, ``list`` and ``matrix`` sub-commands."""
    zoo = subparsers.add_parser("zoo", help="build the embedded tiny experts (offline)",
                                description="The embedded default: tiny heterogeneous experts trained here, "
                                "from synthetic corpora and the Python standard library, cached on disk.")
    zsub = zoo.add_subparsers(dest="zoo_command", metavar="SUBCOMMAND")
    zoo.set_defaults(func=lambda args: (zoo.print_help(), 2)[1])

    b = zsub.add_parser("build", help="train the pool (reuses a complete cached zoo)",
                        description="Train the zoo's experts deterministically. A complete zoo with the same "
                        "recipe is reused; an interrupted build resumes where it stopped.")
    _add_where(b)
    b.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    b.add_argument("--experts", metavar="A,B", help="build only these experts (comma-separated)")
    b.add_argument("--steps-scale", type=float, default=1.0, metavar="F",
                   help="multiply every expert's training steps (e.g. 0.02 for a fast test zoo)")
    b.add_argument("--jobs", type=int, metavar="N",
                   help="experts trained at once, one process each (default: CPU cores, at most 8)")
    b.add_argument("--threads", type=int, metavar="N", help="torch CPU threads per expert (default 1 on CPU)")
    b.add_argument("--force", action="store_true", help="rebuild even if a complete zoo exists")
    b.add_argument("--quiet", action="store_true", help="no progress bars or summary")
    b.set_defaults(func=_cmd_build)

    ls = zsub.add_parser("list", help="print the pool with its model cards")
    _add_where(ls)
    ls.add_argument("--json", action="store_true", help="print the cards as JSON")
    ls.set_defaults(func=_cmd_list)

    m = zsub.add_parser("matrix", help="bits per byte of every expert on every specialty's held-out text",
                        description="The specialisation matrix: each expert's bits per byte (its own canonical "
                        "tokenization, comparable across tokenizers) on each specialty's held-out text.")
    _add_where(m)
    m.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    m.add_argument("--max-docs", type=int, metavar="N", help="score at most N documents per specialty")
    m.add_argument("--json", action="store_true", help="print the matrix as JSON")
    m.add_argument("--check", action="store_true",
                   help="exit 1 unless every expert is the best on its own specialty")
    m.set_defaults(func=_cmd_matrix)


def _experts_arg(value: str | None) -> list[str] | None:
    if value is None:
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise ValueError("--experts is empty; give names such as facts_a,facts_b")
    return names


def _cmd_build(args) -> int:
    from . import build_zoo

    paths = build_zoo(out=args.out, size=args.size, device=args.device, seed=args.seed, data_dir=args.data,
                      experts=_experts_arg(args.experts), progress=not args.quiet,
                      steps_scale=args.steps_scale, force=args.force, threads=args.threads,
                      jobs=args.jobs)
    root = Path(next(iter(paths.values()))).parent
    print(root)
    return 0


def _cards(args) -> dict[str, dict]:
    from . import zoo_cards

    return zoo_cards(out=args.out, size=args.size, seed=args.seed, data_dir=args.data)


def _cmd_list(args) -> int:
    from .cards import summary_table

    cards = _cards(args)
    if args.json:
        print(json.dumps(cards, indent=2, sort_keys=True))
        return 0
    print(summary_table(cards))
    print()
    for name, c in cards.items():
        t = c["training"]
        corpus = ", ".join(f"{x['specialty']} {x['tokens']:,} tok" for x in t["corpus"])
        print(f"{name}: {c['architecture']} {c['parameters']:,} params; {c['tokenizer']['description']}")
        print(f"    {c['note']}; corpus {corpus}; seed {t['seed']}; {c['path']}")
    return 0


def _cmd_matrix(args) -> int:
    from . import zoo_matrix
    from .cache import read_marker
    from .matrix import diagonal_violations, format_matrix

    cards = _cards(args)  # fails early, with the build hint, when the zoo is missing
    where = Path(next(iter(cards.values()))["path"]).parent
    data = args.data or (read_marker(where) or {}).get("data_dir")
    print(f"scoring {len(cards)} experts on held-out text ...", file=sys.stderr)
    m = zoo_matrix(out=where, data_dir=data, device=args.device, max_docs=args.max_docs)
    owners = {n: c["specialty"] for n, c in cards.items()}
    bad = diagonal_violations(m, owners)
    if args.json:
        print(json.dumps({"bits_per_byte": m, "specialty": owners, "violations": bad}, indent=2, sort_keys=True))
    else:
        print(format_matrix(m, owners))
        print("every expert is best on its own specialty" if not bad else "\n".join(bad))
    return 1 if (args.check and bad) else 0
