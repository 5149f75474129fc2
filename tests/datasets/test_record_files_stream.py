"""Data files read one record at a time give what reading them whole gives, errors included."""

from __future__ import annotations

import json

import pytest
from mixcore_datasets import record_files
from mixcore_datasets.record_files import iter_json_lines, iter_json_list, read_json_lines

from mixcore.api.errors import DataError

TEXTS = [
    "[]",
    " [ ] ",
    "[1, 22, 333]",
    '[{"a": "\\u00e9t\\u00e9", "b": [1, 2]}, {"c": null}]',
    "\ufeff[1]",
    "[123456789012345]",
    "[1,]",
    "[1 2]",
    "[1",
    "",
    "[1] x",
]


@pytest.mark.parametrize("chunk", [3, 7, 1 << 22])
@pytest.mark.parametrize("text", TEXTS)
def test_json_list_read_in_chunks_equals_json_loads(tmp_path, monkeypatch, chunk, text):
    monkeypatch.setattr(record_files, "_CHUNK", chunk)  # every chunk boundary gets crossed
    path = tmp_path / "data.json"
    path.write_text(text, encoding="utf-8")
    try:
        want = json.loads(text.removeprefix("\ufeff"))
    except json.JSONDecodeError as exc:
        with pytest.raises(DataError) as caught:
            list(iter_json_list(path, "data file"))
        assert caught.value.reason == (
            f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        )
    else:
        assert list(iter_json_list(path, "data file")) == want


def test_an_error_deep_in_a_large_file_names_its_line_and_column(tmp_path, monkeypatch):
    monkeypatch.setattr(record_files, "_CHUNK", 64)
    text = json.dumps([{"i": i, "t": "x" * (i % 50)} for i in range(3000)], indent=1)
    at = text.index('"i": 1500') + 5
    bad = text[:at] + "?" + text[at:]
    (tmp_path / "data.json").write_text(bad)
    with pytest.raises(json.JSONDecodeError) as want:
        json.loads(bad)
    with pytest.raises(DataError, match=f"line {want.value.lineno} column {want.value.colno}"):
        list(iter_json_list(tmp_path / "data.json", "data file"))


def test_a_file_holding_another_value_says_which(tmp_path):
    (tmp_path / "data.json").write_text('{"records": []}')
    with pytest.raises(ValueError, match="object"):
        list(iter_json_list(tmp_path / "data.json", "data file"))


def test_json_lines_one_at_a_time(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes('\ufeff{"a": 1}\n\n{"b": "\u00e9"}\n'.encode())
    assert list(iter_json_lines(path, "data file")) == [{"a": 1}, {"b": "\u00e9"}]
    path.write_text('{"a": 1}\n{"b": \n')
    with pytest.raises(DataError) as whole:
        read_json_lines(path, "data file")
    with pytest.raises(DataError) as streamed:
        list(iter_json_lines(path, "data file"))
    assert streamed.value.reason == whole.value.reason
    assert "line 2 (record 1) column 7" in streamed.value.reason
