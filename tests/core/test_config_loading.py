"""load_config / parse_config_text: JSON and YAML read to the same plain values, or a ConfigError."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from mixcore.api.errors import ConfigError
from mixcore.config import load_config, parse_config_text
from mixcore.config.loading import MAX_BYTES, MAX_DEPTH, MAX_INT_DIGITS, MAX_VALUES

CONFIG: dict[str, Any] = {
    "model_name_or_path": "qwen-vl/qwen-vl-chat-7b",
    "dataset": {
        "train": [{"name": "chatml_dataset", "data_files": ["a.json", "b.json"], "weight": 0.25}],
        "eval": [],
    },
    "output_dir": "./checkpoints/ünïcode 模型",
    "learning_rate": 1e-05,
    "num_train_epochs": 1,
    "bf16": True,
    "save_total_limit": None,
    "model_options": {"config_overrides": {"num_hidden_layers": 2, "ratio": -0.5}},
}


def problems(raw: bytes, suffix: str = ".json") -> list[str]:
    """The issues parse_config_text reports, as "path: message" lines."""
    with pytest.raises(ConfigError) as info:
        parse_config_text(raw, suffix=suffix)
    assert info.value.source == "<text>"
    return [str(issue) for issue in info.value.issues]


def only_problem(raw: bytes, suffix: str = ".json") -> str:
    found = problems(raw, suffix)
    assert len(found) == 1, found
    return found[0]


# -- equivalence -----------------------------------------------------------------------------------


def test_json_yaml_and_yml_files_load_to_equal_values(tmp_path: Path) -> None:
    (tmp_path / "c.json").write_text(json.dumps(CONFIG, ensure_ascii=False), encoding="utf-8")
    text = yaml.safe_dump(CONFIG, allow_unicode=True, sort_keys=False)
    (tmp_path / "c.yaml").write_text(text, encoding="utf-8")
    (tmp_path / "c.YML").write_text(text, encoding="utf-8")
    loaded = [load_config(tmp_path / name) for name in ("c.json", "c.yaml", "c.YML")]
    assert loaded[0] == CONFIG
    assert loaded[1] == CONFIG
    assert loaded[2] == CONFIG


def test_hand_written_yaml_reads_like_the_json_it_mirrors() -> None:
    text = b"""
model_name_or_path: qwen-vl/qwen-vl-chat-7b
dataset:
  train:
    - {name: chatml_dataset, data_files: [a.json, b.json], weight: 0.25}
  eval: []
output_dir: "./checkpoints/\xc3\xbcn\xc3\xafcode \xe6\xa8\xa1\xe5\x9e\x8b"
learning_rate: 1.0e-5   # YAML 1.1 needs the dot for a float
num_train_epochs: 1
bf16: true
save_total_limit: ~
model_options:
  config_overrides: {num_hidden_layers: 2, ratio: -0.5}
"""
    assert parse_config_text(text, suffix=".yaml") == CONFIG


def test_loaded_values_are_plain_json_types() -> None:
    loaded = parse_config_text(
        b"a: 1\nb: 2.5\nc: yes\nd: null\ne: [x]\nf: {g: h}\n", suffix=".yaml"
    )
    assert loaded == {"a": 1, "b": 2.5, "c": True, "d": None, "e": ["x"], "f": {"g": "h"}}
    assert [type(v) for v in loaded.values()] == [int, float, bool, type(None), list, dict]


def test_utf8_byte_order_mark_is_accepted_in_json_and_yaml() -> None:
    assert parse_config_text(b'\xef\xbb\xbf{"a": 1}', suffix=".json") == {"a": 1}
    assert parse_config_text(b"\xef\xbb\xbfa: 1\n", suffix=".yaml") == {"a": 1}


def test_other_suffixes_are_read_as_json_when_they_look_like_json(tmp_path: Path) -> None:
    (tmp_path / "config.cfg").write_text('{"a": [1, 2]}', encoding="utf-8")
    (tmp_path / "config.txt").write_text("a: [1, 2]\n", encoding="utf-8")
    assert load_config(tmp_path / "config.cfg") == {"a": [1, 2]}
    assert load_config(tmp_path / "config.txt") == {"a": [1, 2]}


def test_yaml_anchors_and_merge_keys_expand_into_plain_values() -> None:
    text = b"""
defaults: &defaults {name: chatml_dataset, weight: 1.0}
dataset:
  train:
    - <<: *defaults
      data_files: a.json
    - <<: *defaults
      weight: 3.0
      data_files: b.json
