import gzip
import json
import tracemalloc
import warnings

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from encore.data import DataError, SkipReport, open_corpus, parse_hf_spec
from encore.data.code2doc import module_split
from encore.data.corpora import StdlibCorpus
from encore.data.packing import TokenStream
from encore.tokenizer import encode_text, train_tokenizer

DOCS = [f"document {i}: " + "word " * (i % 7) + f"end {i}" for i in range(23)]


def write_jsonl(path, records, field="text"):
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps({field: r, "id": 0} if isinstance(r, str) else r) + "\n")
    return path


def write_parquet(path, texts, row_group_size=5, field="text"):
    pq.write_table(pa.table({field: texts}), path, row_group_size=row_group_size)
    return path


def resumed_equals_straight(make, cut_points):
    """Reading with a save / restore into a fresh corpus at each cut gives the uninterrupted documents."""
    straight = list(make())
    for cut in cut_points:
        first = make()
        it = iter(first)
        head = [next(it) for _ in range(cut)]
        state = json.loads(json.dumps(first.state_dict()))  # the state survives JSON (checkpoints)
        second = make()
        second.load_state_dict(state)
        assert head + list(second) == straight, cut
    return straight


# --- formats, order, resume ----------------------------------------------------------------------------


def test_jsonl_documents_and_resume(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", DOCS)
    docs = resumed_equals_straight(lambda: open_corpus(path), [0, 1, 7, 22, 23])
    assert docs == DOCS


def test_text_field_and_gzip(tmp_path):
    path = tmp_path / "a.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for d in DOCS:
            f.write(json.dumps({"content": d}) + "\n")
    docs = resumed_equals_straight(lambda: open_corpus(path, text_field="content"), [3, 12])
    assert docs == DOCS


def test_txt_paragraphs(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(
        b"\xef\xbb\xbffirst paragraph\nstill first\n\n\n  second, indented\r\n\r\nthird\n"
        + b"x" * 30
        + b"\n" * 2
        + b"last line without newline"
    )
    docs = resumed_equals_straight(lambda: open_corpus(path), [1, 2, 4])
    assert docs == [
        "first paragraph\nstill first",
        "  second, indented",
        "third\n" + "x" * 30,
        "last line without newline",
    ]
    # a paragraph longer than max_doc_chars is cut into pieces (at line ends)
    long = tmp_path / "long.txt"
    long.write_text("".join(f"line {i:04d}\n" for i in range(100)))
    pieces = list(open_corpus(long, max_doc_chars=100))
    assert len(pieces) == 10 and "\n".join(pieces) + "\n" == long.read_text()


def test_parquet_row_groups_and_resume(tmp_path):
    path = write_parquet(tmp_path / "a.parquet", DOCS, row_group_size=5)
    docs = resumed_equals_straight(lambda: open_corpus(path), [0, 4, 5, 6, 13, 23])
    assert docs == DOCS


def test_folder_mixed_files_in_sorted_order(tmp_path):
    write_jsonl(tmp_path / "b.jsonl", DOCS[5:10])
    (tmp_path / "c").mkdir()
    write_parquet(tmp_path / "c" / "d.parquet", DOCS[10:])
    (tmp_path / "a.txt").write_text("\n\n".join(DOCS[:5]) + "\n")
    (tmp_path / "notes.md").write_text("not a corpus file")
    (tmp_path / "empty_init.py").write_text("")  # an empty source file is not an error
    docs = resumed_equals_straight(lambda: open_corpus(tmp_path), [2, 5, 9, 10, 17])
    assert docs == DOCS
    assert len(list(open_corpus(str(tmp_path / "*.jsonl")))) == 5  # a glob


def test_resume_refuses_changed_files(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", DOCS)
    write_jsonl(tmp_path / "b.jsonl", DOCS)
    corpus = open_corpus(tmp_path)
    it = iter(corpus)
    for _ in range(30):
        next(it)
    state = corpus.state_dict()
    (tmp_path / "a.jsonl").rename(tmp_path / "c.jsonl")
    with pytest.raises(ValueError, match="files changed"):
        open_corpus(tmp_path).load_state_dict(state)
    with pytest.raises(ValueError, match="rank"):
        open_corpus(tmp_path, rank=1, world_size=2).load_state_dict(state)


@pytest.mark.parametrize("world_size", [2, 3])
def test_sharding_partitions_the_corpus(tmp_path, world_size):
    path = write_jsonl(tmp_path / "a.jsonl", DOCS)
    shards = [list(open_corpus(path, rank=r, world_size=world_size)) for r in range(world_size)]
    for r, shard in enumerate(shards):
        assert shard == DOCS[r::world_size]
    # each shard resumes on its own
    resumed_equals_straight(lambda: open_corpus(path, rank=1, world_size=world_size), [1, 3])
    with pytest.raises(ValueError, match="rank"):
        open_corpus(path, rank=2, world_size=2)


def test_rewind_starts_the_next_pass(tmp_path):
    corpus = open_corpus(write_jsonl(tmp_path / "a.jsonl", DOCS[:3]))
    assert list(corpus) == DOCS[:3] and list(corpus) == []  # a cursor: the pass is over
    corpus.rewind()
    assert list(corpus) == DOCS[:3] and corpus.state_dict()["epoch"] == 1


# --- bad input ----------------------------------------------------------------------------------------


def bad_jsonl(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(
        b'{"text": "ok one"}\n'
        b'{"text": "broken\n'  # line 2: malformed
        b'{"title": "no text"}\n'  # line 3: missing field
        b'{"text": "caf\xe9"}\n'  # line 4: latin-1, not UTF-8
        b"\n"
        b'["not", "an object"]\n'  # line 6
        b'{"text": 42}\n'  # line 7: wrong type
        b'{"text": "   "}\n'  # line 8: empty text, skipped silently and counted
        b'{"text": "ok two"}\n'
    )
    return path


@pytest.mark.parametrize(
    "line, pattern",
    [
        (2, r"bad\.jsonl: line 2: malformed JSON"),
        (3, r"bad\.jsonl: line 3: field 'text': missing \(record has 'title'\)"),
        (4, r"bad\.jsonl: line 4: not UTF-8 \(byte b'\\xe9' at column 14\)"),
        (6, r"bad\.jsonl: line 6: expected a JSON object, got list"),
        (7, r"bad\.jsonl: line 7: field 'text': expected str, got int"),
    ],
)
def test_jsonl_errors_name_file_line_field(tmp_path, line, pattern):
    path = bad_jsonl(tmp_path)
    lines = path.read_bytes().split(b"\n")
    keep = [lines[0], lines[line - 1]]  # the good first line, then the bad one (as line 2)
    path.write_bytes(b"\n".join(keep[:1] + [b""] * (line - 2) + keep[1:]) + b"\n")
    corpus = open_corpus(path)
    it = iter(corpus)
    assert next(it) == "ok one"
    with pytest.raises(DataError, match=pattern) as err:
        next(it)
    assert err.value.line == line and str(path) in str(err.value)


def test_skip_invalid_counts_and_warns(tmp_path):
    path = bad_jsonl(tmp_path)
    corpus = open_corpus(path, skip_invalid=True)
    with pytest.warns(UserWarning, match="skipped 5 invalid record"):
        docs = list(corpus)
    assert docs == ["ok one", "ok two"]
    report: SkipReport = corpus.report
    assert report.total == 5 and report.counts["malformed JSON"] == 1 and report.counts["not UTF-8"] == 1
    assert report.counts["missing field 'text'"] == 1 and corpus.empty_documents == 1
    assert any("line 3" in e for e in report.examples)


def test_empty_and_invalid_files(tmp_path):
    for name in ("empty.jsonl", "empty.txt"):
        (tmp_path / name).write_text("\n  \n")
        with pytest.raises(DataError, match=rf"{name}: empty file"):
            list(open_corpus(tmp_path / name))
        corpus = open_corpus(tmp_path / name, skip_invalid=True)
        with pytest.warns(UserWarning, match="1 empty file"):
            assert list(corpus) == []
    write_parquet(tmp_path / "empty.parquet", pa.array([], pa.string()))
    with pytest.raises(DataError, match="empty.parquet: empty file"):
        list(open_corpus(tmp_path / "empty.parquet"))
    (tmp_path / "latin.txt").write_bytes(b"fine\nna\xefve\n")
    with pytest.raises(DataError, match=r"latin\.txt: line 2: not UTF-8"):
        list(open_corpus(tmp_path / "latin.txt"))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported corpus file type"):
        open_corpus(tmp_path / "x.csv")
    with pytest.raises(DataError, match="no such file"):
        open_corpus(tmp_path / "missing.jsonl")
    (tmp_path / "sub").mkdir()
    with pytest.raises(DataError, match="no corpus files"):
        open_corpus(tmp_path / "sub")


def test_parquet_errors_name_field_and_row(tmp_path):
    pq.write_table(pa.table({"body": ["a"]}), tmp_path / "a.parquet")
    with pytest.raises(DataError, match=r"a\.parquet: field 'text': missing \(file has columns 'body'\)"):
        list(open_corpus(tmp_path / "a.parquet"))
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "b.parquet")
    with pytest.raises(DataError, match="field 'text': expected a string column, got int64"):
        list(open_corpus(tmp_path / "b.parquet"))
    write_parquet(tmp_path / "c.parquet", ["x", None, "y"])
    with pytest.raises(DataError, match=r"c\.parquet: row 2: field 'text': is null"):
        list(open_corpus(tmp_path / "c.parquet"))
    (tmp_path / "d.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="not a readable parquet file"):
        list(open_corpus(tmp_path / "d.parquet"))


# --- streaming: files are never read whole ---------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jsonl", ".txt"])
def test_streaming_memory_stays_bounded(tmp_path, suffix):
    """An ~8 MB file is read with a peak of Python allocations far below its size."""
    path = tmp_path / f"big{suffix}"
    doc = "lorem ipsum dolor sit amet " * 40  # ~1 KB
    with open(path, "w") as f:
        for i in range(8000):
            f.write(json.dumps({"text": f"{i} {doc}"}) + "\n" if suffix == ".jsonl" else f"{i} {doc}\n\n")
    assert path.stat().st_size > 8_000_000
    corpus = open_corpus(path)
    tracemalloc.start()
    try:
        n = sum(1 for _ in corpus)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 8000
    assert peak < 1_000_000, peak


def test_streaming_reads_lazily(tmp_path, monkeypatch):
    """The first document arrives without the file ever being read whole (no read() / read_bytes())."""
    import pathlib

    path = write_jsonl(tmp_path / "a.jsonl", DOCS)

    def refuse(*args, **kwargs):
        raise AssertionError("the whole file was read")

    monkeypatch.setattr(pathlib.Path, "read_bytes", refuse)
    monkeypatch.setattr(pathlib.Path, "read_text", refuse)
    assert next(iter(open_corpus(path))) == DOCS[0]


# --- the embedded stdlib corpus ---------------------------------------------------------------------------


def test_stdlib_corpus_is_the_train_modules():
    corpus = open_corpus("stdlib")
    assert isinstance(corpus, StdlibCorpus) and len(corpus.files) > 100
    everything = open_corpus("stdlib:all")
    assert len(everything.files) > len(corpus.files)
    train = set(corpus.files)
    held_out = [p for p in everything.files if p not in train]
    assert held_out  # validation / test modules of code2doc are not pretrained on
    it = iter(corpus)
    first = [next(it) for _ in range(3)]
    assert all(isinstance(d, str) and d.strip() for d in first)
    assert first[0] == corpus.files[0].read_text(encoding="utf-8")
    assert module_split("encore_never_a_module") in ("train", "validation", "test")


def test_stdlib_sharding_and_resume():
    a = open_corpus("stdlib", rank=0, world_size=2)
    b = open_corpus("stdlib", rank=1, world_size=2)
    ita, itb = iter(a), iter(b)
    da, db = [next(ita) for _ in range(4)], [next(itb) for _ in range(4)]
    assert not set(da) & set(db)
    state = a.state_dict()
    c = open_corpus("stdlib", rank=0, world_size=2)
    c.load_state_dict(state)
    assert next(iter(c)) == next(ita)


# --- Hugging Face streaming (a local IterableDataset stands in for the hub) ----------------------------------


@pytest.fixture
def fake_hub(monkeypatch):
    import datasets

    calls = []

    def load_dataset(name, config=None, split=None, streaming=False, **kwargs):
        calls.append((name, config, split, streaming))
        records = {"text": DOCS, "id": list(range(len(DOCS)))}
        if name == "broken":
            records = {"content": DOCS}
        return datasets.Dataset.from_dict(records).to_iterable_dataset(num_shards=2)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_hf_spec_parsing():
    assert parse_hf_spec("hf:HuggingFaceFW/fineweb-edu:sample-10BT@train") == (
        "HuggingFaceFW/fineweb-edu",
        "sample-10BT",
        "train",
    )
    assert parse_hf_spec("hf:wikitext") == ("wikitext", None, "train")
    assert parse_hf_spec("hf:user/data@validation") == ("user/data", None, "validation")
    with pytest.raises(ValueError, match="expected hf:NAME"):
        parse_hf_spec("hf:")


def test_hf_streaming_resume_and_shards(fake_hub):
    docs = resumed_equals_straight(lambda: open_corpus("hf:user/data:cfg@train"), [0, 1, 9, 23])
    assert docs == DOCS
    assert fake_hub[0] == ("user/data", "cfg", "train", True)  # streaming, never a download
    shards = [list(open_corpus("hf:user/data", rank=r, world_size=2)) for r in range(2)]
    assert sorted(shards[0] + shards[1]) == sorted(DOCS) and not set(shards[0]) & set(shards[1])
    corpus = open_corpus("hf:user/data")
    list(corpus)
    corpus.rewind()
    assert list(corpus) == DOCS


def test_hf_missing_field_names_row_and_field(fake_hub):
    with pytest.raises(DataError, match=r"hf://broken@train: row 1: field 'text': missing \(record has 'content'\)"):
        list(open_corpus("hf:broken"))
    corpus = open_corpus("hf:broken", skip_invalid=True)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert list(corpus) == []
    assert corpus.report.total == len(DOCS)


# --- token stream ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(DOCS * 5, vocab_size=400)


def test_token_stream_is_documents_plus_eos_and_resumes(tmp_path, tok):
    path = write_jsonl(tmp_path / "a.jsonl", DOCS)
    expected = [t for d in DOCS for t in [*encode_text(tok, d), tok.eos_token_id]]
    stream = TokenStream(open_corpus(path), tok, repeat=False)
    pieces, sizes = [], [1, 5, 17, 3, 40, 2, 64, 33]
    states = []
    for n in sizes * 3:
        states.append(json.loads(json.dumps(stream.state_dict())))
        piece = stream.take(n)
        if piece is None:
            break
        pieces.append(piece)
    flat = [t for p in pieces for t in p]
    assert flat == expected[: len(flat)] and len(expected) - len(flat) < 64
    assert stream.tokens == len(flat)
    # restoring any saved state continues on exactly the next token
    for k in range(0, len(pieces), 3):
        again = TokenStream(open_corpus(path), tok, repeat=False)
        again.load_state_dict(states[k])
        assert again.take(len(pieces[k])) == pieces[k]
        if k + 1 < len(pieces):
            assert again.take(len(pieces[k + 1])) == pieces[k + 1]


def test_token_stream_repeats_over_epochs(tmp_path, tok):
    path = write_jsonl(tmp_path / "a.jsonl", DOCS[:2])
    one_pass = [t for d in DOCS[:2] for t in [*encode_text(tok, d), tok.eos_token_id]]
    stream = TokenStream(open_corpus(path), tok)
    assert stream.take(3 * len(one_pass)) == one_pass * 3
    state = stream.state_dict()
    assert state["corpus"]["epoch"] >= 2
    nxt = stream.take(5)
    again = TokenStream(open_corpus(path), tok)
    again.load_state_dict(state)
    assert again.take(5) == nxt == one_pass[:5]
    # an empty shard cannot loop for ever
    lonely = TokenStream(open_corpus(path, rank=2, world_size=3), tok)
    with pytest.raises(ValueError, match="no documents for rank 2"):
        lonely.take(1)
