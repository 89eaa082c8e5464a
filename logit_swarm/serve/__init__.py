"""An OpenAI-compatible HTTP server of one ensemble (``logit-swarm serve``).

Python::

    from logit_swarm.serve import make_server
    server = make_server(ens, host="127.0.0.1", port=0, api_key=None, max_logprobs=20).start()
    ...  # server.url == "http://127.0.0.1:<port>/v1"
    server.shutdown()

FastAPI + uvicorn (server.py; uvicorn runs in a background thread) over one engine thread
(scheduler.py) that owns the models and decodes with **continuous batching** (engine.py): a
request's rows join the running batch between decode steps (every ``join_every`` steps, 8) and
leave when they finish or
their client hangs up; rows beyond ``max_batch_rows`` wait in a bounded queue (429 when it is
full). A response never depends on the requests it was batched with: every row samples from its
own random stream and greedy decoding is the argmax of its own mixture. ``batching="static"``
(a batch runs to its end while new requests wait) and ``"sequential"`` are kept for comparison.
Module map: schema.py (pydantic wire models), protocol.py (validation, shapes), responses.py
(events → bodies and SSE chunks), chat.py (chat templates), echo.py (prompt scores),
tokenizers.py (tokenize / byte tokenizer), metrics.py (Prometheus), static/ (the playground).

Endpoints
---------
* ``GET /v1/models``, ``GET /v1/models/{model}``: the one served model. Besides OpenAI's fields
  the model object has ``unit``, ``mode``, ``weights``, ``experts`` and ``max_logprobs``.
* ``POST /v1/completions``, ``POST /v1/chat/completions``: below.
* ``GET /v1/models/{model}/tokenizer`` (logit_swarm extension): ``{"object": "tokenizer",
  "files": {filename: text}, "stop_ids", "context_window", "vocab_size", "fingerprint",
  "experts"}`` when the model's unit is the token (one expert, or experts that share one
  tokenizer; the files are the first expert's). Only text files are sent (tokenizer.json,
  tokenizer_config.json, special_tokens_map.json, added_tokens.json, chat_template.jinja/.json,
  vocab.json, merges.txt, whichever exist). 404 when the experts' tokenizers differ.
  For byte units the files are the **byte tokenizer**'s (ids 0..255 = bytes, 256 = ``<|stop|>``,
  its EOS), which ``transformers.AutoTokenizer`` loads; ``GET /v1/models/{model}/tokenizer.json``
  downloads the ``tokenizer.json`` alone.
* ``GET /tokenizer_info``, ``POST /tokenize`` (``{prompt | messages, add_special_tokens}`` →
  ``{count, max_model_len, tokens}``), ``POST /detokenize`` (``{tokens}`` → ``{prompt}``): vLLM's
  endpoints, in the shape lm-eval's ``RemoteTokenizer`` reads (``tokenizer_backend=remote``).
* ``GET /health``: ``{"status": "ok"}``. ``GET /metrics``: Prometheus (queue length, running rows,
  generated units and units/s, time to first unit, request latency). ``GET /docs``,
  ``/openapi.json``: the OpenAPI description. ``GET /``: the playground page. None of these need
  the API key; ``/v1/*``, the tokenizer routes and ``GET /stats`` (the engine's counters: jobs,
  steps, engine_calls, rows, echo_calls, cancelled_rows, errors, max_running_rows) do.

Units
-----
The mixture is over the ensemble's units: **tokens** of the shared tokenizer when every expert has
the same tokenizer, else **bytes** (256 values + STOP, every expert's EOS maps to STOP).
``max_tokens``, ``usage`` and every log-probability count these units. Token strings: a token's
bytes decoded as UTF-8; bytes that are not valid UTF-8 on their own are written
``bytes:\\xNN...`` (OpenAI's convention); special tokens (EOS) are their literal name; the byte
STOP unit is ``<|stop|>``. With ``return_tokens_as_token_ids: true`` (vLLM's extension) tokens
and top-logprob keys are ``token_id:N`` instead: N is the token id, or for byte units the byte
value, 256 = STOP. Log-probabilities are natural logs of the *mixture* (before temperature and
top_p, like vLLM's default); -inf is reported as -9999.0.

Completions (``/v1/completions``)
---------------------------------
* ``prompt``: a string, a list of strings, a list of token ids, or a list of lists of token ids.
  Token ids are used as they are (no BOS is added). For byte units they are the byte
  tokenizer's: byte values, and 256 (STOP) only as the first id, meaning "from the start of the
  text" (echo then also scores the first byte); they must form valid UTF-8. An empty prompt is
  refused (400).
  A string is encoded like ``Ensemble.generate`` does (with the tokenizer's own BOS, if it adds
  one). Choices are ordered prompt-major: choice ``i * n + j`` is sample j of prompt i.
* ``max_tokens`` (default 16; 0 is allowed with ``echo``), ``temperature`` (default 1; 0 =
  greedy), ``top_p``, ``n``, ``stop`` (a string or a list; the text is cut before the first
  occurrence, finish_reason "stop"), ``seed``, ``stream``, ``stream_options.include_usage``.
* ``logprobs: k``: for every returned unit, ``token_logprobs`` and ``top_logprobs`` (a dict of
  the k most probable units, plus the chosen one when it is not among them, so up to k+1
  entries; sorted best first; ties go to the lower unit id; keys that read alike keep the more
  probable value, use ``return_tokens_as_token_ids`` to avoid that). ``k = -1`` means every
  unit. ``k`` (and -1 = the vocabulary size) must not exceed the server's ``--max-logprobs``
  (default 20; -1 = no cap), else 400 naming the cap. ``text_offset``: where each unit's text
  starts in the returned ``text`` (the length of the text of the units before it; a BOS or EOS
  adds nothing), also in a stream and when tokens are shown as ``token_id:N``.
* Text: a completion's ``text`` is the decoding of (the prompt's last tokens + the generated
  tokens) minus the decoding of those prompt tokens, as vLLM does, so the leading space of a
  SentencePiece token is kept and prompt + completion decodes as the whole; stop strings are
  matched in this text (a stop string that starts with a space can match the first token).
* ``echo: true``: ``text`` starts with the prompt (token-id prompts: decoded with special tokens
  kept), and with ``logprobs`` the prompt's own units come first: ``token_logprobs[0]`` is None
  (nothing conditions the first unit) and ``top_logprobs[0]`` is None; for t ≥ 1 the value is
  log p(unit_t | units_<t) with the top-k at that position. Token units: the prompt's token ids
  exactly as encoded or given. Byte units: the prompt's UTF-8 bytes, each position's
  distribution being the byte-level one after the prompt's first t bytes (align/bytes.py,
  started from the empty text): the values for t ≥ 1 are the per-unit scores of
  ``Ensemble.table([""], [prompt])`` after its first unit. (Generation after a prompt
  follows the same byte-level process, as in ``Ensemble.generate``: the distribution after the
  prompt does not depend on where the prompt ends.)
  With ``max_tokens: 0`` only the prompt is scored
  (teacher forcing); with ``max_tokens: 1`` and ``logprobs: -1`` the last entry is the whole
  next-unit distribution after the prompt.
* The log-probs of generated units cover every unit the engine picked: a final STOP / EOS unit
  is included (it is not part of ``text``), and so are the units that completed a stop string.

Chat (``/v1/chat/completions``)
-------------------------------
* ``messages``: ``[{role, content}]``, content a string or a list of ``{"type": "text"}`` parts.
  Every expert renders the messages with **its own** chat template (generation prompt added);
  an expert without one uses the server's ``--chat-template``, else the default transcript
  template of chat.py ("role: content" lines, then "assistant:"); the server warns at start.
  The reply is one text shared by all experts.
* ``max_tokens`` / ``max_completion_tokens`` (default: whatever fits in the context window),
  ``temperature``, ``top_p``, ``n``, ``stop``, ``seed``, ``stream``, ``stream_options``.
* ``logprobs: true`` (+ ``top_logprobs: k``, default 0, -1 = all, capped as above):
  ``choices[i].logprobs.content[] = {token, logprob, bytes, top_logprobs: [{token, logprob,
  bytes}]}`` with exactly k top entries; ``bytes`` is the unit's bytes (one byte for byte
  units), null for units without bytes (EOS, STOP).

Both endpoints
--------------
* ``weights`` (extension): one float per expert, replacing the recipe's weights for this request;
  ``mode`` (extension): "probs" or "logits"; ``return_expert_logprobs`` (extension): each choice
  (and each stream chunk, which then also names its ``unit``) carries ``expert_logprobs``, per
  generated unit every expert's log-probability of it (what the playground colours by).
* ``seed``: choice i samples from the random stream (seed, i), exactly like
  ``Ensemble.generate(rows, seed=seed)``; a request without ``seed`` draws a fresh one. Integers
  outside [0, 2**64) are taken modulo 2**64.
* ``usage``: ``prompt_tokens`` = prompt units (token units: prompt tokens; byte units: prompt
  bytes, for chat the longest of the experts' rendered prompts), counted once per prompt;
  ``completion_tokens`` = all generated units of all choices (a final STOP included); ``unit``
  (extension) says what is counted: "tokens of <expert>'s tokenizer" or "bytes".
* Streaming: server-sent events ``data: {...}`` then ``data: [DONE]``; one chunk per unit
  (text deltas are held back while they might be the start of a stop string or an incomplete
  UTF-8 character), then one chunk with ``finish_reason`` per choice; with ``include_usage``
  a last chunk with empty ``choices`` and the usage. A completions stream with ``echo`` sends
  the prompt (and its log-probs) first. A stream that fails midway gets ``data: {"error": ...}``.
  A client that disconnects (streamed or not) has its rows dropped from the batch at the next
  step and their states freed.
* Errors: ``{"error": {"message", "type", "param", "code"}}``: 400 bad request (types are checked
  against the pydantic models of schema.py, then meaning; including a
  prompt plus ``max_tokens`` beyond an expert's context window; for byte units the bound
  counts one token per byte, the most a byte can cost), 401 missing/wrong API key, 404 unknown
  model or route, 405, 411/413 body problems, 429 queue full (``--max-queue``), 500 internal
  error (the server keeps running; a failed decode step fails the requests in that batch),
  503 shutting down. A request may ask for at most ``--max-request-rows`` rows (prompts × n).

Not supported (400 when set to a non-default value): ``logit_bias``, ``presence_penalty``,
``frequency_penalty``, ``best_of`` ≠ n, ``suffix``, ``prompt_logprobs`` (use ``echo`` +
``logprobs``), tools / functions, ``response_format`` other than text, chat ``echo`` and
``continue_final_message``, guided decoding. Unknown fields are ignored (like vLLM).
Not implemented: ``/v1/embeddings`` and other endpoints, prefix caching across requests, TLS.
"""

from __future__ import annotations

from .protocol import ApiError, ServedModel, UnitTable


def __getattr__(name: str):
    # fastapi / uvicorn / prometheus-client are the optional `serve` extra: imported only when
    # the server itself is asked for, so `logit-swarm --help` works without them.
    if name in ("SwarmServer", "make_server"):
        from . import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register(subparsers):
    """Add the ``serve`` sub-command (defined in ``logit_swarm/commands/serve.py``)."""
    from ..commands.serve import register as _register

    return _register(subparsers)


__all__ = ["ApiError", "ServedModel", "SwarmServer", "UnitTable", "make_server", "register"]
