import json
import sys
import types

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from encore.data.records import DataError, SkipReport
from encore.data.tasks import TASKS, UNANSWERABLE, load_task, task_names


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


# --- the public schemas, as the hub serves them ---------------------------------------------------------

SQUAD = [
    {
        "id": "5733be284776f41900661182",
        "title": "University_of_Notre_Dame",
        "context": "Architecturally, the school has a Catholic character. Atop the Main Building is a golden statue.",
        "question": "What sits atop the Main Building?",
        "answers": {"text": ["a golden statue", "golden statue"], "answer_start": [79, 81]},
    },
    {
        "id": "5ad39d53604f3c001a3fe8d1",
        "title": "University_of_Notre_Dame",
        "context": "Architecturally, the school has a Catholic character.",
        "question": "  What sits   atop the library?",
        "answers": {"text": [], "answer_start": []},
    },
]
XSUM = [
    {"document": "The full cost of damage in Newton Stewart is still being assessed.\nRepair work is ongoing.",
     "summary": "Clean-up operations are continuing across the Scottish Borders.", "id": "35232142"},
    {"document": "A fire alarm went off at the Holiday Inn in Hope Street.", "summary": "Two tourists were rescued.",
     "id": "40143035"},
]  # fmt: skip
CODE = [
    {
        "id": 0,
        "repo": "owner/project",
        "path": "project/util.py",
        "func_name": "add",
        "original_string": 'def add(a, b):\n    """Add two numbers."""\n    return a + b',
        "language": "python",
        "code": 'def add(a, b):\n    """Add two numbers."""\n    return a + b',
        "code_tokens": ["def", "add", "(", "a", ",", "b", ")", ":", "return", "a", "+", "b"],
        "docstring": "Add two numbers.",
        "docstring_tokens": ["Add", "two", "numbers", "."],
        "sha": "0" * 40,
        "url": "https://github.com/owner/project/blob/0/project/util.py#L1-L3",
    }
]


def test_squad_v2_local_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "dev.jsonl", SQUAD)
    examples = list(load_task("squad_v2", split="validation", data_files=path))
    assert examples == [
        {"source": f"question: What sits atop the Main Building? context: {SQUAD[0]['context']}",
         "target": "a golden statue"},
        {"source": f"question: What sits atop the library? context: {SQUAD[1]['context']}", "target": UNANSWERABLE},
    ]  # fmt: skip


def test_squad_v2_local_parquet_with_struct_answers(tmp_path):
    pq.write_table(pa.Table.from_pylist(SQUAD), tmp_path / "dev.parquet")  # answers become a struct column
    examples = list(load_task("squad_v2", split="validation", data_files={"validation": tmp_path / "dev.parquet"}))
    assert [e["target"] for e in examples] == ["a golden statue", UNANSWERABLE]


def test_squad_v2_official_nested_json(tmp_path):
    doc = {"version": "v2.0", "data": [{"title": "T", "paragraphs": [{"context": "Paris is in France.", "qas": [
        {"question": "Where is Paris?", "id": "1", "answers": [{"text": "France", "answer_start": 12}],
         "is_impossible": False},
        {"question": "Where is Rome?", "id": "2", "answers": [], "plausible_answers": [{"text": "France"}],
         "is_impossible": True},
    ]}]}]}  # fmt: skip
    (tmp_path / "dev-v2.0.json").write_text(json.dumps(doc))
    examples = list(load_task("squad_v2", split="validation", data_files=str(tmp_path / "dev-v2.0.json")))
    assert [e["target"] for e in examples] == ["France", UNANSWERABLE]
    assert examples[0]["source"] == "question: Where is Paris? context: Paris is in France."


def test_squad_v2_bad_answers_field(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [SQUAD[0], {**SQUAD[1], "answers": {"text": "not a list"}}])
    with pytest.raises(DataError, match=r"bad\.jsonl: line 2: field 'answers\.text': expected a list of strings"):
        list(load_task("squad_v2", split="validation", data_files=path))


def test_xsum_local_files_by_split(tmp_path):
    files = {
        "train": write_jsonl(tmp_path / "train.jsonl", XSUM),
        "test": write_jsonl(tmp_path / "test.jsonl", XSUM[:1]),
    }
    assert list(load_task("xsum", split="train", data_files=files)) == [
        {"source": XSUM[0]["document"], "target": XSUM[0]["summary"]},
        {"source": XSUM[1]["document"], "target": XSUM[1]["summary"]},
    ]
    assert len(list(load_task("xsum", split="test", data_files=files))) == 1
    with pytest.raises(ValueError, match=r"data_files has no split 'validation'; it has: train, test"):
        load_task("xsum", split="validation", data_files=files)


