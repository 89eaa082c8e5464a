"""Task data: where records come from, and how raw records become uniform examples.

Sources (the ``data:`` entry of a task spec):

* a paper-format JSON file, ``{"dataset": ..., "dev": [...], "test": [...], ["icl_prompt"]}``
  (the Model Swarms repository's ``data/eval/*.json``); extra top-level strings such as
  ``icl_prompt`` are kept as *extras*;
* one file per split, ``{dev: a.jsonl, test: b.csv}``: JSON Lines, a JSON list, or CSV;
* a registered generator, ``{generator: NAME, sizes: {dev: 50, test: 200}, seed: 0, ...}``
  (the synthetic zoo tasks);
* in Python, records given directly: ``{"dev": [...], "test": [...]}``.

Files are read with ``datasets`` (its JSON and CSV builders, cached by the library). Relative
paths are relative to the spec file's folder. Records are then *normalised* per task kind by
the ``*_example`` functions below, which also apply the spec's ``fields`` mapping
(canonical name -> name in the file).
"""

from __future__ import annotations

import contextlib
import csv
import json
import numbers
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .registry import Registry

ENV_DATA = "LOGIT_SWARM_DATA"
PAPER_SUBDIR = "model_swarm_eval"

Record = dict[str, Any]
Generator = Callable[..., list[Record]]
#: Registered record generators, called as ``fn(split=..., n=..., seed=..., **args)``.
GENERATORS: Registry[Generator] = Registry("record generator")


# --------------------------------------------------------------------------------------------
# Data directories


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """The data directory: ``data_dir`` if given, else ``$LOGIT_SWARM_DATA``; must exist."""
    raw = data_dir if data_dir is not None else os.environ.get(ENV_DATA)
    if not raw:
        raise FileNotFoundError(
            f"no data directory: pass data_dir=... (--data on the command line) or set "
            f"{ENV_DATA}, e.g. {ENV_DATA}=/path/to/shared/data"
        )
    path = Path(raw).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"data directory {str(path)!r} does not exist")
    return path


def paper_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """The folder holding the paper's ``*.json`` splits: ``DIR/model_swarm_eval`` or ``DIR``."""
    root = resolve_data_dir(data_dir)
    sub = root / PAPER_SUBDIR
    return sub if sub.is_dir() else root


# --------------------------------------------------------------------------------------------
# Reading files


@contextlib.contextmanager
def _datasets_offline() -> Iterator[Any]:
    """``datasets`` with no network and no progress bars, restored afterwards.

    ``load_dataset`` pings a Hugging Face bucket to count downloads even for local files (an
    HTTP HEAD with a 3 s timeout per call, which stalls on machines without internet); local
    files need neither that nor any hub lookup, so both are switched off for the call.
    """
    import datasets

    cfg = datasets.config
    saved = (cfg.HF_HUB_OFFLINE, cfg.HF_UPDATE_DOWNLOAD_COUNTS)
    bars = not datasets.utils.are_progress_bars_disabled()
    cfg.HF_HUB_OFFLINE, cfg.HF_UPDATE_DOWNLOAD_COUNTS = True, False
    if bars:
        datasets.utils.disable_progress_bars()
    try:
        yield datasets
    finally:
        cfg.HF_HUB_OFFLINE, cfg.HF_UPDATE_DOWNLOAD_COUNTS = saved
        if bars:
            datasets.utils.enable_progress_bars()


def _datasets_load(builder: str, path: Path, field: str | None = None) -> list[Record]:
    with _datasets_offline() as datasets:
        kwargs = {"field": field} if field is not None else {}
        ds = datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
        return ds.to_list()


def _stdlib_load(fmt: str, path: Path, field: str | None = None) -> list[Record]:
    if fmt == "csv":
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    if fmt == "jsonl":
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    with open(path, encoding="utf-8") as f:
        obj = json.load(f)
    return list(obj[field] if field is not None else obj)


def _format_of(path: Path) -> str:
    name = path.name.lower()
    for suffix, fmt in ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "json"), (".csv", "csv")):
        if name.endswith(suffix):
            return fmt
    raise ValueError(f"{str(path)!r}: unknown data format; use .jsonl, .json or .csv")


