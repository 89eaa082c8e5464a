"""``logit-swarm serve``: an OpenAI-compatible HTTP server of a recipe, or of experts given directly.

::

    logit-swarm serve --recipe best.json                       # http://127.0.0.1:8000/v1
    logit-swarm serve --experts zoo/facts_a --port 8001 --max-logprobs -1
    logit-swarm serve --experts a b --weights 0.7 0.3 --mode logits --api-key SECRET

The protocol (endpoints, fields, units) is documented in ``logit_swarm/serve/__init__.py`` and the
README's "Serving" section. SIGINT / SIGTERM stop it gracefully: no new connections, the
requests already accepted are answered, then it exits (a second signal exits at once).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from ..windows import add_truncation_argument


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``serve`` sub-command."""
    p = subparsers.add_parser(
        "serve", help="OpenAI-compatible HTTP server (completions, chat, logprobs) of a recipe or experts",
        description="Serve an ensemble over HTTP with the OpenAI API: /v1/models, /v1/completions, "
        "/v1/chat/completions (streaming, logprobs, echo, token-id prompts), /tokenize, /detokenize, "
        "/tokenizer_info, /metrics, /docs and a playground page at /. "
        "Give a recipe, or expert directories (one zoo expert can be served alone).",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--recipe", help="recipe JSON (from `logit-swarm search` or Ensemble.save)")
    src.add_argument("--experts", nargs="+", metavar="DIR", help="expert model directories (instead of a recipe)")
    p.add_argument("--weights", nargs="+", type=float, metavar="W", help="one weight per --experts (default uniform)")
    p.add_argument("--mode", choices=["probs", "logits"], help="mixing mode with --experts (default probs)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port)")
    p.add_argument("--api-key", default=os.environ.get("LOGIT_SWARM_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $LOGIT_SWARM_API_KEY, else no key)")
    p.add_argument("--max-logprobs", type=int, default=20,
                   help="cap on logprobs / top_logprobs per position (default 20; -1 = no cap, needed for "
                   "logprobs=-1, i.e. whole distributions)")
    p.add_argument("--model-name", help="the model id clients send (default: the recipe's file name, or the "
                   "experts' names joined by '+')")
    p.add_argument("--device", default="cpu", help="device for the experts (default cpu)")
    p.add_argument("--batch-window-ms", type=float, default=5.0,
                   help="with --batching static: how long a batch waits for more requests (default 5 ms)")
    p.add_argument("--max-batch-rows", type=int, default=64,
                   help="the most rows (prompts × n) decoded together (default 64); more wait in the queue")
    p.add_argument("--batching", choices=["continuous", "static", "sequential"], default="continuous",
                   help="continuous (default): requests join the running batch at the next step; static: a "
                   "batch runs to its end while new requests wait (for comparison); sequential: one at a time")
    p.add_argument("--join-every", type=int, default=8,
                   help="continuous batching: while rows decode, new requests join every N steps, their "
                   "prefills batched together (default 8; 1 = every step)")
    p.add_argument("--max-queue", type=int, default=1024,
                   help="requests that may wait before the server answers 429 (default 1024)")
    p.add_argument("--max-request-rows", type=int, default=512,
                   help="rows (prompts × n) one request may ask for (default 512)")
    p.add_argument("--chat-template", metavar="FILE",
                   help="Jinja chat template for experts without one (default: a plain 'role: content' "
                   "transcript, see logit_swarm/serve/chat.py)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no access log on stderr")
    add_truncation_argument(p)
    p.set_defaults(func=run)
    return p


def _check(args: argparse.Namespace) -> None:
    if args.recipe and (args.weights or args.mode):
        raise ValueError("--weights and --mode go with --experts; a recipe carries its own (edit it, or pass "
                         "per-request 'weights' / 'mode')")
    if args.weights and len(args.weights) != len(args.experts):
        raise ValueError(f"got {len(args.weights)} --weights for {len(args.experts)} --experts; give one per expert")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    if args.max_logprobs < -1:
        raise ValueError(f"--max-logprobs must be ≥ 0, or -1 for no cap; got {args.max_logprobs}")
    for name in ("max_batch_rows", "max_queue", "max_request_rows", "join_every"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(args, name)}")
    if args.chat_template and not Path(args.chat_template).is_file():
        raise ValueError(f"--chat-template {args.chat_template}: no such file; give a Jinja template file")
    if args.batch_window_ms < 0:
        raise ValueError(f"--batch-window-ms must be ≥ 0, got {args.batch_window_ms}")


def run(args: argparse.Namespace) -> int:
    """Run ``serve`` until SIGINT/SIGTERM; returns the exit code."""
    _check(args)
    if args.recipe:
        from logit_swarm.recipe import read_recipe

        read_recipe(args.recipe)  # a bad recipe fails here, before any model is loaded
    import torch

    import logit_swarm as ls

    try:
        from logit_swarm.serve.server import make_server, print_banner
    except ImportError as exc:  # fastapi / uvicorn / prometheus-client live in the `serve` extra
        raise ValueError(f"serving needs the 'serve' extra ({exc.name} is missing): "
                         "pip install 'logit_swarm[serve]'") from None

    if args.threads:
        torch.set_num_threads(args.threads)
    say = (lambda m: print(m, file=sys.stderr, flush=True))
    if args.recipe:
        say(f"loading recipe {args.recipe} ...")
        ens = ls.Ensemble.load(args.recipe, device=args.device)
        name = args.model_name or Path(args.recipe).stem
    else:
        say(f"loading {len(args.experts)} expert(s) ...")
        experts = [ls.load_expert(d, device=args.device) for d in args.experts]
        ens = ls.Ensemble(experts, weights=args.weights, mode=args.mode or "probs")
        name = args.model_name
    ens.truncation = args.truncation  # what an expert with a short window sees (windows.py)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        say(f"warning: listening on {args.host} without --api-key: anyone who can reach it can use it")
    server = make_server(ens, host=args.host, port=args.port, api_key=args.api_key,
                         max_logprobs=args.max_logprobs, model_name=name, batch_window_ms=args.batch_window_ms,
                         max_batch_rows=args.max_batch_rows, log=None if args.quiet else say,
                         batching=args.batching, max_queue=args.max_queue, max_request_rows=args.max_request_rows,
                         chat_template=args.chat_template, join_every=args.join_every)
    if server.chat.warning():
        say(server.chat.warning())
    stopping = threading.Event()

    def on_signal(signum, frame):
        if stopping.is_set():  # second signal: do not wait any longer
            raise KeyboardInterrupt
        stopping.set()
        say(f"{signal.Signals(signum).name}: finishing the requests in flight, then stopping "
            "(send it again to stop at once)")
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    server.start()
    print_banner(server)
    server.wait()
    say("stopped")
    return 0