def test_code_x_glue_ct_local_parquet(tmp_path):
    pq.write_table(pa.Table.from_pylist(CODE), tmp_path / "test.parquet")
    (example,) = load_task("code_x_glue_ct", split="test", data_files=[tmp_path / "test.parquet"])
    assert example == {"source": "def add ( a , b ) : return a + b", "target": "Add two numbers ."}
    assert "Add two numbers" not in example["source"]  # the code tokens leave the docstring out


def test_data_files_glob_and_limit(tmp_path):
    write_jsonl(tmp_path / "part-0.jsonl", XSUM)
    write_jsonl(tmp_path / "part-1.jsonl", XSUM)
    assert len(list(load_task("xsum", split="train", data_files=str(tmp_path / "part-*.jsonl")))) == 4
    assert len(list(load_task("xsum", split="train", data_files=str(tmp_path / "part-*.jsonl"), limit=3))) == 3
    with pytest.raises(DataError, match="no file matches"):
        load_task("xsum", data_files=str(tmp_path / "nothing-*.jsonl"))
    with pytest.raises(DataError, match=r"absent\.jsonl: no such file"):
        load_task("xsum", data_files=str(tmp_path / "absent.jsonl"))  # checked at the call, not at first use


# --- a file of pairs is a task ---------------------------------------------------------------------------


def test_file_task_default_and_custom_fields(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"source": "long input", "target": "short"}])
    assert list(load_task(path)) == [{"source": "long input", "target": "short"}]
    assert list(load_task(path, split="validation")) == list(load_task(path))  # the file is its one split
    path = write_jsonl(tmp_path / "io.jsonl", [{"input": "a b c", "output": "c"}])
    assert list(load_task(path, source_field="input", target_field="output")) == [{"source": "a b c", "target": "c"}]
    pq.write_table(pa.table({"source": ["x y"], "target": ["y"]}), tmp_path / "pairs.parquet")
    assert list(load_task(tmp_path / "pairs.parquet")) == [{"source": "x y", "target": "y"}]
    (tmp_path / "pairs.json").write_text(json.dumps([{"source": "p q", "target": "q"}]))
    assert list(load_task(tmp_path / "pairs.json")) == [{"source": "p q", "target": "q"}]


@pytest.mark.parametrize(
    "line2, pattern",
    [
        ({"source": "x"}, r"line 2: field 'target': missing \(record has 'source'\)"),
        ({"source": "x", "target": "  "}, r"line 2: field 'target': is empty"),
        ({"source": 5, "target": "y"}, r"line 2: field 'source': expected str, got int"),
        ({"source": None, "target": "y"}, r"line 2: field 'source': is null"),
    ],
)
def test_file_task_bad_record_names_file_line_and_field(tmp_path, line2, pattern):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"source": "a", "target": "b"}, line2])
    with pytest.raises(DataError, match=r"pairs\.jsonl: " + pattern + r".*skip_invalid=True"):
        list(load_task(path))


def test_file_task_bad_bytes_and_empty_file(tmp_path):
    (tmp_path / "latin1.jsonl").write_bytes(b'{"source": "a", "target": "b"}\n{"source": "caf\xe9", "target": "b"}\n')
    with pytest.raises(DataError, match=r"latin1\.jsonl: line 2: not UTF-8"):
        list(load_task(tmp_path / "latin1.jsonl"))
    (tmp_path / "empty.jsonl").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.jsonl: empty file"):
        list(load_task(tmp_path / "empty.jsonl"))
    (tmp_path / "malformed.jsonl").write_text('{"source": "a", "target": "b"}\n{"source": "a" "target": "b"}\n')
    with pytest.raises(DataError, match=r"malformed\.jsonl: line 2: malformed JSON"):
        list(load_task(tmp_path / "malformed.jsonl"))


