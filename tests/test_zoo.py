"""The embedded zoo: corpora and task generators, tokenizers, building, caching, loading.

Builds use ``size="micro"`` (same experts, tokenizers and architectures as ``tiny``, a dozen
steps each), so the whole file runs in well under a minute on 2 CPU cores. The real ``tiny``
zoo's quality (each expert best on its own specialty) is checked by ``logit-swarm zoo matrix
--check`` after a full build, not here.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from logit_swarm.zoo import build as zbuild
from logit_swarm.zoo import build_zoo, corpora, zoo_cards, zoo_dir, zoo_experts, zoo_matrix
from logit_swarm.zoo import cache as zcache
from logit_swarm.zoo import spec as zspec
from logit_swarm.zoo import train as ztrain
from logit_swarm.zoo.matrix import diagonal_violations, format_matrix
from logit_swarm.zoo.world import world


def _sha(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def micro(tmp_path_factory) -> dict[str, Path]:
    """The full micro zoo (every expert), built once for the module."""
    return build_zoo(tmp_path_factory.mktemp("zoo") / "micro", size="micro", progress=False)


# ------------------------------------------------------------------------------ corpora


def test_world_halves_are_disjoint_and_fixed():
    w = world()
    a, b = w.half("a"), w.half("b")
    assert len(a) == len(b) == len(w.facts) // 2
    assert not {f.country for f in a} & {f.country for f in b}
    assert len(set(w.capitals)) == len(w.capitals)  # capitals identify their country
    assert w is world() and world().facts[0] == w.facts[0]
    with pytest.raises(ValueError, match="half"):
        w.half("c")


@pytest.mark.parametrize("specialty", corpora.SPECIALTIES)
def test_training_documents_are_seeded(specialty):
    d1 = corpora.training_documents(specialty, 50, seed=3, max_chars=20_000)
    d2 = corpora.training_documents(specialty, 50, seed=3, max_chars=20_000)
    assert d1 == d2 and d1 and all(isinstance(d, str) and d.strip() for d in d1)
    if specialty != "code":  # the code corpus is a fixed list of files, not sampled
        assert corpora.training_documents(specialty, 50, seed=4) != d1


def test_facts_experts_see_only_their_half():
    a_docs = " ".join(corpora.training_documents("facts_a", 3000, seed=0))
    b_countries = {f.country for f in world().half("b")}
    assert not any(c in a_docs for c in b_countries)
    assert all(f.country in a_docs for f in world().half("a"))


@pytest.mark.parametrize("specialty", ["arithmetic", "reasoning", "dialogue"])
def test_heldout_problems_never_in_training(specialty):
    train = set(corpora.training_documents(specialty, 20_000, seed=0))
    held = corpora.heldout_text(specialty)
    assert len(held) == corpora.HELDOUT_DOCS and held == corpora.heldout_text(specialty)
    leaked = [h for h in held if h in train]
    if specialty == "dialogue":
        # Table-lookup replies are taught for every key (see corpora's docstring); copy tasks are split.
        assert all(not h.startswith(corpora._OPEN_DIALOGUE) for h in leaked)
    else:
        assert not leaked


def test_code_heldout_files_are_not_trained_on():
    train = set(corpora.training_documents("code", 0, seed=0))
    held = corpora.heldout_text("code")
    assert held and not set(held) & train


@pytest.mark.parametrize("task", list(corpora.TASKS))
def test_task_records_well_formed_and_deterministic(task):
    info = corpora.TASKS[task]
    for kind in info.kinds:
        dev = corpora.task_records(task, "dev", None, seed=0, kind=kind)
        test = corpora.task_records(task, "test", None, seed=0, kind=kind)
        assert dev and test
        assert not {r["prompt"] for r in dev} & {r["prompt"] for r in test}, "dev and test overlap"
        assert len({r["id"] for r in dev}) == len(dev)
        for r in dev[:50] + test[:50]:
            assert isinstance(r["prompt"], str) and r["prompt"]
            if kind == "exact_match":
                assert isinstance(r["answer"], str) and r["answer"].strip()
            else:
                assert isinstance(r["answer"], int) and 0 <= r["answer"] < len(r["choices"])
                assert len(set(r["choices"])) == len(r["choices"]) >= 2
        n = min(5, len(dev))
        assert corpora.task_records(task, "dev", n, seed=7, kind=kind) == corpora.task_records(task, "dev", n, 7, kind)
    with pytest.raises(ValueError, match="records"):
        corpora.task_records(task, "dev", 10**6)


def test_task_prompt_plus_answer_is_training_text():
    facts = corpora.task_records("facts_a", "dev", 5, seed=0)
    train = set(corpora.training_documents("facts_a", 20_000, seed=0))
    assert all(r["prompt"] + r["answer"] in train for r in facts)
    r = corpora.task_records("arithmetic", "dev", 3, seed=0)
    assert all(eval(x["prompt"][:-1]) == int(x["answer"]) for x in r)  # "12+7=" -> "19"
    for r in corpora.task_records("sorting", "test", 20, seed=0):
        given = r["prompt"].split("\n")[0].removeprefix("Sort: ").split()
        assert r["answer"].split() == sorted(given, key=int)


def test_facts_task_covers_both_halves():
    recs = corpora.task_records("facts", "dev", None)
    countries = {f.country: f.half for f in world().facts}
    halves = {countries[r["prompt"].split(" of ")[-1].split(" in ")[-1].split("?")[0]] for r in recs}
    assert halves == {"a", "b"}


def test_bad_task_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown zoo task"):
        corpora.task_records("factz", "dev", 2)
    with pytest.raises(ValueError, match="split"):
        corpora.task_records("facts", "train", 2)
    with pytest.raises(ValueError, match="kinds"):
        corpora.task_records("code", "dev", 2, kind="exact_match")
    with pytest.raises(ValueError, match="data directory"):
        corpora.heldout_text("shakespeare")


def test_render_chat_roles():
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}]
    assert corpora.render_chat(msgs, "</s>", True) == ("System: Be brief.\nUser: Hi\nAssistant: Hello</s>\n"
                                                       "User: Bye\nAssistant:")
    with pytest.raises(ValueError, match="role"):
        corpora.render_chat([{"role": "tool", "content": "x"}])


# ------------------------------------------------------------------------------ the built zoo


def test_zoo_variety(micro):
    assert len(micro) >= 6
    archs = {json.loads((p / "config.json").read_text())["model_type"] for p in micro.values()}
    assert len(archs) >= 3 and {"gpt2", "llama"} <= archs and archs & {"mistral", "qwen2", "gemma"}
    toks = {_sha(p / "tokenizer.json") for p in micro.values()}
    assert len(toks) >= 3
    kinds = {}
    for p in micro.values():
        tj = json.loads((p / "tokenizer.json").read_text())
        kinds.setdefault(tj["model"].get("byte_fallback", False), set()).add(len(tj["model"]["vocab"]))
    assert len(kinds[False]) >= 2, "two byte-level BPEs of different vocabulary sizes"
    assert kinds[True], "one SentencePiece-style BPE with byte fallback"
    specialties = {json.loads((p / "card.json").read_text())["specialty"] for p in micro.values()}
    assert set(corpora.SPECIALTIES) <= specialties


def test_shared_tokenizer_pair_is_byte_identical(micro):
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert _sha(micro["facts_a"] / f) == _sha(micro["facts_b"] / f)
    assert _sha(micro["math"] / "tokenizer.json") == _sha(micro["reason"] / "tokenizer.json")


def test_every_expert_loads_with_transformers(micro):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for name, p in micro.items():
        tok = AutoTokenizer.from_pretrained(str(p))
        model = AutoModelForCausalLM.from_pretrained(str(p))
        cfg = model.config
        assert cfg.vocab_size == len(tok), name
        assert getattr(cfg, "max_position_embeddings", getattr(cfg, "n_positions", 0)) >= 512
        if cfg.model_type == "mistral":
            assert cfg.sliding_window is None
        assert None not in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
        assert tok.pad_token_id != tok.eos_token_id
        ids = tok("Q: What is the capital of Dugleam?\nA:")["input_ids"]
        sp = json.loads((p / "tokenizer.json").read_text())["model"].get("byte_fallback", False)
        assert (ids[0] == tok.bos_token_id) == sp, "SentencePiece-style adds BOS, byte-level does not"
        assert tok.decode(ids, skip_special_tokens=True) == "Q: What is the capital of Dugleam?\nA:"
        out = model(torch.tensor([ids])).logits
        assert out.shape == (1, len(ids), len(tok)) and torch.isfinite(out).all()
        card = json.loads((p / "card.json").read_text())
        for key in ("architecture", "parameters", "tokenizer", "vocab_size", "training", "build_seconds"):
            assert key in card
        assert card["training"]["final_loss"] > 0 and (p / "README.md").read_text().startswith(f"# {name}")


def test_sentencepiece_tokenizer_has_all_byte_tokens(micro):
    tj = json.loads((micro["facts_a"] / "tokenizer.json").read_text())
    vocab = tj["model"]["vocab"]
    assert all(vocab[f"<0x{i:02X}>"] == 4 + i for i in range(256))
    assert not any(t["content"].startswith("<0x") for t in tj["added_tokens"])
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(micro["facts_a"]))
    text = "  déjà vu ✓\n  x"  # unseen characters fall back to bytes; leading spaces survive
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text


def test_chat_template_matches_training_format(micro):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(micro["chat"]))
    msgs = [{"role": "user", "content": "What is the opposite of hot?"}]
    rendered = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert rendered == corpora.render_chat(msgs, tok.eos_token, add_generation_prompt=True)
    record = corpora.task_records("dialogue", "dev", 1)[0]
    assert record["prompt"].startswith("User: ") and record["prompt"].endswith("\nAssistant:")


def test_zoo_experts_and_cards(micro):
    root = next(iter(micro.values())).parent
    assert zoo_experts(root, size="micro", build=False) == micro
    cards = zoo_cards(root)
    assert list(cards) == list(micro) and cards["facts_a"]["specialty"] == "facts_a"


def test_matrix_on_micro_zoo(micro):
    root = next(iter(micro.values())).parent
    m = zoo_matrix(root, max_docs=3)
    assert list(m) == list(micro)
    assert all(set(row) == set(corpora.SPECIALTIES) for row in m.values())
    assert all(math.isfinite(v) and v > 0 for row in m.values() for v in row.values())
    assert "facts_a" in format_matrix(m)


def test_diagonal_violations():
    m = {"x": {"p": 1.0, "q": 3.0}, "y": {"p": 2.0, "q": 2.5}}
    assert diagonal_violations(m, {"x": "p", "y": "q"}) == []
    assert diagonal_violations(m, {"x": "q", "y": "p"}) and len(diagonal_violations(m, {"x": "q", "y": "p"})) == 2


def test_bits_per_byte_matches_a_direct_computation(micro):
    """The matrix's NLL equals a plain forward pass over [context] + ids + [EOS]."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from logit_swarm.zoo.matrix import document_nll

    for name in ("facts_a", "math"):
        p = micro[name]
        tok, model = AutoTokenizer.from_pretrained(str(p)), AutoModelForCausalLM.from_pretrained(str(p))
        doc = "Q: What is the capital of Dugleam?\nA: Skeadri"
        ids = tok(doc)["input_ids"]
        row = (ids if ids[0] == tok.bos_token_id and tok.bos_token_id != tok.eos_token_id
               else [tok.eos_token_id] + ids) + [tok.eos_token_id]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([row])).logits[0, :-1].float(), -1)
        want = -logp.gather(-1, torch.tensor(row[1:])[:, None]).sum().item()
        got, nbytes = document_nll(model, tok, [doc, doc + " again"], window=256)
        got_one, _ = document_nll(model, tok, [doc], window=256)
        assert nbytes == 2 * len(doc) + len(" again")
        assert got_one == pytest.approx(want, rel=1e-5)
        # A window shorter than the document scores every token once, with context.
        short, _ = document_nll(model, tok, [doc], window=8)
        assert math.isfinite(short) and short > 0