def read_records(path: str | os.PathLike, field: str | None = None) -> list[Record]:
    """Read one file of records (JSON Lines, JSON list, CSV, or one ``field`` of a JSON object).

    ``datasets`` reads it. It keeps an Arrow cache under ``~/.cache/huggingface``; when that
    cannot be written (a read-only home), the standard library reads the file instead.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data file {str(p)!r} does not exist")
    fmt = _format_of(p)
    try:
        return _datasets_load("csv" if fmt == "csv" else "json", p, field)
    except OSError:
        return _stdlib_load(fmt, p, field)


def is_paper_file(path: Path) -> bool:
    """Whether ``path`` is one JSON object with list-valued splits (the paper's format)."""
    if _format_of(path) != "json":
        return False
    with open(path, encoding="utf-8") as f:
        head = f.read(1 << 12).lstrip()
    return head.startswith("{")


# --------------------------------------------------------------------------------------------
# Sources


class DataSource:
    """Records per split, read lazily once and kept; plus ``extras`` (e.g. ``icl_prompt``).

    ``paper_format``: the records come from files in the Model Swarms paper's format (one JSON
    object of splits), whose multiple-choice prompts default to the paper's template.
    """

    def __init__(self, loaders: Mapping[str, Callable[[], list[Record]]],
                 extras: Mapping[str, Any] | None = None, description: str = "records",
                 paper_format: bool = False):
        self.paper_format = paper_format
        self._loaders = dict(loaders)
        self._cache: dict[str, list[Record]] = {}
        self.extras = dict(extras or {})
        self.description = description

    @property
    def splits(self) -> list[str]:
        """The split names this source can provide."""
        return list(self._loaders)

    def records(self, split: str) -> list[Record]:
        """All raw records of ``split`` (not limited; the task applies its limits)."""
        if split not in self._loaders:
            raise ValueError(
                f"{self.description} has no split {split!r}; available: {', '.join(self.splits)}"
            )
        if split not in self._cache:
            self._cache[split] = list(self._loaders[split]())
        return self._cache[split]

    @classmethod
    def from_records(cls, records: Mapping[str, Sequence[Record]], **extras: Any) -> DataSource:
        """Records given in Python, ``{"dev": [...], "test": [...]}``."""
        return cls({k: (lambda v=v: [dict(r) for r in v]) for k, v in records.items()},
                   extras, description="in-memory records")

    @classmethod
    def from_paper_file(cls, path: str | os.PathLike) -> DataSource:
        """A paper-format file: every list-valued top-level key is a split, strings are extras."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"data file {str(p)!r} does not exist")
        with open(p, encoding="utf-8") as f:
            top = json.load(f)
        if not isinstance(top, dict):
            raise ValueError(f"{str(p)!r} is a JSON list; the paper format is an object "
                             f'{{"dev": [...], "test": [...]}}. Write data: {{dev: {p.name}}}')
        splits = [k for k, v in top.items() if isinstance(v, list)]
        if not splits:
            raise ValueError(f"{str(p)!r} has no list-valued splits such as 'dev' and 'test'")
        extras = {k: v for k, v in top.items() if isinstance(v, str)}
        return cls({s: (lambda s=s: read_records(p, field=s)) for s in splits}, extras,
                   description=f"data file {p.name!r}", paper_format=True)

    @classmethod
    def from_spec(cls, data: Any, base_dir: str | os.PathLike | None) -> DataSource:
        """Build from a spec's ``data:`` entry (see the module docstring)."""
        base = Path(base_dir) if base_dir is not None else Path.cwd()

        def where(rel: Any) -> Path:
            p = Path(str(rel)).expanduser()
            return p if p.is_absolute() else base / p

        if isinstance(data, (str, os.PathLike)):
            p = where(data)
            if not p.is_file():
                raise FileNotFoundError(f"data file {str(p)!r} does not exist")
            if not is_paper_file(p):
                raise ValueError(
                    f"data: {data} has no splits; write data: {{dev: {Path(str(data)).name}, "
                    f"test: ...}} or use the paper format {{\"dev\": [...], \"test\": [...]}}"
                )
            return cls.from_paper_file(p)
        if isinstance(data, Mapping) and "generator" in data:
            opts = dict(data)
            fn = GENERATORS.get(opts.pop("generator"))
            sizes = opts.pop("sizes", None)
            seed = int(opts.pop("seed", 0))
            if not isinstance(sizes, Mapping) or not sizes:
                raise ValueError("a generator source needs sizes: {dev: N, test: M}")
            return cls({s: (lambda s=s, n=int(n): fn(split=s, n=n, seed=seed, **opts))
                        for s, n in sizes.items()}, description=f"generator {data['generator']!r}")
        if isinstance(data, Mapping) and data:
            loaders = {}
            paper = []
            for split, rel in data.items():
                if isinstance(rel, list):  # records inline in the spec
                    loaders[split] = (lambda rel=rel: [dict(r) for r in rel])
                    continue
                p = where(rel)
                if not p.is_file():
                    raise FileNotFoundError(f"data file for split {split!r}: {str(p)!r} does not exist")
                # A paper-format object file given for one split provides that split's list.
                field_name = split if is_paper_file(p) else None
                paper.append(field_name is not None)
                loaders[split] = (lambda p=p, f=field_name: read_records(p, field=f))
            return cls(loaders, description="task data", paper_format=bool(paper) and all(paper))
        raise ValueError("data: must be a paper-format .json path, {split: path, ...} or "
                         "{generator: NAME, sizes: {...}}")


# --------------------------------------------------------------------------------------------
# Normalising records into examples

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def field(raw: Record, canonical: str, fields: Mapping[str, Any] | None,
          candidates: Sequence[str], required: bool = True) -> Any:
    """The value of a canonical field: the mapped name if ``fields`` maps it, else the first of
    ``candidates`` present. A missing required field raises ``ValueError`` listing the keys."""
    if fields and canonical in fields:
        name = fields[canonical]
        if isinstance(name, (list, tuple)):  # e.g. choices spread over columns A, B, C, D
            missing = [n for n in name if n not in raw]
            if missing:
                raise ValueError(f"record has no field(s) {missing} (mapped for {canonical!r}); "
                                 f"it has {sorted(raw)}")
            return [raw[n] for n in name]
        if name not in raw:
            raise ValueError(f"record has no field {name!r} (mapped for {canonical!r}); "
                             f"it has {sorted(raw)}")
        return raw[name]
    for name in candidates:
        if name in raw and raw[name] is not None:
            return raw[name]
    if required:
        raise ValueError(
            f"record has none of {list(candidates)} for {canonical!r}; it has {sorted(raw)}. "
            f"Map it in the spec: fields: {{{canonical}: <your field name>}}"
        )
    return None


def _choices(value: Any) -> tuple[list[str], list[str]]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"choices must be a list or a {{label: text}} mapping, got {value!r}") from None
    if isinstance(value, Mapping):
        # ``datasets`` pads missing keys with None when questions have different option counts.
        items = [(str(k), str(v)) for k, v in value.items() if v is not None]
        return [k for k, _ in items], [v for _, v in items]
    if isinstance(value, (list, tuple)):
        texts = [str(v) for v in value if v is not None]
        if len(texts) > len(LETTERS):
            raise ValueError(f"{len(texts)} choices; at most {len(LETTERS)} are supported")
        return list(LETTERS[: len(texts)]), texts
    raise ValueError(f"choices must be a list or a {{label: text}} mapping, got {type(value).__name__}")


