"""The ``logit-swarm`` command line: one entry point, one sub-command per job.

Each sub-command lives in the module that owns its job and exposes ``register(subparsers)``,
which adds its parser and sets ``func`` (called with the parsed namespace, returns an exit code).
Modules are imported lazily so that ``logit-swarm --help`` stays fast and a broken optional part
cannot take the whole tool down.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# (command, module that registers it). Order is the order shown in --help.
COMMANDS: list[tuple[str, str]] = [
    ("demo", "logit_swarm.commands.demo"),
    ("zoo", "logit_swarm.zoo.cli"),
    ("generate", "logit_swarm.commands.generate"),
    ("score", "logit_swarm.commands.score"),
    ("search", "logit_swarm.search.cli"),
    ("compare", "logit_swarm.search.cli_compare"),
    ("analyze", "logit_swarm.commands.analyze"),
    ("eval", "logit_swarm.tasks.cli"),
    ("serve", "logit_swarm.serve"),
    ("bench", "logit_swarm.commands.bench"),
]


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every sub-command whose module is present."""
    parser = argparse.ArgumentParser(
        prog="logit-swarm",
        description="Mix the next-token distributions of heterogeneous LLM experts and search "
        "the mixing weights with a particle swarm.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for _name, module in COMMANDS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            # Only skip commands whose own module does not exist yet; a missing dependency
            # inside an existing module is a real error the user must see.
            if exc.name == module:
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError, KeyError) as exc:
        # One line, actionable: the library's messages already say what to do.
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"logit-swarm {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"logit-swarm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
