"""KV storage for a forest of token sequences ("nodes") of one expert.

Every place where the engine needs an expert's next-token distribution is a *node*: a token
sequence whose keys and values are cached. A node is created from a parent node plus one token
(or, at prefill, from a whole prompt), so prompts shared by many rows, rows that share a
generated prefix, and the alternative tokenizations of the byte-level path all reuse the cache of
what they have in common.

Storage is by *group*: the nodes created by one batched forward pass live together in one set of
per-layer tensors ``[G, heads, L, head_dim]``, left-padded (padding is masked and does not move
position ids). A forward for new nodes gathers their parents' rows; when the parents are exactly
one whole group in order (the common decode step) the tensors are used as they are, with no
copy. A group is freed when its last node is released.

Layers need not keep the same length. A sliding-window layer (Mistral, Gemma-2/3, ...) keeps only
the last ``window - 1`` keys of the padded layout, as transformers' own cache does; a full layer
keeps all ``L``. The mask and ``next_pos`` always describe the full padded layout, and a layer's
tensors are its last ``min(L, its capacity)`` slots. When groups of different lengths are
gathered, every layer is left-padded to the longest stored length *of that layer*, which is
``min(L_max, window - 1)`` for a sliding layer: the added slots are padding of the shorter rows
(masked), so the layout stays exactly what each layer's cache would hold.

:func:`layer_windows` reads that per-layer layout from a model at load time and refuses caches
the store cannot fork (linear attention, hybrid state-space layers, KV sharing, chunked attention,
custom cache classes) with a clear message; :func:`make_cache` rebuilds a transformers cache over
stored tensors for one forward pass.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer


@dataclass
class _Group:
    keys: list[torch.Tensor]  # per layer [G, H, L, D]
    values: list[torch.Tensor]
    mask: torch.Tensor  # [G, L] long, 1 = real token
    next_pos: torch.Tensor  # [G] long: position id of the next token (= real tokens so far)
    alive: int


class NodeStore:
    """Owns the cached nodes of one expert. Node ids are small ints, never reused."""

    def __init__(self) -> None:
        self._groups: dict[int, _Group] = {}
        self._where: dict[int, tuple[int, int]] = {}  # node -> (group id, row)
        self._refs: dict[int, int] = {}
        self._next_node = 0
        self._next_group = 0

    def __len__(self) -> int:
        return len(self._where)

    def length(self, node: int) -> int:
        """Number of real tokens in ``node``'s sequence."""
        g, r = self._where[node]
        return int(self._groups[g].next_pos[r])

    def add_group(self, keys, values, mask, next_pos) -> list[int]:
        """Store a freshly computed group of rows; returns their node ids (refcount 1 each)."""
        gid = self._next_group
        self._next_group += 1
        n = int(mask.shape[0])
        self._groups[gid] = _Group(list(keys), list(values), mask, next_pos, n)
        ids = list(range(self._next_node, self._next_node + n))
        self._next_node += n
        for r, nid in enumerate(ids):
            self._where[nid] = (gid, r)
            self._refs[nid] = 1
        return ids

    def retain(self, node: int) -> None:
        """Add a reference to ``node`` (another row or path now depends on it)."""
        self._refs[node] += 1

    def release(self, node: int) -> None:
        """Drop a reference; the node's storage is freed with its group's last node."""
        self._refs[node] -= 1
        if self._refs[node] > 0:
            return
        del self._refs[node]
        gid, _ = self._where.pop(node)
        grp = self._groups[gid]
        grp.alive -= 1
        if grp.alive == 0:
            del self._groups[gid]

    def gather(self, parents: list[int]):
        """Keys, values, mask and next positions for ``parents``, left-padded to one length.

        Returns (keys, values, mask, next_pos) with batch dimension len(parents). Leading columns
        that are padding for every returned row are cut off (views, no copy): without that, a
        batch that rows keep joining and leaving (the server's continuous batching) would carry
        the padding of rows long gone and grow one column per step.
        """
        return _trim(*self._gather(parents))

    def _gather(self, parents: list[int]):
        locs = [self._where[p] for p in parents]
        gids = [g for g, _ in locs]
        first = gids[0]
        if all(g == first for g in gids):
            grp = self._groups[first]
            rows = [r for _, r in locs]
            if rows == list(range(grp.mask.shape[0])):
                # The whole group in order: the usual decode step. No copy.
                return grp.keys, grp.values, grp.mask, grp.next_pos
            idx = torch.tensor(rows, device=grp.mask.device)
            return (
                [k.index_select(0, idx) for k in grp.keys],
                [v.index_select(0, idx) for v in grp.values],
                grp.mask.index_select(0, idx),
                grp.next_pos.index_select(0, idx),
            )
        # Parents from several groups (different lengths): left-pad each part, then concat.
        order: dict[int, list[tuple[int, int]]] = {}
        for pos, (g, r) in enumerate(locs):
            order.setdefault(g, []).append((pos, r))
        length = max(self._groups[g].mask.shape[1] for g in order)
        # Per layer: the longest stored length (min(L_max, window - 1) for sliding layers).
        n_layers = len(self._groups[first].keys)
        widths = [max(self._groups[g].keys[i].shape[2] for g in order) for i in range(n_layers)]
        parts_k, parts_v, parts_m, parts_p, positions = None, None, [], [], []
        for g, items in order.items():
            grp = self._groups[g]
            idx = torch.tensor([r for _, r in items], device=grp.mask.device)
            pad = length - grp.mask.shape[1]
            ks = [_left_pad(k.index_select(0, idx), w - k.shape[2]) for k, w in zip(grp.keys, widths)]
            vs = [_left_pad(v.index_select(0, idx), w - v.shape[2]) for v, w in zip(grp.values, widths)]
            m = grp.mask.index_select(0, idx)
            if pad:
                m = torch.cat([m.new_zeros(m.shape[0], pad), m], dim=1)
            if parts_k is None:
                parts_k, parts_v = [[k] for k in ks], [[v] for v in vs]
            else:
                for lst, t in zip(parts_k, ks):
                    lst.append(t)
                for lst, t in zip(parts_v, vs):
                    lst.append(t)
            parts_m.append(m)
            parts_p.append(grp.next_pos.index_select(0, idx))
            positions.extend(p for p, _ in items)
        # Restore the caller's order.
        inv = torch.empty(len(positions), dtype=torch.long)
        inv[torch.tensor(positions)] = torch.arange(len(positions))
        inv = inv.to(parts_m[0].device)
        keys = [torch.cat(lst, 0).index_select(0, inv) for lst in parts_k]
        values = [torch.cat(lst, 0).index_select(0, inv) for lst in parts_v]
        mask = torch.cat(parts_m, 0).index_select(0, inv)
        next_pos = torch.cat(parts_p, 0).index_select(0, inv)
        return keys, values, mask, next_pos


