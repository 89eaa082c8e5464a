"""Task specs, data loading, field mapping, templates, registries and their error messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import logit_swarm as ls
from logit_swarm.tasks import KINDS, TASKS, DataSource, Registry, UnknownNameError, list_tasks, load_task, read_records
from logit_swarm.tasks.templates import PAPER_INSTRUCTION, paper_mc_prompt, render


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


MC_ROWS = [{"prompt": "2+2=", "choices": ["3", "4"], "answer": 1},
           {"prompt": "Capital of France?", "choices": ["Paris", "Rome"], "answer": "Paris"},
           {"prompt": "Ünïcode ✓?", "choices": {"A": "yes", "B": "no"}, "answer": "A"}]


def test_yaml_spec_with_relative_jsonl_paths(tmp_path):
    d = tmp_path / "tasks"
    d.mkdir()
    write_jsonl(d / "mc.dev.jsonl", MC_ROWS)
    write_jsonl(d / "mc.test.jsonl", MC_ROWS[:1])
    (d / "my_mc.yaml").write_text("kind: multiple_choice\ndata: {dev: mc.dev.jsonl, test: mc.test.jsonl}\n"
                                  "scoring: loglik\nlimit: {dev: 2}\n")
    task = load_task(str(d / "my_mc.yaml"))
    assert task.name == "my_mc" and task.kind == "multiple_choice"
    exs = task.examples("dev")
    assert len(exs) == 2
    assert exs[0]["labels"] == ["A", "B"] and exs[0]["answer"] == 1 and exs[1]["answer"] == 0
    assert len(task.examples("test")) == 1
    assert load_task(str(d / "my_mc.yaml"), limit=None).examples("dev")[2]["prompt"] == "Ünïcode ✓?"


def test_json_spec_and_csv_with_mapped_fields(tmp_path):
    (tmp_path / "q.csv").write_text("question,A,B,C,gold\nWhich is even?,1,2,3,B\nWhich is odd?,2,4,5,C\n")
    spec = {"kind": "multiple_choice", "data": {"dev": "q.csv"},
            "fields": {"prompt": "question", "choices": ["A", "B", "C"], "answer": "gold"}}
    (tmp_path / "csvtask.json").write_text(json.dumps(spec))
    exs = load_task(str(tmp_path / "csvtask.json")).examples("dev")
    assert [e["answer"] for e in exs] == [1, 2]
    assert exs[0]["choices"] == ["1", "2", "3"]


def test_exact_match_prompt_only_and_text_records():
    em = load_task({"kind": "exact_match", "data": {"dev": [{"question": "1+1?", "answer": 2}]}})
    assert em.examples("dev")[0] == {"prompt": "1+1?", "answer": "2", "raw": {"question": "1+1?", "answer": 2}}
    lik = load_task({"kind": "likelihood", "data": {"dev": [{"text": "abc"}, {"prompt": "Q", "answer": " A"}]}})
    assert [(e["context"], e["target"]) for e in lik.examples("dev")] == [("", "abc"), ("Q", " A")]
    rw = load_task({"kind": "reward", "scorer": len, "data": {"dev": [{"instruction": "hi"}]}})
    assert rw.examples("dev")[0]["prompt"] == "hi"


def test_paper_format_file_and_icl_prompt(tmp_path):
    rec = {"question": "Who?", "choices": {"A": "x", "B": "y"}, "answer": "B", "id": 1}
    (tmp_path / "kc.json").write_text(json.dumps({"dataset": "kc", "dev": [rec], "test": [dict(rec, id="s")],
                                                  "icl_prompt": "EXAMPLE"}))
    task = load_task({"kind": "multiple_choice", "data": "kc.json", "instruction": None}, base_dir=tmp_path)
    assert task.splits == ["dev", "test"]
    assert task.build_prompt(task.examples("dev")[0]) == "EXAMPLE\nQuestion: Who?\nA: x\nB: y\nThe answer is"
    assert task.examples("test")[0]["answer"] == 1
    # A paper file named for one split gives that split.
    dev_only = load_task({"kind": "mc", "data": {"dev": "kc.json"}}, base_dir=tmp_path)
    assert dev_only.splits == ["dev"] and dev_only.examples("dev")[0]["raw"]["id"] == 1


def test_paper_prompt_is_byte_exact():
    p = paper_mc_prompt("What is 2+2?", ["A", "B"], ["3", "4"])
    assert p == ("Please choose an option that best answers the question.\nQuestion: What is 2+2?\n"
                 "A: 3\nB: 4\nThe answer is")
    assert PAPER_INSTRUCTION in p


def test_mixed_type_columns_load(tmp_path):
    rows = [{"id": 1, "prompt": "a", "answer": "1"}, {"id": "x-2", "prompt": "b", "answer": "2"}]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    assert [r["id"] for r in read_records(path)] == [1, "x-2"]


@pytest.mark.parametrize("name, text", [
    ("r.jsonl", '{"prompt": "a", "answer": "1"}\n\n{"prompt": "b", "answer": "2"}\n'),
    ("r.json", '[{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": "2"}]'),
    ("r.csv", "prompt,answer\na,1\nb,2\n"),
])
def test_standard_library_reader_when_the_datasets_cache_is_unwritable(tmp_path, monkeypatch, name, text):
    from logit_swarm.tasks import records

    def unwritable(*args, **kwargs):
        raise PermissionError("read-only cache")

    (tmp_path / name).write_text(text)
    monkeypatch.setattr(records, "_datasets_load", unwritable)
    assert [str(r["answer"]) for r in read_records(tmp_path / name)] == ["1", "2"]


def test_templates():
    ex = {"prompt": "Q?", "labels": ["A", "B"], "choices": ["x", "y"], "answer": 1, "raw": {"topic": "t"}}
    assert render("[{topic}] {question}\n{choices}\nAnswer ({labels}):", ex) == "[t] Q?\nA: x\nB: y\nAnswer (A, B):"
    assert render("{{literal}} {answer}", ex) == "{literal} B"
    with pytest.raises(ValueError, match=r"\{nope\}.*available"):
        render("{nope}", ex)
    with pytest.raises(ValueError, match="bad prompt template"):
        load_task({"kind": "exact_match", "data": {"dev": [{"prompt": "a", "answer": "b"}]}, "prompt": "{oops"})


@pytest.mark.parametrize("answer, expected", [(0, 0), ("B", 1), ("yes", 0), ("1", 1)])
def test_answer_forms(answer, expected):
    task = load_task({"kind": "mc", "data": {"dev": [{"prompt": "p", "choices": ["yes", "no"], "answer": answer}]}})
    assert task.examples("dev")[0]["answer"] == expected


def test_record_errors_say_where_and_what_to_do():
    bad = load_task({"kind": "mc", "data": {"dev": [{"prompt": "p", "choices": ["a", "b"], "answer": 5}]}})
    with pytest.raises(ValueError, match="record 0.*out of range"):
        bad.examples("dev")
    nofield = load_task({"kind": "exact_match", "data": {"dev": [{"q": "p", "a": "x"}]}})
    with pytest.raises(ValueError, match="fields: {prompt: <your field name>}"):
        nofield.examples("dev")
    mapped = load_task({"kind": "exact_match", "data": {"dev": [{"q": "p", "a": "x"}]},
                        "fields": {"prompt": "q", "answer": "a"}})
    assert mapped.examples("dev")[0]["prompt"] == "p"
    with pytest.raises(ValueError, match="no split 'train'"):
        mapped.examples("train")


def test_spec_errors_suggest_fixes(tmp_path):
    data = {"dev": [{"prompt": "p", "choices": ["a", "b"], "answer": 0}]}
    with pytest.raises(ValueError, match="Did you mean 'scoring'"):
        load_task({"kind": "multiple_choice", "data": data, "scorng": "loglik"})
    with pytest.raises(UnknownNameError, match="Did you mean: multiple_choice"):
        load_task({"kind": "multiple_choise", "data": data})
    with pytest.raises(UnknownNameError, match="Did you mean: loglik"):
        load_task({"kind": "mc", "data": data, "scoring": "logli"})
    with pytest.raises(ValueError, match="needs kind"):
        load_task({"data": data})
    with pytest.raises(ValueError, match="needs data"):
        load_task({"kind": "mc"})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_task(str(tmp_path / "missing.yaml"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_task({"kind": "mc", "data": {"dev": "nope.jsonl"}}, base_dir=tmp_path)
    write_jsonl(tmp_path / "one.jsonl", data["dev"])
    with pytest.raises(ValueError, match="has no splits"):
        load_task({"kind": "mc", "data": "one.jsonl"}, base_dir=tmp_path)
    with pytest.raises(ValueError, match="limit"):
        load_task({"kind": "mc", "data": data, "limit": "all"})


def test_unknown_task_name_suggests_close_names():
    with pytest.raises(UnknownNameError, match="Did you mean: .*mmlu-pro"):
        load_task("mmlu_prro")
    with pytest.raises(ValueError):  # also a ValueError, for the command line
        load_task("zoo-factz")


def test_names_are_case_and_separator_insensitive():
    assert TASKS.canonical("MMLU_PRO") == "mmlu-pro"
    assert TASKS.canonical("Human_Drone_AI") == "human-drone-ai"
    assert KINDS.canonical("Multiple-Choice") == "multiple_choice"


def test_registry_refuses_silent_overwrite():
    reg: Registry[int] = Registry("thing")
    reg.add("a-b", 1, aliases=("ab",))
    assert reg.get("A_B") == 1 and reg.get("ab") == 1 and reg.names() == ["a-b"] and "a_b" in reg
    with pytest.raises(ValueError, match="already registered"):
        reg.add("a_b", 2)
    reg.add("a_b", 2, replace=True)
    assert reg.get("a-b") == 2


def test_paper_task_without_data_dir_says_how_to_fix(monkeypatch):
    monkeypatch.delenv("LOGIT_SWARM_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="LOGIT_SWARM_DATA"):
        load_task("mmlu")


def test_paper_task_missing_file_and_availability(tmp_path, monkeypatch):
    monkeypatch.delenv("LOGIT_SWARM_TOXICITY_SCORER", raising=False)
    rec = {"question": "q", "choices": {"A": "a", "B": "b"}, "answer": "A"}
    (tmp_path / "mmlu.json").write_text(json.dumps({"dataset": "mmlu", "dev": [rec], "test": [rec]}))
    (tmp_path / "realtoxicityprompts.json").write_text(json.dumps({"dev": [{"prompt": "x"}], "test": []}))
    avail = list_tasks(tmp_path, available=True)
    assert {"mmlu", "abstainqa"} <= set(avail) and "zoo-facts" in avail
    assert "gsm8k" not in avail and "realtoxicityprompts" not in avail and "legal" not in avail
    assert load_task("mmlu", data_dir=tmp_path).examples("dev")[0]["answer"] == 0
    with pytest.raises(FileNotFoundError, match="gsm8k.json"):
        load_task("gsm8k", data_dir=tmp_path)
    with pytest.raises(ValueError, match="LOGIT_SWARM_TOXICITY_SCORER"):
        load_task("realtoxicityprompts", data_dir=tmp_path)
    tox = load_task("realtoxicityprompts", data_dir=tmp_path, scorer=lambda t: [0.0] * len(t))
    assert tox.kind == "toxicity" and tox.gen.max_new_tokens == 20
    monkeypatch.setenv("LOGIT_SWARM_TOXICITY_SCORER", "json:loads")
    assert "realtoxicityprompts" in list_tasks(tmp_path, available=True)


def test_overrides_replace_spec_entries(tmp_path):
    rec = {"question": "q", "choices": {"A": "a", "B": "b"}, "answer": "A"}
    (tmp_path / "mmlu.json").write_text(json.dumps({"dataset": "mmlu", "dev": [rec] * 5, "test": [rec]}))
    t = load_task("mmlu", data_dir=tmp_path, limit=2, scoring="loglik_per_byte", max_new_tokens=3)
    assert t.scoring_name == "loglik_per_byte" and len(t.examples("dev")) == 2 and t.gen.max_new_tokens == 3
    assert t.name == "mmlu"


def test_in_memory_data_source_and_top_level_export():
    src = DataSource.from_records({"dev": [{"prompt": "p", "answer": "a"}]})
    task = load_task({"kind": "em", "data": src})
    assert task.examples("dev")[0]["answer"] == "a"
    assert ls.load_task is load_task


def test_generation_settings_are_checked():
    data = {"dev": [{"prompt": "p", "answer": "a"}]}
    with pytest.raises(ValueError, match="max_new_tokens"):
        load_task({"kind": "em", "data": data, "max_new_tokens": 0})
    with pytest.raises(ValueError, match="temperature"):
        load_task({"kind": "em", "data": data, "temperature": -1})
    with pytest.raises(ValueError, match="truncation"):
        load_task({"kind": "em", "data": data, "truncation": "right"})
    assert load_task({"kind": "em", "data": data, "stop": "\n"}).gen.stop == ("\n",)