def _answer_index(answer: Any, labels: list[str], texts: list[str]) -> int:
    """A label ("B") wins, then an option text, then an integer index (0-based)."""
    if isinstance(answer, str):
        a = answer.strip()
        if a in labels:
            return labels.index(a)
        if a in texts:
            return texts.index(a)
        if a.lstrip("-").isdigit():
            answer = int(a)
    if isinstance(answer, numbers.Integral) and not isinstance(answer, bool):
        if 0 <= answer < len(texts):
            return int(answer)
        raise ValueError(f"answer index {answer} is out of range for {len(texts)} choices")
    raise ValueError(f"answer {answer!r} is neither a label in {labels}, an option text, nor an index")


def mc_example(raw: Record, fields: Mapping[str, Any] | None = None) -> Record:
    """A multiple-choice example: ``prompt``, ``labels``, ``choices`` (texts), ``answer`` (index)."""
    labels, texts = _choices(field(raw, "choices", fields, ("choices", "options", "endings")))
    if len(texts) < 2:
        raise ValueError(f"a multiple-choice record needs at least 2 choices, got {texts}")
    ans = _answer_index(field(raw, "answer", fields, ("answer", "label", "gold", "target")), labels, texts)
    prompt = field(raw, "prompt", fields, ("prompt", "question", "query", "ctx"))
    return {"prompt": str(prompt), "labels": labels, "choices": texts, "answer": ans, "raw": raw}


def em_example(raw: Record, fields: Mapping[str, Any] | None = None) -> Record:
    """An exact-match example: ``prompt`` and ``answer`` (a string)."""
    prompt = field(raw, "prompt", fields, ("prompt", "question", "query", "input"))
    answer = field(raw, "answer", fields, ("answer", "target", "output", "label"))
    return {"prompt": str(prompt), "answer": str(answer).strip(), "raw": raw}


def prompt_example(raw: Record, fields: Mapping[str, Any] | None = None) -> Record:
    """A prompt-only example (reward, judge, toxicity): ``prompt``."""
    prompt = field(raw, "prompt", fields, ("prompt", "question", "instruction", "input"))
    return {"prompt": str(prompt), "raw": raw}


def text_example(raw: Record, fields: Mapping[str, Any] | None = None) -> Record:
    """A likelihood example: ``context`` (may be empty) and ``target`` text to score.

    ``{"text": ...}`` scores the whole text from an empty context; ``{"prompt", "answer"}``
    (or ``context``/``target``, ``completion``) scores the answer given the prompt.
    """
    text = field(raw, "text", fields, ("text",), required=False)
    if text is not None and not (fields and ("target" in fields or "context" in fields)):
        return {"context": "", "target": str(text), "raw": raw}
    context = field(raw, "context", fields, ("context", "prompt", "question"), required=False)
    target = field(raw, "target", fields, ("target", "completion", "continuation", "answer"))
    return {"context": "" if context is None else str(context), "target": str(target), "raw": raw}