def test_skip_invalid_counts_and_reports(tmp_path):
    (tmp_path / "mixed.jsonl").write_bytes(
        b'{"source": "a", "target": "b"}\n{"source": "a"}\n{oops\n\xff\n{"source": "c", "target": "d"}\n'
    )
    report = SkipReport()
    examples = list(load_task(tmp_path / "mixed.jsonl", skip_invalid=True, report=report))
    assert [e["target"] for e in examples] == ["b", "d"]
    assert report.counts == {"missing field 'target'": 1, "malformed JSON": 1, "not UTF-8": 1}
    with pytest.warns(UserWarning, match=r"skipped 3 invalid record"):  # no report given: said at the end
        assert len(list(load_task(tmp_path / "mixed.jsonl", skip_invalid=True))) == 2


# --- the registry ----------------------------------------------------------------------------------------


def test_registry_names_splits_and_options():
    assert task_names() == ["addition", "code2doc", "code_x_glue_ct", "squad_v2", "synthqa", "xsum"]
    assert TASKS["squad_v2"].splits == ("train", "validation")
    with pytest.raises(
        ValueError, match=r"unknown task 'squad'; known tasks: addition, code2doc, code_x_glue_ct, squad_v2"
    ):
        load_task("squad")
    with pytest.raises(ValueError, match=r"task 'squad_v2' has no split 'test'; splits: train, validation"):
        load_task("squad_v2", split="test")
    with pytest.raises(ValueError, match=r"task 'synthqa' has no split 'dev'; splits: train, validation, test"):
        load_task("synthqa", split="dev")
    with pytest.raises(ValueError, match=r"unknown option\(s\) source_field; accepted: limit, skip_invalid"):
        load_task("synthqa", source_field="x")
    with pytest.raises(ValueError, match="takes no data_files"):
        load_task("synthqa", data_files="x.jsonl")
    with pytest.raises(ValueError, match="limit must be"):
        load_task("synthqa", limit=-1)


def test_builtin_tasks_through_load_task(tmp_path):
    qa = list(load_task("synthqa", split="validation", limit=5))
    assert len(qa) == 5 and qa == list(load_task("synthqa", split="validation", size=5))
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "mod.py").write_text("def f(x):\n    '''Double the given number.'''\n    return 2 * x\n")
    from encore.data.code2doc import module_split

    examples = list(load_task("code2doc", split=module_split("mod"), stdlib=lib, cache_dir=tmp_path / "cache"))
    assert examples == [{"source": "def f(x):\n    return 2 * x", "target": "Double the given number."}]


def test_hub_path_calls_load_dataset(monkeypatch):
    # no network here: a stand-in `datasets` records the call and serves rows in the public schema
    calls = []

    def load_dataset(path, name=None, *, split, streaming, revision):
        calls.append((path, name, split, streaming, revision))
        if revision is None and path == "EdinburghNLP/xsum":
            raise RuntimeError("Dataset scripts are no longer supported, but found xsum.py")
        return iter(CODE if "code_x_glue" in path else XSUM if "xsum" in path else SQUAD)

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    assert [e["target"] for e in load_task("squad_v2", split="validation")] == ["a golden statue", UNANSWERABLE]
    assert calls[-1] == ("rajpurkar/squad_v2", None, "validation", False, None)
    (example,) = load_task("code_x_glue_ct", split="test", language="python", streaming=True)
    assert example["target"] == "Add two numbers ." and calls[-1][:4] == (
        "google/code_x_glue_ct_code_to_text",
        "python",
        "test",
        True,
    )
    # a script-only dataset falls back to the hub's parquet export
    assert len(list(load_task("xsum", split="test"))) == 2
    assert calls[-1] == ("EdinburghNLP/xsum", "default", "test", False, "refs/convert/parquet")
    # bad hub rows are named by dataset, split and row
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=lambda *a, **k: iter([{}])))
    with pytest.raises(DataError, match=r"hf://datasets/EdinburghNLP/xsum/train: row 1: field 'document': missing"):
        list(load_task("xsum"))


def test_addition_task_is_seeded_and_correct():
    from encore.data import addition

    train = list(load_task("addition", split="train", size=200))
    assert train == list(load_task("addition", split="train", size=200))  # seeded
    for e in train:
        a, b = (int(x.replace(" ", "")) for x in e["source"].split(" + "))
        assert int(e["target"].replace(" ", "")) == a + b and len(e["source"]) == len("0 0 0 + 0 0 0")
    validation = {e["source"] for e in load_task("addition", split="validation", size=200)}
    assert len(validation & {e["source"] for e in train}) < 5  # separate streams (equal pairs only by chance)
    assert addition.example("train", 0, digits=5)["source"].count(" ") == 10
    with pytest.raises(ValueError, match="digits"):
        list(load_task("addition", digits=0))
