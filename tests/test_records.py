import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from encore.data.records import DataError, SkipReport, iter_records, require_field


def write_lines(path, lines: list[bytes]) -> str:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path)


def test_jsonl_positions_are_editor_line_numbers(tmp_path):
    # a byte-order mark and blank lines are not records, but blank lines still count as lines
    path = write_lines(tmp_path / "a.jsonl", [b'\xef\xbb\xbf{"x": 1}', b"", b'{"x": 2}', b"   ", b'{"x": "\xc3\xa9"}'])
    assert list(iter_records(path)) == [(1, {"x": 1}), (3, {"x": 2}), (5, {"x": "é"})]


def test_jsonl_is_streamed(tmp_path):
    # the bad line 3 is not read before the caller asks for it
    path = write_lines(tmp_path / "s.jsonl", [b'{"a": 1}', b'{"a": 2}', b"{oops"])
    records = iter_records(path)
    assert next(records) == (1, {"a": 1})
    assert next(records) == (2, {"a": 2})
    with pytest.raises(DataError, match=r"s\.jsonl: line 3: malformed JSON"):
        next(records)


@pytest.mark.parametrize(
    "bad, pattern",
    [
        (b'{"a": 1,}', r"line 2: malformed JSON \(.*column 9\)"),
        (b"[1, 2]", r"line 2: expected a JSON object, got list"),
        (b'"text"', r"line 2: expected a JSON object, got str"),
        (b'{"a": "caf\xe9"}', r"line 2: not UTF-8 \(byte b'\\xe9' at column 11\)"),
    ],
)
def test_jsonl_bad_line_names_file_and_line(tmp_path, bad, pattern):
    path = write_lines(tmp_path / "bad.jsonl", [b'{"a": 0}', bad, b'{"a": 2}'])
    with pytest.raises(DataError, match=r"bad\.jsonl: " + pattern) as info:
        list(iter_records(path))
    assert isinstance(info.value, ValueError) and info.value.line == 2 and info.value.path == path


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_empty_file(tmp_path, content, suffix):
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(content)
    with pytest.raises(DataError, match=rf"empty{suffix}: empty file"):
        list(iter_records(path))
    report = SkipReport()
    assert list(iter_records(path, skip_invalid=True, report=report)) == []
    assert report.counts == {"empty file": 1}


def test_skip_invalid_counts_every_skipped_record(tmp_path):
    path = write_lines(tmp_path / "mixed.jsonl", [b'{"a": 1}', b"{nope", b"[1]", b"\xff\xfe", b'{"a": 5}', b"7"])
    report = SkipReport()
    got = list(iter_records(path, skip_invalid=True, report=report))
    assert got == [(1, {"a": 1}), (5, {"a": 5})]
    assert report.total == 4
    assert report.counts == {"malformed JSON": 1, "not an object": 2, "not UTF-8": 1}
    summary = report.summary()
    assert "skipped 4" in summary and "mixed.jsonl: line 2" in summary


def test_skip_invalid_without_a_report_warns_at_the_end(tmp_path):
    path = write_lines(tmp_path / "w.jsonl", [b'{"a": 1}', b"{nope"])
    with pytest.warns(UserWarning, match=r"w\.jsonl: skipped 1 invalid record.*1 malformed JSON"):
        assert len(list(iter_records(path, skip_invalid=True))) == 1


def test_require_field(tmp_path):
    path = tmp_path / "r.jsonl"
    record = {"source": "x", "n": 3, "none": None}
    assert require_field(record, "source", path, 4) == "x"
    assert require_field(record, "n", path, 4) == 3
    with pytest.raises(DataError, match=r"r\.jsonl: line 4: field 'target': missing \(record has 'source'") as info:
        require_field(record, "target", path, 4)
    assert info.value.field == "target" and info.value.kind == "missing field 'target'"
    with pytest.raises(DataError, match=r"line 4: field 'none': is null"):
        require_field(record, "none", path, 4)
    with pytest.raises(DataError, match=r"line 4: field 'n': expected str, got int \(3\)"):
        require_field(record, "n", path, 4, str)


def test_json_array_and_data_wrapper(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"x": 1}, {"x": 2}]))
    assert list(iter_records(tmp_path / "a.json")) == [(1, {"x": 1}), (2, {"x": 2})]
    (tmp_path / "b.json").write_text(json.dumps({"version": "v2.0", "data": [{"x": 1}]}))
    assert list(iter_records(tmp_path / "b.json")) == [(1, {"x": 1})]
    (tmp_path / "c.json").write_text('[{"x": 1}, 5]')
    with pytest.raises(DataError, match=r"c\.json: record 2: expected a JSON object, got int"):
        list(iter_records(tmp_path / "c.json"))


def test_json_holding_json_lines(tmp_path):
    # many hub datasets ship JSON Lines named .json
    path = write_lines(tmp_path / "lines.json", [b'{"x": 1}', b'{"x": 2}'])
    assert list(iter_records(path)) == [(1, {"x": 1}), (2, {"x": 2})]


def test_json_bad_document_names_the_line(tmp_path):
    path = write_lines(tmp_path / "bad.json", [b"[", b'  {"x": 1},', b'  {"x": 2,}', b"]"])
    with pytest.raises(DataError, match=r"bad\.json: malformed JSON \(.*line 3 column"):
        list(iter_records(path))
    path = write_lines(tmp_path / "latin.json", [b"[", b'  {"x": "\xe9"}', b"]"])
    with pytest.raises(DataError, match=r"latin\.json: record 2: not UTF-8"):
        list(iter_records(path))


def test_parquet_rows_in_batches(tmp_path):
    n = 2500  # more than one row batch
    pq.write_table(pa.table({"source": [f"s{i}" for i in range(n)], "k": list(range(n))}), tmp_path / "t.parquet")
    rows = list(iter_records(tmp_path / "t.parquet"))
    assert len(rows) == n
    assert rows[0] == (1, {"source": "s0", "k": 0}) and rows[-1] == (n, {"source": f"s{n - 1}", "k": n - 1})


def test_parquet_empty_and_corrupt(tmp_path):
    pq.write_table(pa.table({"source": pa.array([], pa.string())}), tmp_path / "empty.parquet")
    with pytest.raises(DataError, match=r"empty\.parquet: empty file"):
        list(iter_records(tmp_path / "empty.parquet"))
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"junk\.parquet: not a readable parquet file"):
        list(iter_records(tmp_path / "junk.parquet"))


def test_parquet_missing_field_names_the_row(tmp_path):
    pq.write_table(pa.table({"source": ["a", "b"], "target": ["x", None]}), tmp_path / "p.parquet")
    rows = list(iter_records(tmp_path / "p.parquet"))
    with pytest.raises(DataError, match=r"p\.parquet: row 2: field 'target': is null"):
        for line, record in rows:
            require_field(record, "target", tmp_path / "p.parquet", line)


def test_gzipped_jsonl(tmp_path):
    with gzip.open(tmp_path / "z.jsonl.gz", "wb") as f:
        f.write(b'{"x": 1}\n{bad\n')
    with pytest.raises(DataError, match=r"z\.jsonl\.gz: line 2: malformed JSON"):
        list(iter_records(tmp_path / "z.jsonl.gz"))


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file"):
        list(iter_records(tmp_path / "nope.jsonl"))
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(DataError, match=r"data\.csv: unsupported file type"):
        list(iter_records(tmp_path / "data.csv"))