# ------------------------------------------------------------------------------ building and caching


def test_build_is_deterministic_and_seeded(tmp_path):
    names = ["facts_a", "math"]
    a = build_zoo(tmp_path / "a", size="micro", experts=names, progress=False, seed=5)
    b = build_zoo(tmp_path / "b", size="micro", experts=names, progress=False, seed=5)
    c = build_zoo(tmp_path / "c", size="micro", experts=names, progress=False, seed=6)
    for n in names:
        assert _sha(a[n] / "model.safetensors") == _sha(b[n] / "model.safetensors")
        assert _sha(a[n] / "tokenizer.json") == _sha(c[n] / "tokenizer.json")  # tokenizers ignore the seed
        assert _sha(a[n] / "model.safetensors") != _sha(c[n] / "model.safetensors")


@pytest.mark.slow
def test_parallel_build_matches_serial_build(tmp_path):
    """Experts trained in worker processes (jobs=2) are byte-identical to in-process ones."""
    names = ["reason", "code"]
    serial = build_zoo(tmp_path / "s", size="micro", experts=names, progress=False, jobs=1)
    parallel = build_zoo(tmp_path / "p", size="micro", experts=names, progress=False, jobs=2)
    for n in names:
        assert _sha(serial[n] / "model.safetensors") == _sha(parallel[n] / "model.safetensors")
    assert zcache.read_marker(tmp_path / "p")["jobs"] == 2