"""
    train = parse_config_text(text, suffix=".yaml")["dataset"]["train"]
    assert train == [
        {"name": "chatml_dataset", "weight": 1.0, "data_files": "a.json"},
        {"name": "chatml_dataset", "weight": 3.0, "data_files": "b.json"},
    ]


def test_surrogate_pairs_in_json_escapes_are_text() -> None:
    assert parse_config_text(b'{"a": "\\ud83d\\ude00"}') == {"a": "\U0001f600"}


# -- errors: the file as a whole -------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"", b" \n\t ", b"\xef\xbb\xbf"])
@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_empty_files_are_refused(raw: bytes, suffix: str) -> None:
    assert only_problem(raw, suffix) == "$: the file is empty; a config is a JSON or YAML object"


@pytest.mark.parametrize(
    ("raw", "suffix", "got"),
    [
        (b"[1, 2]", ".json", "got array [1, 2]"),
        (b'"hello"', ".json", 'got string "hello"'),
        (b"3", ".json", "got integer 3"),
        (b"null", ".json", "got nothing"),
        (b"- a\n", ".yaml", 'got array ["a"]'),
        (b"# only a comment\n", ".yaml", "got nothing"),
    ],
)
def test_a_config_must_be_an_object(raw: bytes, suffix: str, got: str) -> None:
    assert only_problem(raw, suffix) == f"$: a config must be an object (key: value pairs), {got}"


def test_utf16_and_utf32_files_are_named_as_such() -> None:
    assert "UTF-16" in only_problem('{"a": 1}'.encode("utf-16"))
    assert "UTF-16" in only_problem(b"\xfe\xff" + "a: 1".encode("utf-16-be"), ".yaml")
    assert "UTF-32" in only_problem('{"a": 1}'.encode("utf-32"))


def test_nul_bytes_point_at_a_missing_byte_order_mark_or_a_binary_file() -> None:
    message = only_problem('{"a": 1}'.encode("utf-16-le"))
    assert message.startswith("$: NUL byte at line 1")
    assert "byte-order mark" in message


def test_latin1_bytes_are_reported_with_line_and_offset() -> None:
    raw = '{\n"a": 1,\n"b": "café"}'.encode("latin-1")
    assert only_problem(raw) == (
        f"$: not UTF-8 text: byte 0xe9 at line 3 (offset {raw.index(0xE9)}); save the file as UTF-8"
    )


def test_invalid_json_reports_line_and_column() -> None:
    assert only_problem(b'{\n  "a": 1,\n}').startswith("$: invalid JSON at line 3 column 1:")


@pytest.mark.parametrize("raw", [b'{"a": 1, "a": 2}', b'{"x": [{"a": 1, "a": 2}]}'])
def test_duplicate_json_keys_are_refused(raw: bytes) -> None:
    assert only_problem(raw) == "$: invalid JSON: key 'a' appears twice in one object"


def test_duplicate_yaml_keys_are_refused_with_their_line() -> None:
    message = only_problem(b"x:\n  a: 1\n  a: 2\n", ".yaml")
    assert message == "$: invalid YAML at line 3 column 3: key 'a' appears twice in one mapping"


def test_a_key_beside_a_merge_may_override_it_but_not_repeat_itself() -> None:
    assert parse_config_text(b"x:\n  <<: {a: 1, b: 2}\n  a: 3\n", suffix=".yaml") == {
        "x": {"a": 3, "b": 2}
    }
    assert "appears twice" in only_problem(b"x:\n  a: 1\n  <<: {b: 2}\n  a: 3\n", ".yaml")


def test_yaml_syntax_errors_say_where_the_construct_began() -> None:
    message = only_problem(b'a: 1\nb: "open\n', ".yaml")
    assert message == (
        "$: invalid YAML at line 3 column 1: while scanning a quoted scalar "
        "(from line 2 column 4), found unexpected end of stream"
    )


def test_yaml_control_characters_are_named_with_their_line() -> None:
    assert only_problem(b"a: 1\nb: x\x07\n", ".yaml") == (
        "$: invalid YAML at line 2: character U+0007 is not allowed in YAML text"
    )


@pytest.mark.parametrize(
    "raw",
    [
        b'{"learning_rate": NaN}',
        b'{"learning_rate": Infinity}',
        b'{"learning_rate": -Infinity}',
    ],
)
def test_json_nan_and_infinity_are_refused(raw: bytes) -> None:
    assert "is not a JSON number; write a finite number or a string" in only_problem(raw)


@pytest.mark.parametrize(
    ("raw", "suffix"),
    [
        (b'{"x": {"learning_rate": 1e999}}', ".json"),
        (b"x:\n  learning_rate: .inf\n", ".yaml"),
        (b"x:\n  learning_rate: .nan\n", ".yaml"),
    ],
)
def test_numbers_that_are_not_finite_are_refused_with_their_path(raw: bytes, suffix: str) -> None:
    assert only_problem(raw, suffix) == "$.x.learning_rate: not a finite number"


def test_integers_up_to_the_digit_limit_load_and_longer_ones_are_refused() -> None:
    longest = "7" * MAX_INT_DIGITS
    assert parse_config_text(f'{{"a": {longest}}}'.encode())["a"] == int(longest)
    assert parse_config_text(f"a: -{longest}\n".encode(), suffix=".yaml")["a"] == -int(longest)
    too_long = longest + "7"
    assert only_problem(f'{{"a": {too_long}}}'.encode()) == (
        f"$: invalid JSON: an integer has {MAX_INT_DIGITS + 1} digits; "
        f"numbers in a config have at most {MAX_INT_DIGITS}"
    )
    assert only_problem(f"a: {too_long}\n".encode(), ".yaml") == (
        f"$: invalid YAML at line 1 column 4: an integer has {MAX_INT_DIGITS + 1} digits; "
        f"numbers in a config have at most {MAX_INT_DIGITS}"
    )
    assert "at most" in only_problem(b"a: 0x" + b"f" * 5000 + b"\n", ".yaml")


def test_nesting_beyond_the_limit_is_refused_with_the_path() -> None:
    def lists(depth: int) -> bytes:  # {"a": [[...]]} with ``depth`` lists; the innermost empty
        return b'{"a": ' + b"[" * depth + b"]" * depth + b"}"

    assert parse_config_text(lists(MAX_DEPTH))["a"]
    assert only_problem(lists(MAX_DEPTH + 1)) == (
        "$.a" + "[0]" * MAX_DEPTH + f": nested more than {MAX_DEPTH} levels deep"
    )


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_ten_thousand_nested_arrays_are_refused_without_recursion_error(suffix: str) -> None:
    assert only_problem(b"[" * 10_000 + b"]" * 10_000, suffix) == (
        f"$: nested more than {MAX_DEPTH} levels deep"
    )


def test_yaml_alias_expansion_is_bounded() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 7)]
    message = only_problem("\n".join(lines).encode(), ".yaml")
    assert message == f"$: more than {MAX_VALUES} values (are YAML aliases expanding?)"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"x:\n  when: 2024-01-01\n", "$.x.when: a date value is not allowed here"),
        (b"x: [2024-01-01 10:00:00]\n", "$.x[0]: a datetime value is not allowed here"),
        (b"x: !!binary aGVsbG8=\n", "$.x: a bytes value is not allowed here"),
        (b"x: !!set {a, b}\n", "$.x: a set value is not allowed here"),
    ],
)
def test_yaml_only_types_are_reported_with_their_path(raw: bytes, expected: str) -> None:
    assert only_problem(raw, ".yaml").startswith(expected)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"1: a\n", "$: key 1 (integer) is not a string; quote it"),
        (b"x:\n  on: 1\n", "$.x: key True (boolean) is not a string; quote it"),
        (b"x:\n  ~: 1\n", "$.x: key None (null) is not a string; quote it"),
        (b"? [a]\n: 1\n", "$: invalid YAML at line 1 column 3: mapping keys must be strings"),
    ],
)
def test_yaml_keys_must_be_strings(raw: bytes, expected: str) -> None:
    assert only_problem(raw, ".yaml") == expected


def test_python_tags_are_refused_without_running_anything(tmp_path: Path) -> None:
    target = tmp_path / "created_by_yaml"
    raw = f"x: !!python/object/apply:os.mkdir [{json.dumps(str(target))}]\n".encode()
    assert "could not determine a constructor" in only_problem(raw, ".yaml")
    assert not target.exists()


def test_lone_surrogate_escapes_are_refused_in_values_and_keys() -> None:
    assert only_problem(b'{"x": ["\\ud800"]}') == (
        "$.x[0]: the text holds \\ud800, half of a UTF-16 surrogate pair; it is not valid text"
    )
    assert only_problem(b'{"x": {"\\udfff": 1}}').startswith("$.x: a key holds \\udfff")


# -- errors: load_config names the file ------------------------------------------------------------


def test_load_config_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_bytes(b"{")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.source == str(path)
    assert str(info.value).startswith(f"{path}: 1 problem(s)\n  $: invalid JSON at line 1")


def test_missing_file_and_folder_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as missing:
        load_config(tmp_path / "nope.yaml")
    assert [str(i) for i in missing.value.issues] == ["$: file not found"]
    with pytest.raises(ConfigError) as folder:
        load_config(tmp_path)
    assert [str(i) for i in folder.value.issues] == ["$: is a folder, not a config file"]


def test_files_over_the_size_limit_are_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "huge.json"
    path.write_bytes(b" " * (MAX_BYTES + 1))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.issues[0].message == (
        f"file is {MAX_BYTES + 1} bytes; configs are limited to {MAX_BYTES}"
    )


def test_yaml_exponent_floats_without_a_dot_are_numbers(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 1e-5\nweight_decay: 2E+2\nname: 1e5x\nwarmup_ratio: .5e-1\n")
    data = load_config(path)
    assert data == {
        "learning_rate": 1e-5,
        "weight_decay": 200.0,
        "name": "1e5x",
        "warmup_ratio": 0.05,
    }
