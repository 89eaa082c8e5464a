"""Where next-token distributions come from.

* :mod:`.hf` — local Hugging Face causal LMs (KV cache per node; exact distributions);
* :mod:`.remote` — OpenAI-compatible completions endpoints that return top-k log-probabilities;
* :mod:`.vllm` — an in-process vLLM engine (optional dependency);
* :mod:`.sequence` — the shared half of the last two (nodes are token sequences, answers cached);
* :mod:`.topk` — the stated rule that turns a top-k answer into a full distribution.

``logit_swarm.load_expert`` chooses among them; import the modules directly for the classes.
"""