def test_build_leaves_global_rng_untouched(tmp_path):
    torch.manual_seed(1234)
    random.seed(99)
    np.random.seed(7)
    states = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    build_zoo(tmp_path / "z", size="micro", experts=["chat"], progress=False)
    assert torch.equal(torch.get_rng_state(), states[0])
    assert random.getstate() == states[1]
    assert (np.random.get_state()[1] == states[2]).all()


def test_interrupted_build_leaves_no_complete_zoo_and_resumes(tmp_path, monkeypatch):
    out = tmp_path / "z"
    names = ["facts_a", "facts_b", "math"]
    real_train = ztrain.train_expert
    calls = []

    def crash_on_second(spec, *a, **k):
        calls.append(spec.name)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated interruption")
        return real_train(spec, *a, **k)

    monkeypatch.setattr(ztrain, "train_expert", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        build_zoo(out, size="micro", experts=names, progress=False)
    assert not (out / zcache.MARKER).exists()
    assert (out / "facts_a" / "model.safetensors").is_file() and not (out / "facts_b").exists()
    with pytest.raises(FileNotFoundError, match="zoo build"):
        zoo_experts(out, size="micro", experts=names, build=False)

    # A crash between writing an expert and moving it into place leaves only a temporary dir.
    monkeypatch.setattr(ztrain, "train_expert", real_train)
    real_replace = zcache.replace_dir

    def fail_for_experts(tmp, target):
        if target.parent == out:  # tokenizers still move into place; the expert does not
            raise OSError("disk full")
        return real_replace(tmp, target)

    monkeypatch.setattr(zcache, "replace_dir", fail_for_experts)
    with pytest.raises(OSError):
        build_zoo(out, size="micro", experts=names, progress=False)
    assert any(".tmp-" in p.name for p in out.iterdir()) and not (out / zcache.MARKER).exists()

    monkeypatch.setattr(zcache, "replace_dir", real_replace)
    first = _sha(out / "facts_a" / "model.safetensors")
    trained = []
    monkeypatch.setattr(ztrain, "train_expert",
                        lambda spec, *a, **k: trained.append(spec.name) or real_train(spec, *a, **k))
    paths = build_zoo(out, size="micro", experts=names, progress=False)
    assert trained == ["facts_b", "math"], "the finished expert is reused"
    assert _sha(paths["facts_a"] / "model.safetensors") == first
    assert (out / zcache.MARKER).exists() and not any(".tmp-" in p.name for p in out.iterdir())
    assert zoo_experts(out, size="micro", experts=names, build=False) == paths


def test_recipe_hash_invalidation(tmp_path, monkeypatch):
    base = zbuild.Plan("micro", 0, None, ["facts_a"], 1.0)
    assert zbuild.Plan("micro", 0, None, ["facts_a"], 1.0).zoo_hash == base.zoo_hash
    assert zbuild.Plan("micro", 1, None, ["facts_a"], 1.0).zoo_hash != base.zoo_hash
    assert zbuild.Plan("micro", 0, None, ["facts_a"], 2.0).zoo_hash != base.zoo_hash
    assert zbuild.Plan("tiny", 0, None, ["facts_a"], 1.0).zoo_hash != base.zoo_hash
    monkeypatch.setattr(zspec, "ZOO_VERSION", "zoo-test")
    assert zbuild.Plan("micro", 0, None, ["facts_a"], 1.0).zoo_hash != base.zoo_hash
    monkeypatch.undo()

    out = tmp_path / "z"
    build_zoo(out, size="micro", experts=["facts_a", "math"], progress=False)
    trained = []
    real_train = ztrain.train_expert
    monkeypatch.setattr(ztrain, "train_expert",
                        lambda spec, *a, **k: trained.append(spec.name) or real_train(spec, *a, **k))
    build_zoo(out, size="micro", experts=["facts_a", "math"], progress=False)
    assert trained == [], "an unchanged recipe is reused"
    build_zoo(out, size="micro", experts=["facts_a", "math"], progress=False, steps_scale=2.0)
    assert trained == ["facts_a", "math"], "a changed recipe rebuilds"
    assert json.loads((out / "math" / "card.json").read_text())["training"]["steps"] == 2 * 12
    build_zoo(out, size="micro", experts=["facts_a"], progress=False, steps_scale=2.0)
    assert not (out / "math").exists(), "experts no longer in the recipe are removed"
    assert list(zoo_cards(out)) == ["facts_a"]


def test_zoo_dir_env_and_default(monkeypatch, tmp_path):
    monkeypatch.delenv(zcache.ENV_ZOO, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    d = zoo_dir("micro", seed=0)
    assert d.parent == tmp_path / "logit_swarm" / "zoo" and d.name.startswith("micro-")
    assert zoo_dir("micro", seed=1) != d
    monkeypatch.setenv(zcache.ENV_ZOO, str(tmp_path / "mine"))
    assert zoo_dir("micro") == tmp_path / "mine"


def test_bad_build_arguments(tmp_path):
    with pytest.raises(ValueError, match="size"):
        build_zoo(tmp_path, size="huge")
    with pytest.raises(ValueError, match="unknown expert"):
        build_zoo(tmp_path, size="micro", experts=["nope"])
    with pytest.raises(ValueError, match="seed"):
        build_zoo(tmp_path, size="micro", seed=-1)
    with pytest.raises(FileNotFoundError, match="data directory"):
        build_zoo(tmp_path, size="micro", data_dir=tmp_path / "missing")
    with pytest.raises(ValueError, match="device"):
        build_zoo(tmp_path, size="micro", device="tpu")
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "mine.txt").write_text("user data")
    with pytest.raises(ValueError, match="not a zoo expert"):
        build_zoo(tmp_path, size="micro", experts=["code"], progress=False)
    assert (tmp_path / "code" / "mine.txt").read_text() == "user data"


def test_tiny_zoo_spec_meets_the_budget_shape():
    specs = zspec.expert_specs("tiny")
    assert len(specs) >= 6
    assert len({s.arch for s in specs}) >= 3 and len({s.tokenizer for s in specs}) >= 3
    toks = zspec.tokenizer_specs("tiny")
    byte_sizes = {t.vocab_size for t in toks.values() if t.kind == "byte_bpe"}
    assert len(byte_sizes) >= 2 and any(t.kind == "sp_bpe" for t in toks.values())
    by_name = {s.name: s for s in specs}
    a, b = by_name["facts_a"], by_name["facts_b"]
    assert a.tokenizer == b.tokenizer
    assert (a.arch, a.d_model, a.n_layers, a.steps) == (b.arch, b.d_model, b.n_layers, b.steps)
    assert all(s.seq_len <= 512 and 512 <= ztrain.MAX_POSITIONS for s in specs)


# ------------------------------------------------------------------------------ command line


def test_cli_list_matrix_and_errors(micro, capsys):
    from logit_swarm.cli import main

    root = next(iter(micro.values())).parent
    assert main(["zoo", "list", "--out", str(root)]) == 0
    out = capsys.readouterr().out
    assert "facts_a" in out and "llama" in out and "sp2k" in out
    assert main(["zoo", "matrix", "--out", str(root), "--max-docs", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["bits_per_byte"]) == set(micro)
    assert main(["zoo", "build", "--out", str(root), "--size", "micro", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(root)
    assert main(["zoo", "build", "--size", "micro", "--experts", "nope", "--out", str(root)]) == 2
    assert "unknown expert" in capsys.readouterr().err
    assert main(["zoo", "list", "--out", str(root / "missing")]) == 2
    assert "zoo build" in capsys.readouterr().err