def _trim(keys, values, mask, next_pos):
    """Drop the leading columns that are padding in every row (positions are explicit ids, so the
    column index carries no meaning)."""
    live = mask.any(dim=0)
    if mask.shape[1] == 0 or bool(live[0]):
        return keys, values, mask, next_pos
    first = int(live.long().argmax()) if bool(live.any()) else mask.shape[1]
    keep = mask.shape[1] - first
    # Layers are right-aligned with the mask; a sliding-window layer may hold fewer columns than
    # the mask, so each layer keeps at most its last ``keep`` columns.
    return ([k[:, :, max(0, k.shape[2] - keep):] for k in keys], [v[:, :, max(0, v.shape[2] - keep):] for v in values],
            mask[:, first:], next_pos)


def _left_pad(t: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad the sequence axis (dim 2 of [B, H, L, D]) on the left with zeros."""
    if pad == 0:
        return t
    z = t.new_zeros(t.shape[0], t.shape[1], pad, t.shape[3])
    return torch.cat([z, t], dim=2)


# The layer kinds the store can fork: plain KV tensors that grow with the sequence.
_FORKABLE = (DynamicLayer, DynamicSlidingWindowLayer)


def _refuse(name: str, why: str) -> ValueError:
    return ValueError(
        f"expert {name!r}: {why}; the engine forks per-token key/value caches and cannot fork this "
        "one. Use an attention-only model (Llama, Mistral, Gemma, Qwen, GPT-2, ...) or serve this "
        "model behind an endpoint and add it as a remote expert (URL#model)"
    )


def _window_of(layer, i: int, name: str, layer_types) -> int | None:
    """One cache layer's sliding window (None: full attention); refuses unforkable layers."""
    if type(layer) not in _FORKABLE:
        kind = layer_types[i] if layer_types and i < len(layer_types) else type(layer).__name__
        raise _refuse(name, f"layer {i} is a {kind!r} layer ({type(layer).__name__})")
    return int(layer.sliding_window) if isinstance(layer, DynamicSlidingWindowLayer) else None


def layer_windows(model, name: str) -> list[int | None] | None:
    """Per decoder layer, its sliding window (None for full attention), read from the config;
    None when transformers cannot build a cache template from this config (the load-time
    probe's cache then decides, see :func:`check_cache`).

    Raises ValueError naming the layer type for layouts the store cannot fork (linear attention,
    hybrid / state-space layers, KV sharing, chunked attention).
    """
    config = model.config
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    types = getattr(text, "layer_types", None)
    if "chunked_attention" in set(types or []):
        raise _refuse(name, "it uses chunked attention, whose mask the engine does not reproduce")
    if getattr(text, "kv_sharing_modes", None) is not None or getattr(text, "num_kv_shared_layers", 0):
        raise _refuse(name, "some of its layers share another layer's key/value cache")
    try:
        template = DynamicCache(config=config)
    except (AttributeError, TypeError, ValueError, KeyError):  # an unusual config: the probe decides
        return None
    return [_window_of(layer, i, name, types) for i, layer in enumerate(template.layers)]


def check_cache(cache, windows: list[int | None] | None, name: str) -> list[int | None]:
    """The layout of a model's own output cache, checked against :func:`layer_windows`'.

    Run once at load on a two-token probe, so that a model whose forward builds another kind of
    cache (a state-space or hybrid cache, a custom class) is refused before any real work.
    """
    if not isinstance(cache, DynamicCache) or not hasattr(cache, "layers"):
        raise _refuse(name, f"its forward returns a {type(cache).__name__}, not a DynamicCache")
    got = [_window_of(layer, i, name, None) for i, layer in enumerate(cache.layers)]
    for i, layer in enumerate(cache.layers):
        keys = getattr(layer, "keys", None)
        if not isinstance(keys, torch.Tensor) or keys.dim() != 4:
            raise _refuse(name, f"cache layer {i} ({type(layer).__name__}) has no plain [B, H, L, D] keys")
    if windows is not None and got != windows:
        raise _refuse(name, f"its forward builds a cache with layer windows {got} where its config "
                            f"declares {windows}")
    return got


def make_cache(keys, values, windows: list[int | None], length: int):
    """A DynamicCache over stored per-layer tensors (no copy) for sequences of padded ``length``.

    Sliding layers get a :class:`DynamicSlidingWindowLayer` that knows it has seen ``length``
    slots, so transformers sizes its mask (offset ``length - window + 1``) and trims it after the
    forward exactly as in its own generation loop. ``DynamicCache(ddp_cache_data=...)`` would
    copy every layer by concatenation (about 20% of a tiny model's step); layers are filled
    directly instead.
    """
    layers = []
    for k, v, w in zip(keys, values, windows):
        layer = DynamicLayer() if w is None else DynamicSlidingWindowLayer(sliding_window=w)
        layer.lazy_initialization(k, v)
        layer.keys, layer.values = k, v
        if w is not None:
            layer.cumulative_length = int(length)
        layers.append(layer)
    cache = DynamicCache()
    cache.layers = layers
    return cache


def cache_kwarg(model) -> str:
    """The forward keyword that takes a cache: ``cache`` (transformers >= 5.2x; the old name
    ``past_key_values`` warns and goes away in 5.40) or ``past_key_values`` (earlier 5.x)."""
    params = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def output_cache(out):
    """The cache a forward returned, under either name (reading the old name warns)."""
    got = out.get("cache") if hasattr(out, "get") else None
    return got if got is not None else out.past_key_values
