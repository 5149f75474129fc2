"""Malformed config files make ``mixcore validate`` exit 2 with a clear message, never a traceback.

Acceptance: at least 200 malformed configs (wrong types, missing fields, garbage JSON/YAML, huge
numbers, wrong encodings). ``CORPUS`` holds the hand-written cases, each written as raw bytes and
checked for the JSON path or message fragment that names its problem; the hypothesis tests add
random mutations of a valid config and random bytes. Every case runs the real CLI in-process
against the installed plugins; a few also run the installed command in a subprocess.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from mixcore.config.schema import CORE_PROPERTIES, dataset_entry_schema
from mixcore.testing import CliResult, make_registry, run_cli

#: A valid config (PaddleMIX field names) that every schema-level case breaks in one place.
BASE: dict[str, Any] = {
    "model_name_or_path": "qwen_vl/tiny",
    "model_options": {"random_init": True},
    "dataset": {
        "train": [
            {"name": "chatml_dataset", "data_files": "train.json"},
            {"name": "chatml_dataset", "data_files": ["train.json"], "weight": 0.5},
        ],
        "eval": [{"name": "chatml_dataset", "data_files": "train.json"}],
    },
    "output_dir": "out",
    # Validation of a run that trains needs a model plugin claiming "sft"; this base only
    # evaluates, so it stays valid whatever the installed qwen_vl plugin claims.
    "do_train": False,
    "mixtoken": False,
    "max_length": 512,
    "per_device_train_batch_size": 1,
    "gradient_accumulation_steps": 8,
    "num_train_epochs": 1,
    "learning_rate": 1e-5,
    "warmup_ratio": 0.01,
    "lr_scheduler_type": "cosine",
    "logging_steps": 1,
    "save_steps": 1000,
    "evaluation_strategy": "no",
    "save_strategy": "steps",
    "seed": 42,
    "bf16": True,
    "fp16_opt_level": "O2",
    "freeze_include": ["*visual*"],
    "freeze_exclude": ["*visual.attn_pool*"],
    "lora": False,
    "lora_rank": 8,
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    "lora_target_modules": [".*attn.c_attn.*"],
    "tensor_parallel_degree": 1,
    "pipeline_parallel_degree": 1,
    "sharding_parallel_degree": 1,
}

#: Replaced, in a case's bytes, by the (JSON-escaped) folder the case is written into.
DIR = "@DIR@"
_DELETE = object()


@dataclass(frozen=True)
class Case:
    """One malformed config: its bytes, and what the output must contain to name the problem."""

    id: str
    raw: bytes | None
    expect: tuple[str, ...]
    suffix: str = ".json"
    kind: str = "file"  # "file", "folder" (a directory passed as --config) or "missing"
    args: tuple[str, ...] = ()

    def write(self, folder: Path) -> Path:
        path = folder / f"{self.id}{self.suffix}"
        if self.kind == "folder":
            path.mkdir()
        elif self.kind == "file":
            assert self.raw is not None
            escaped = json.dumps(str(folder))[1:-1].encode()
            path.write_bytes(self.raw.replace(DIR.encode(), escaped))
        return path


# -- building cases --------------------------------------------------------------------------------

_STEP = re.compile(r"\.(\w+)|\[(\d+)\]")


def _steps(path: str) -> list[str | int]:
    """``$.dataset.train[1].data_files`` -> ["dataset", "train", 1, "data_files"]."""
    assert path.startswith("$"), path
    steps = [m.group(1) if m.group(1) else int(m.group(2)) for m in _STEP.finditer(path)]
    assert "".join(m.group(0) for m in _STEP.finditer(path)) == path[1:], path
    return steps


def changed(*edits: tuple[str, Any]) -> dict[str, Any]:
    """A copy of BASE with each (JSON path, value) set, or deleted when the value is _DELETE."""
    config = copy.deepcopy(BASE)
    for path, value in edits:
        *parents, last = _steps(path)
        node: Any = config
        for step in parents:
            node = node[step]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value
    return config


def dump(config: Any, suffix: str = ".json") -> bytes:
    if suffix == ".json":
        return json.dumps(config, indent=2).encode()
    return yaml.safe_dump(config, sort_keys=False, allow_unicode=True).encode()


def raw(case_id: str, data: bytes, *expect: str, suffix: str = ".json") -> Case:
    return Case(case_id, data, expect, suffix)


def edit(case_id: str, path: str, value: Any, *expect: str, suffix: str = ".json") -> Case:
    """BASE with one value replaced; the output must name ``path`` (and each fragment)."""
    return Case(case_id, dump(changed((path, value)), suffix), (path, *expect), suffix)


def drop(case_id: str, path: str, *expect: str) -> Case:
    """BASE without the key at ``path``."""
    return Case(case_id, dump(changed((path, _DELETE))), expect)


def config(case_id: str, data: Any, *expect: str, suffix: str = ".json", args=()) -> Case:
    return Case(case_id, dump(data, suffix), expect, suffix, args=tuple(args))


def nested(depth: int, opener: bytes = b"[", closer: bytes = b"]") -> bytes:
    return opener * depth + closer * depth


LAUGHS = b"".join(
    [b"a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"]
    + [
        f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n".encode()
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    ]
)
BIG = "9" * 5000
NOT_AN_OBJECT = "a config must be an object"
BAD_JSON = "invalid JSON at line"
NESTED = "nested more than 64 levels deep"
NO_CONSTRUCTOR = "could not determine a constructor"
TRAIN0 = "$.dataset.train[0]"
TRAIN1 = "$.dataset.train[1]"
EVAL0 = "$.dataset.eval[0]"

FILE_LEVEL = [
    # -- empty and garbage ----------------------------------------------------------------------
    raw("empty_json", b"", "the file is empty"),
    raw("empty_yaml", b"", "the file is empty", suffix=".yaml"),
    raw("whitespace_json", b"  \n\t\r\n   ", "the file is empty"),
    raw("whitespace_yml", b"\n\n    \n", "the file is empty", suffix=".yml"),
    raw("bom_only", b"\xef\xbb\xbf", "the file is empty"),
    raw("garbage_high_bytes", bytes(range(128, 256)), "not UTF-8 text: byte 0x80 at line 1"),
    raw("garbage_png_header", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "NUL byte"),
    raw("garbage_jpeg_header_yaml", b"\xff\xd8\xff\xe0\x00\x10JFIF", "NUL byte", suffix=".yaml"),
    raw("garbage_ascii_noise", b"#$%^&*()!@~", BAD_JSON),
    raw("nul_bytes_only", b"\x00" * 16, "NUL byte at line 1"),
    raw("nul_byte_inside_string", b'{\n"output_dir": "a\x00b"}', "NUL byte at line 2"),
    # -- broken JSON syntax ---------------------------------------------------------------------
    raw("truncated_object", b'{"model_name_or_path": "x", "dataset": {', BAD_JSON),
    raw("truncated_in_string", b'{"output_dir": "ou', BAD_JSON),
    raw("truncated_after_colon", b'{"output_dir":', BAD_JSON),
    raw("truncated_half_of_base", dump(BASE)[: len(dump(BASE)) // 2], BAD_JSON),
    raw("only_open_brace", b"{", "invalid JSON at line 1 column 2"),
    raw("trailing_comma_object", b'{"output_dir": "o",\n}', "invalid JSON at line 2 column 1"),
    raw("trailing_comma_array", b'{"freeze_include": ["a",]}', BAD_JSON),
    raw("line_comment", b'{\n  // the model\n  "output_dir": "o"\n}', "invalid JSON at line 2"),
    raw("block_comment", b'{/* c */ "output_dir": "o"}', BAD_JSON),
    raw("hash_comment", b'{\n# c\n"output_dir": "o"}', "invalid JSON at line 2"),
    raw("single_quotes", b"{'output_dir': 'o'}", BAD_JSON),
    raw("unquoted_keys", b'{output_dir: "o"}', BAD_JSON),
    raw("python_true", b'{"bf16": True}', BAD_JSON),
    raw("python_none", b'{"output_dir": None}', BAD_JSON),
    raw("javascript_undefined", b'{"output_dir": undefined}', BAD_JSON),
    raw("hex_number", b'{"seed": 0x10}', BAD_JSON),
    raw("leading_zeros", b'{"seed": 007}', BAD_JSON),
    raw("leading_plus", b'{"seed": +1}', BAD_JSON),
    raw("two_objects", b"{} {}", "Extra data"),
    raw("raw_newline_in_string", b'{"output_dir": "a\nb"}', BAD_JSON),
    raw("control_char_in_string", b'{"output_dir": "a\x01b"}', BAD_JSON),
    raw("missing_colon", b'{"output_dir" "o"}', BAD_JSON),
    raw("missing_comma", b'{"a": 1 "b": 2}', BAD_JSON),
    raw("bom_then_garbage", b"\xef\xbb\xbf{oops", BAD_JSON),
    # -- duplicate keys -------------------------------------------------------------------------
    raw(
        "duplicate_key_json",
        b'{"output_dir": "a", "output_dir": "b"}',
        "'output_dir' appears twice",
    ),
    raw(
        "duplicate_key_nested_json",
        b'{"dataset": {"train": [{"name": "x", "name": "y"}]}}',
        "'name' appears twice",
    ),
    raw(
        "duplicate_key_yaml",
        b"output_dir: a\noutput_dir: b\n",
        "line 2",
        "appears twice",
        suffix=".yaml",
    ),
    raw(
        "duplicate_key_nested_yaml",
        b"dataset:\n  train:\n    - name: a\n      name: b\n",
        "line 4",
        "'name' appears twice",
        suffix=".yaml",
    ),
    raw(
        "duplicate_key_beside_merge_yaml",
        b"x:\n  a: 1\n  <<: {a: 2}\n  a: 3\n",
        "line 4",
        "'a' appears twice",
        suffix=".yaml",
    ),
    # -- numbers JSON cannot hold ---------------------------------------------------------------
    raw("nan_json", b'{"learning_rate": NaN}', "NaN is not a JSON number"),
    raw("infinity_json", b'{"learning_rate": Infinity}', "Infinity is not a JSON number", "finite"),
    raw("minus_infinity_json", b'{"learning_rate": -Infinity}', "-Infinity is not a JSON number"),
    raw("exponent_overflow_json", b'{"learning_rate": 1e999}', "$.learning_rate", "not a finite"),
    raw("negative_overflow_json", b'{"weight_decay": -1e999}', "$.weight_decay", "not a finite"),
    raw("long_float_overflow_json", b'{"lr": ' + BIG.encode() + b".5}", "$.lr", "not a finite"),
    raw("nan_yaml", b"learning_rate: .nan\n", "$.learning_rate", "not a finite", suffix=".yaml"),
    raw(
        "infinity_yaml",
        b"learning_rate: -.inf\n",
        "$.learning_rate",
        "not a finite",
        suffix=".yaml",
    ),
    raw(
        "overflow_yaml",
        b"learning_rate: 1.0e+999\n",
        "$.learning_rate",
        "not a finite",
        suffix=".yaml",
    ),
    raw("int_5000_digits_json", b'{"max_length": ' + BIG.encode() + b"}", "5000 digits"),
    raw("negative_int_5000_digits_json", b'{"seed": -' + BIG.encode() + b"}", "5000 digits"),
    raw("int_5000_digits_in_list_json", b'{"a": [1, ' + BIG.encode() + b"]}", "5000 digits"),
    raw("int_5000_digits_yaml", f"max_length: {BIG}\n".encode(), "at most 1000", suffix=".yaml"),
    raw(
        "hex_int_5000_digits_yaml",
        b"seed: 0x" + b"f" * 5000 + b"\n",
        "at most 1000",
        suffix=".yaml",
    ),
    raw("int_5000_digits_nested_yaml", f"a:\n  b: [{BIG}]\n".encode(), "line 2", suffix=".yaml"),
    # -- nesting --------------------------------------------------------------------------------
    raw("nested_arrays_10000_json", nested(10000), NESTED),
    raw("nested_values_10000_json", b'{"a":' * 10000 + b"1" + b"}" * 10000, NESTED),
    raw("nested_arrays_in_field_json", b'{"freeze_include": ' + nested(10000) + b"}", NESTED),
    raw("nested_arrays_65_json", b'{"a": ' + nested(65) + b"}", NESTED),
    raw("nested_flow_10000_yaml", nested(10000), NESTED, suffix=".yaml"),
    raw(
        "nested_block_2000_yaml",
        b"".join(b"  " * i + b"a:\n" for i in range(2000)) + b"  " * 2000 + b"1\n",
        NESTED,
        suffix=".yaml",
    ),
    # -- encodings ------------------------------------------------------------------------------
    raw("utf16_le_bom", json.dumps(BASE).encode("utf-16"), "UTF-16"),
    raw("utf16_be_bom", b"\xfe\xff" + json.dumps(BASE).encode("utf-16-be"), "UTF-16"),
    raw("utf16_bom_yaml", "output_dir: o\n".encode("utf-16"), "UTF-16", suffix=".yaml"),
    raw("utf32_bom", json.dumps(BASE).encode("utf-32"), "UTF-32"),
    raw("utf16_without_bom", json.dumps(BASE).encode("utf-16-le"), "NUL byte", "byte-order mark"),
    raw("latin1_json", '{\n"output_dir": "café"}'.encode("latin-1"), "not UTF-8", "0xe9", "line 2"),
    raw("latin1_yaml", "output_dir: Größe\n".encode("latin-1"), "not UTF-8", suffix=".yaml"),
    raw("cp1252_quotes", b'{"output_dir": \x93o\x94}', "not UTF-8", "0x93"),
    raw("invalid_utf8_in_string", b'{"output_dir": "\xc3\x28"}', "not UTF-8", "0xc3"),
    raw("truncated_utf8_sequence", b'{"output_dir": "\xe2\x82"}', "not UTF-8"),
    raw("overlong_utf8", b'{"output_dir": "\xc0\xaf"}', "not UTF-8"),
    raw("utf8_encoded_surrogate", b'{"output_dir": "\xed\xa0\x80"}', "not UTF-8"),
    raw("lone_surrogate_escape_json", b'{"output_dir": "\\ud800"}', "$.output_dir", "surrogate"),
    raw("lone_surrogate_escape_key_json", b'{"\\udc00x": 1}', "a key", "surrogate"),
    raw("lone_surrogate_escape_yaml", b'output_dir: "\\ud800"\n', "surrogate", suffix=".yaml"),
    # -- not an object --------------------------------------------------------------------------
    raw("top_level_list_json", b'[{"output_dir": "o"}]', NOT_AN_OBJECT, "got array"),
    raw("top_level_string_json", b'"config.json"', NOT_AN_OBJECT, 'got string "config.json"'),
    raw("top_level_number_json", b"42", NOT_AN_OBJECT, "got integer 42"),
    raw("top_level_float_json", b"4.5", NOT_AN_OBJECT, "got number 4.5"),
    raw("top_level_null_json", b"null", NOT_AN_OBJECT, "got nothing"),
    raw("top_level_true_json", b"true", NOT_AN_OBJECT, "got boolean true"),
    raw("top_level_list_yaml", b"- output_dir: o\n", NOT_AN_OBJECT, suffix=".yaml"),
    raw("top_level_scalar_yaml", b"just some words\n", NOT_AN_OBJECT, suffix=".yaml"),
    raw("top_level_null_yaml", b"~\n", NOT_AN_OBJECT, suffix=".yaml"),
    raw("empty_document_yaml", b"---\n", NOT_AN_OBJECT, suffix=".yaml"),
    raw("comment_only_yaml", b"# nothing here\n", NOT_AN_OBJECT, suffix=".yml"),
    # -- YAML syntax ----------------------------------------------------------------------------
    raw("tab_indent_yaml", b"dataset:\n\ttrain: []\n", "invalid YAML at line 2", suffix=".yaml"),
    raw(
        "unclosed_double_quote_yaml", b'output_dir: "abc\n', "invalid YAML at line", suffix=".yaml"
    ),
    raw("unclosed_single_quote_yaml", b"output_dir: 'abc\n", "quoted scalar", suffix=".yaml"),
    raw(
        "unclosed_flow_mapping_yaml",
        b"dataset: {train: [\n",
        "invalid YAML at line",
        suffix=".yaml",
    ),
    raw("bad_indentation_yaml", b"  a: 1\n b: 2\n", "invalid YAML at line 2", suffix=".yaml"),
    raw("mapping_in_scalar_yaml", b"output_dir: a: b\n", "mapping values", suffix=".yaml"),
    raw("list_then_mapping_yaml", b"- a\nb: 1\n", "invalid YAML at line 2", suffix=".yaml"),
    raw("two_documents_yaml", b"a: 1\n---\nb: 2\n", "single document", suffix=".yaml"),
    raw("undefined_alias_yaml", b"output_dir: *nowhere\n", "undefined alias", suffix=".yaml"),
    raw("merge_of_scalar_yaml", b"a:\n  <<: 5\n", "for merging", suffix=".yaml"),
    raw("control_character_yaml", b"output_dir: a\x07b\n", "U+0007", suffix=".yaml"),
    raw("json_syntax_error_in_yml", b'{"a": [1, 2}\n', "invalid YAML at line 1", suffix=".yml"),
    # -- YAML types JSON does not have ----------------------------------------------------------
    raw("billion_laughs_yaml", LAUGHS, "more than 200000 values", suffix=".yaml"),
    raw("recursive_alias_yaml", b"a: &a [*a]\n", NESTED, suffix=".yaml"),
    raw("date_yaml", b"output_dir: 2024-01-01\n", "$.output_dir", "date value", suffix=".yaml"),
    raw(
        "timestamp_yaml",
        b"output_dir: 2001-12-14t21:59:43.10-05:00\n",
        "$.output_dir",
        "datetime value",
        suffix=".yaml",
    ),
    raw(
        "date_in_list_yaml",
        b"freeze_include: [2024-01-01]\n",
        "$.freeze_include[0]",
        suffix=".yaml",
    ),
    raw("binary_yaml", b"output_dir: !!binary aGVsbG8=\n", "$.output_dir", "bytes", suffix=".yaml"),
    raw("set_yaml", b"freeze_include: !!set {a, b}\n", "$.freeze_include", "set", suffix=".yaml"),
    raw("omap_yaml", b"model_options: !!omap [a: 1]\n", "$.model_options[0]", suffix=".yaml"),
    raw(
        "python_object_yaml",
        b"output_dir: !!python/object:os.system {}\n",
        NO_CONSTRUCTOR,
        suffix=".yaml",
    ),
    raw(
        "python_apply_yaml",
        b"!!python/object/apply:os.system ['echo pwned']\n",
        NO_CONSTRUCTOR,
        suffix=".yaml",
    ),
    raw("python_name_yaml", b"a: !!python/name:os.system\n", NO_CONSTRUCTOR, suffix=".yml"),
    raw("python_tuple_yaml", b"a: !!python/tuple [1, 2]\n", NO_CONSTRUCTOR, suffix=".yaml"),
    raw("custom_tag_yaml", b"output_dir: !secret out\n", NO_CONSTRUCTOR, suffix=".yaml"),
    raw("int_key_yaml", b"1: one\n", "key 1", "not a string", suffix=".yaml"),
    raw("null_key_yaml", b"~: nothing\n", "key None", "not a string", suffix=".yaml"),
    raw("bool_key_yaml_on", b"on: true\n", "key True", "not a string", suffix=".yaml"),
    raw("float_key_yaml", b"1.5: x\n", "not a string", suffix=".yaml"),
    raw("date_key_yaml", b"2024-01-01: x\n", "not a string", suffix=".yaml"),
    raw("list_key_yaml", b"? [a, b]\n: c\n", "keys must be strings", suffix=".yaml"),
    raw("mapping_key_yaml", b"? {a: b}\n: c\n", "keys must be strings", suffix=".yaml"),
    raw("nested_int_key_yaml", b"model_options:\n  3: x\n", "$.model_options", suffix=".yaml"),
    # -- the file itself ------------------------------------------------------------------------
    raw(
        "larger_than_16_mib", b'{"a": "' + b"x" * (16 * 1024 * 1024) + b'"}', "configs are limited"
    ),
    Case("folder_as_config", None, ("is a folder",), kind="folder"),
    Case("missing_file", None, ("file not found",), kind="missing"),
    Case("missing_yaml_file", None, ("file not found",), suffix=".yaml", kind="missing"),
]

ENTRY = {"name": "chatml_dataset", "data_files": "train.json"}

SCHEMA_LEVEL = [
    # -- required fields ------------------------------------------------------------------------
    drop(
        "missing_model_name_or_path",
        "$.model_name_or_path",
        'missing required key "model_name_or_path"',
    ),
    drop("missing_dataset", "$.dataset", 'missing required key "dataset"'),
    drop("missing_dataset_train", "$.dataset.train", "$.dataset", 'missing required key "train"'),
    drop("missing_output_dir", "$.output_dir", 'missing required key "output_dir"'),
    drop("missing_data_files", "$.dataset.train[0].data_files", TRAIN0, '"data_files"'),
    drop("missing_dataset_name", "$.dataset.eval[0].name", EVAL0, 'missing required key "name"'),
    config("empty_object", {}, '"model_name_or_path"', '"dataset"', '"output_dir"'),
    config("empty_object_yaml", {}, '"model_name_or_path"', suffix=".yaml"),
    # -- unknown keys and typos -----------------------------------------------------------------
    edit("unknown_top_level_key", "$.wandb_project", "x", "unknown key"),
    edit("typo_learning_rate", "$.learning_rat", 1e-5, "did you mean 'learning_rate'"),
    edit("typo_max_length", "$.max_lenght", 512, "did you mean 'max_length'"),
    edit("typo_output_dir", "$.output_dri", "o", "did you mean 'output_dir'"),
    edit("typo_lora_rank", "$.lora_rnak", 8, "did you mean 'lora_rank'"),
    edit("typo_num_train_epochs_yaml", "$.num_train_epoch", 1, "did you mean", suffix=".yaml"),
    edit(
        "typo_dataset_split",
        "$.dataset.test",
        [ENTRY],
        "unknown key",
        "allowed: cache, cache_dir, eval, eval_samples, stream_buffer, train, train_samples",
    ),
    edit("typo_data_files", "$.dataset.train[0].data_file", "x", "did you mean 'data_files'"),
    edit(
        "typo_chat_template", "$.dataset.eval[0].chat_templat", "t", "did you mean 'chat_template'"
    ),
    edit("unknown_model_option", "$.model_options.randominit", True, "did you mean 'random_init'"),
    # -- model ----------------------------------------------------------------------------------
    edit("model_name_or_path_number", "$.model_name_or_path", 7, "expected string"),
    edit("model_name_or_path_empty", "$.model_name_or_path", "", "must not be empty"),
    edit("model_name_or_path_null", "$.model_name_or_path", None, "expected string, got null"),
    edit("model_name_or_path_list", "$.model_name_or_path", ["qwen_vl"], "expected string"),
    edit(
        "unknown_model_alias",
        "$.model_name_or_path",
        "qwen-vl/qwen-vl-chat-8b",
        "did you mean 'qwen-vl/qwen-vl-chat-7b'",
    ),
    edit("unknown_model_path", "$.model_name_or_path", "./no/such/checkpoint", "unknown model"),
    edit(
        "folder_without_config_json",
        "$.model_name_or_path",
        f"{DIR}/ckpt_empty",
        "has no config.json",
    ),
    edit(
        "folder_with_unknown_model_type",
        "$.model_name_or_path",
        f"{DIR}/ckpt_llama",
        "no installed plugin loads checkpoint",
        "'llama'",
    ),
    edit(
        "folder_with_broken_config_json",
        "$.model_name_or_path",
        f"{DIR}/ckpt_broken",
        "cannot read",
    ),
    edit(
        "model_path_too_long",
        "$.model_name_or_path",
        "m" * 5000,
        "unknown model or local checkpoint folder",
    ),
    edit("unknown_explicit_model", "$.model", "qwen", "did you mean 'qwen_vl'"),
    edit("explicit_model_number", "$.model", 5, "expected string"),
    edit("model_options_list", "$.model_options", [], "expected object"),
    edit("model_options_string", "$.model_options", "random_init", "expected object"),
    edit("model_option_wrong_type", "$.model_options.random_init", "yes", "expected boolean"),
    edit("model_option_overrides_number", "$.model_options.config_overrides", 2, "expected object"),
    edit("freeze_include_string", "$.freeze_include", "*visual*", "expected array"),
    edit("freeze_include_empty_pattern", "$.freeze_include[0]", "", "must not be empty"),
    edit("freeze_exclude_number_item", "$.freeze_exclude[0]", 1, "expected string"),
    # -- dataset shape --------------------------------------------------------------------------
    edit("dataset_list", "$.dataset", [ENTRY], "expected object"),
    edit("dataset_string", "$.dataset", "train.json", "expected object"),
    edit("dataset_null", "$.dataset", None, "expected object, got null"),
    edit("train_object", "$.dataset.train", ENTRY, "expected array"),
    edit("train_string", "$.dataset.train", "train.json", "expected array"),
    edit("train_empty", "$.dataset.train", [], "at least 1"),
    edit("train_null_yaml", "$.dataset.train", None, "expected array", suffix=".yaml"),
    edit("eval_object", "$.dataset.eval", ENTRY, "expected array"),
    edit("entry_string", TRAIN1, "chatml_dataset", "expected object"),
    edit("entry_null", TRAIN0, None, "expected object, got null"),
    edit("entry_number", EVAL0, 3, "expected object"),
    edit("entry_list", TRAIN1, [ENTRY], "expected object"),
    edit("entry_empty_object", TRAIN0, {}, 'missing required key "name"'),
    # -- dataset entries ------------------------------------------------------------------------
    edit(
        "unknown_dataset_name", "$.dataset.train[1].name", "chatml", "did you mean 'chatml_dataset'"
    ),
    edit("unknown_dataset_name_eval", "$.dataset.eval[0].name", "coco_captions_v9", "allowed"),
    edit("dataset_name_number", "$.dataset.train[0].name", 5, "allowed"),
    edit("dataset_name_list", "$.dataset.train[0].name", ["chatml_dataset"], "allowed"),
    edit("dataset_name_object", "$.dataset.train[0].name", {"x": 1}, "allowed"),
    edit("data_files_number", "$.dataset.train[1].data_files", 5, "expected string or array"),
    edit("data_files_object", "$.dataset.train[0].data_files", {"a": 1}, "expected string"),
    edit("data_files_empty_list", "$.dataset.train[0].data_files", [], "expected string or array"),
    edit("data_files_number_item", "$.dataset.train[1].data_files", ["train.json", 3]),
    edit("data_files_empty_string", "$.dataset.eval[0].data_files", ""),
    edit("data_files_missing_file", "$.dataset.train[0].data_files", "nope.json", "file not found"),
    edit(
        "data_files_missing_in_list",
        "$.dataset.train[1].data_files[0]",
        "nope.json",
        "file not found",
    ),
    edit(
        "data_files_absolute_missing",
        "$.dataset.eval[0].data_files",
        "/no/such/t.json",
        "not found",
    ),
    edit(
        "data_files_name_too_long",
        "$.dataset.train[0].data_files",
        "d" * 5000,
        "File name too long",
    ),
    edit("data_files_wrong_type_yaml", "$.dataset.train[1].data_files", True, suffix=".yaml"),
    edit("chat_template_number", "$.dataset.train[0].chat_template", 5, "expected string"),
    edit(
        "chat_template_missing_file",
        "$.dataset.eval[0].chat_template",
        "tpl.json",
        "file not found",
    ),
    edit("weight_negative", "$.dataset.train[1].weight", -1, "must be > 0"),
    edit("weight_zero", "$.dataset.train[1].weight", 0, "must be > 0"),
    edit("weight_string", "$.dataset.train[1].weight", "0.5", "expected number"),
    edit("weight_bool", "$.dataset.train[1].weight", True, "expected number"),
    edit("num_samples_zero", "$.dataset.train[0].num_samples", 0, "must be >= 1"),
    edit("num_samples_float", "$.dataset.train[0].num_samples", 1.5, "expected integer"),
    edit("num_samples_string", "$.dataset.eval[0].num_samples", "10", "expected integer"),
    edit("label_empty", "$.dataset.train[0].label", "", "must not be empty"),
    config(
        "weight_and_num_samples",
        changed(("$.dataset.train[1].num_samples", 10)),
        "$.dataset.train[1]: give weight or num_samples, not both",
    ),
    # -- core fields: wrong types and ranges ----------------------------------------------------
    edit("max_length_string", "$.max_length", "512", "expected integer"),
    edit("max_length_float", "$.max_length", 512.5, "expected integer"),
    edit("max_length_bool", "$.max_length", True, "expected integer"),
    edit("max_length_too_small", "$.max_length", 8, "must be >= 16"),
    edit("max_length_too_large", "$.max_length", 10**7, "must be <="),
    edit("max_length_negative", "$.max_length", -1, "must be >= 16"),
    edit("max_length_50_digits", "$.max_length", 10**50, "must be <="),
    edit("seed_999_digits", "$.seed", int("7" * 999), "must be <="),
    edit("seed_negative", "$.seed", -1, "must be >= 0"),
    edit("seed_too_large", "$.seed", 2**32, "must be <="),
    edit("batch_size_zero", "$.per_device_train_batch_size", 0, "must be >= 1"),
    edit("batch_size_string", "$.per_device_train_batch_size", "1", "expected integer"),
    edit("batch_size_bool", "$.per_device_train_batch_size", False, "expected integer"),
    edit("eval_batch_size_float", "$.per_device_eval_batch_size", 1.5, "expected integer"),
    edit("gradient_accumulation_negative", "$.gradient_accumulation_steps", -1, "must be >= 1"),
    edit("epochs_zero", "$.num_train_epochs", 0, "must be > 0"),
    edit("epochs_string", "$.num_train_epochs", "3", "expected number"),
    edit("epochs_list", "$.num_train_epochs", [3], "expected number"),
    edit("learning_rate_zero", "$.learning_rate", 0, "must be > 0"),
    edit("learning_rate_string", "$.learning_rate", "1e-5", "expected number"),
    edit("learning_rate_too_large", "$.learning_rate", 100, "must be <= 10"),
    edit("learning_rate_huge_float", "$.learning_rate", 1e308, "must be <= 10"),
    edit("learning_rate_null", "$.learning_rate", None, "expected number, got null"),
    edit("learning_rate_bool", "$.learning_rate", True, "expected number"),
    edit("weight_decay_negative", "$.weight_decay", -0.1, "must be >= 0"),
    edit("adam_beta2_one", "$.adam_beta2", 1.0, "must be < 1"),
    edit("warmup_ratio_above_one", "$.warmup_ratio", 1.5, "must be <= 1"),
    edit("warmup_steps_negative", "$.warmup_steps", -5, "must be >= 0"),
    edit("max_steps_string", "$.max_steps", "-1", "expected integer"),
    edit("logging_steps_zero", "$.logging_steps", 0, "must be >= 1"),
    edit("save_steps_string", "$.save_steps", "500", "expected integer"),
    edit("save_total_limit_zero", "$.save_total_limit", 0, "must be >= 1"),
    edit("dataloader_workers_negative", "$.dataloader_num_workers", -1, "must be >= 0"),
    edit("lr_scheduler_typo", "$.lr_scheduler_type", "cosin", "did you mean 'cosine'"),
    edit("lr_scheduler_number", "$.lr_scheduler_type", 5, "allowed"),
    edit("evaluation_strategy_typo", "$.evaluation_strategy", "step", "did you mean 'steps'"),
    edit("save_strategy_bool", "$.save_strategy", True, "allowed"),
    edit("fp16_opt_level_o3", "$.fp16_opt_level", "O3", "allowed"),
    edit("on_bad_sample_unknown", "$.on_bad_sample", "ignore", "allowed"),
    edit("report_to_unknown", "$.report_to", "wandbx", "expected one of"),
    edit("bf16_string", "$.bf16", "true", "expected boolean"),
    edit("bf16_int", "$.bf16", 1, "expected boolean"),
    edit("do_train_string_yaml", "$.do_train", "maybe", "expected boolean", suffix=".yaml"),
    edit("overwrite_output_dir_int", "$.overwrite_output_dir", 1, "expected boolean"),
    edit("mixtoken_string", "$.mixtoken", "yes", "expected boolean"),
    edit("benchmark_null", "$.benchmark", None, "expected boolean"),
    edit("output_dir_empty", "$.output_dir", "", "must not be empty"),
    edit("output_dir_number", "$.output_dir", 5, "expected string"),
    edit("output_dir_list", "$.output_dir", ["out"], "expected string"),
    edit("output_dir_null_yaml", "$.output_dir", None, "expected string", suffix=".yaml"),
    edit("resume_from_checkpoint_number", "$.resume_from_checkpoint", 5, "expected string or"),
    # -- LoRA -----------------------------------------------------------------------------------
    edit("lora_string", "$.lora", "true", "expected boolean"),
    edit("lora_rank_zero", "$.lora_rank", 0, "must be >= 1"),
    edit("lora_rank_float", "$.lora_rank", 1.5, "expected integer"),
    edit("lora_alpha_zero", "$.lora_alpha", 0, "must be > 0"),
    edit("lora_dropout_one", "$.lora_dropout", 1, "must be < 1"),
    edit("lora_dropout_negative", "$.lora_dropout", -0.1, "must be >= 0"),
    edit("lora_targets_string", "$.lora_target_modules", "q_proj", "expected array"),
    edit("lora_targets_number_item", "$.lora_target_modules[0]", 5, "expected string"),
    edit(
        "lora_target_unclosed_group",
        "$.lora_target_modules[0]",
        "((attn",
        "not a regular expression",
    ),
    edit("lora_target_bad_class", "$.lora_target_modules[0]", "[a-", "not a regular expression"),
    edit("lora_target_bad_repeat", "$.lora_target_modules[0]", "*attn", "not a regular expression"),
    # -- parallelism and cross-field checks -----------------------------------------------------
    edit("tensor_parallel_zero", "$.tensor_parallel_degree", 0, "0 is not a degree"),
    edit("tensor_parallel_minus_two", "$.tensor_parallel_degree", -2, "must be >= -1"),
    edit("tensor_parallel_string", "$.tensor_parallel_degree", "2", "expected integer"),
    edit("tensor_parallel_false", "$.tensor_parallel_degree", False, "expected integer"),
    edit("tensor_parallel_too_large", "$.tensor_parallel_degree", 5000, "must be <= 4096"),
    edit("pipeline_parallel_zero", "$.pipeline_parallel_degree", 0, "0 is not a degree"),
    edit("sharding_parallel_zero", "$.sharding_parallel_degree", 0, "0 is not a degree"),
    edit("sharding_stage4", "$.sharding", "stage4", "does not match"),
    edit("sharding_number", "$.sharding", 2, "expected string"),
    config("bf16_and_fp16", changed(("$.fp16", True)), "$.fp16", "choose one"),
    config(
        "evaluation_strategy_without_eval",
        changed(("$.evaluation_strategy", "steps"), ("$.dataset.eval", _DELETE)),
        "$.evaluation_strategy",
        "dataset.eval is empty",
    ),
    config(
        "do_eval_with_empty_eval",
        changed(("$.do_eval", True), ("$.dataset.eval", [])),
        "$.do_eval",
        "dataset.eval is empty",
    ),
    config(
        "degrees_exceed_world_size",
        changed(("$.sharding_parallel_degree", 4)),
        "$.tensor_parallel_degree",
        "do not divide the 2 process(es)",
        args=["--world-size", "2"],
    ),
    config(
        "degrees_do_not_divide_world_size",
        changed(("$.sharding_parallel_degree", 4)),
        "do not divide the 6 process(es)",
        args=["--world-size", "6"],
    ),
    # -- several mistakes at once ---------------------------------------------------------------
    config(
        "three_independent_mistakes",
        changed(
            ("$.learning_rat", 1e-5),
            ("$.dataset.train[1].data_files", 5),
            ("$.dataset.eval[0].name", "chatml"),
        ),
        "$.learning_rat",
        "$.dataset.train[1].data_files",
        "$.dataset.eval[0].name",
    ),
    config(
        "three_independent_mistakes_yaml",
        changed(
            ("$.max_lenght", 512),
            ("$.dataset.train[0].weight", "heavy"),
            ("$.dataset.train[1].name", "chatml_datset"),
        ),
        "$.max_lenght",
        "$.dataset.train[0].weight",
        "$.dataset.train[1].name",
        suffix=".yaml",
    ),
    raw(
        "utf8_bom_then_wrong_type",
        b"\xef\xbb\xbf" + dump(changed(("$.max_length", "long"))),
        "$.max_length",
        "expected integer",
    ),
    raw(
        "yaml_quoted_number_is_text",
        dump(changed(("$.learning_rate", _DELETE)), ".yaml") + b'learning_rate: "1e-5"\n',
        "$.learning_rate",
        'got string "1e-5"',
        suffix=".yaml",
    ),
]

CORPUS: list[Case] = FILE_LEVEL + SCHEMA_LEVEL
BY_ID = {case.id: case for case in CORPUS}


# -- running ---------------------------------------------------------------------------------------


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A config folder holding the files BASE refers to, and some checkpoint folders."""
    (tmp_path / "train.json").write_text("[]", encoding="utf-8")
    (tmp_path / "ckpt_empty").mkdir()
    (tmp_path / "ckpt_llama").mkdir()
    (tmp_path / "ckpt_llama" / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "ckpt_broken").mkdir()
    (tmp_path / "ckpt_broken" / "config.json").write_bytes(b"{not json")
    return tmp_path


def validate(path: Path, *extra: str) -> CliResult:
    return run_cli(["validate", "--config", str(path), *extra], entry_points=True)


def assert_clear_failure(result: CliResult, expect: tuple[str, ...] = ()) -> None:
    """Exit 2, no traceback, printable text, and every expected fragment in the output."""
    output = result.stdout + result.stderr
    assert result.exit_code == 2, output
    assert "Traceback" not in output
    output.encode("utf-8")  # no lone surrogates: a real terminal could print it
    assert "problem(s)" in result.stdout, output
    for fragment in expect:
        assert fragment in output, f"{fragment!r} not in:\n{output}"


def test_corpus_holds_at_least_120_distinct_hand_written_cases() -> None:
    assert len(CORPUS) >= 120
    assert len(BY_ID) == len(CORPUS), "case ids must be unique"
    assert len({(c.raw, c.suffix, c.kind, c.args) for c in CORPUS}) == len(CORPUS)


def test_valid_base_config_passes(workdir: Path) -> None:
    for suffix in (".json", ".yaml"):
        path = workdir / f"base{suffix}"
        path.write_bytes(dump(BASE, suffix))
        result = validate(path)
        assert result.exit_code == 0, result.stdout + result.stderr
        assert "valid" in result.stdout


@pytest.mark.parametrize("case", CORPUS, ids=[c.id for c in CORPUS])
def test_malformed_config_exits_2_naming_the_problem(case: Case, workdir: Path) -> None:
    path = case.write(workdir)
    result = validate(path, *case.args)
    assert_clear_failure(result, case.expect)
    assert result.stdout.startswith(f"{path}: ")


JSON_SAMPLE = CORPUS[::6]


@pytest.mark.parametrize("case", JSON_SAMPLE, ids=[c.id for c in JSON_SAMPLE])
def test_json_mode_reports_invalid_with_issues(case: Case, workdir: Path) -> None:
    path = case.write(workdir)
    result = validate(path, "--json", *case.args)
    assert result.exit_code == 2
    assert "Traceback" not in result.stdout + result.stderr
    report = result.json()
    assert report["config"] == str(path)
    assert report["valid"] is False
    assert report["issues"], report
    lines = [f"{i['path']}: {i['message']}" for i in report["issues"]]
    assert all(i["path"].startswith("$") and i["message"] for i in report["issues"])
    for fragment in case.expect:
        assert any(fragment in line for line in lines), (fragment, lines)


SUBPROCESS_IDS = [
    "garbage_high_bytes",
    "duplicate_key_yaml",
    "int_5000_digits_json",
    "lone_surrogate_escape_json",
    "three_independent_mistakes",
    "folder_as_config",
]


@pytest.mark.parametrize("case_id", SUBPROCESS_IDS)
def test_installed_command_exits_2_without_traceback(case_id: str, workdir: Path) -> None:
    case = BY_ID[case_id]
    path = case.write(workdir)
    env = {k: v for k, v in os.environ.items() if k != "MIXCORE_PLUGINS"}
    env["MIXCORE_CACHE_DIR"] = str(workdir / "cache")
    proc = subprocess.run(
        [sys.executable, "-m", "mixcore.cli", "validate", "--config", str(path)],
        capture_output=True,
        env=env,
        timeout=60,
    )
    stdout, stderr = proc.stdout.decode("utf-8"), proc.stderr.decode("utf-8")
    assert proc.returncode == 2, stdout + stderr
    assert "Traceback" not in stdout + stderr
    for fragment in case.expect:
        assert fragment in stdout + stderr


# -- generated cases -------------------------------------------------------------------------------

REQUIRED = ("model_name_or_path", "dataset", "output_dir", "dataset.train")
MUTABLE_FIELDS = sorted(k for k in CORE_PROPERTIES if k != "dataset")

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def _entry_schema(registry: Any) -> dict[str, Any]:
    return dataset_entry_schema(registry.datasets["chatml_dataset"].options_schema)


def _yaml_holds(data: bytes, config: dict[str, Any]) -> bool:
    """Whether YAML text reads back as exactly ``config`` (a key like "<<" might not)."""
    try:
        return yaml.safe_load(data) == config
    except yaml.YAMLError:
        return False


@st.composite
def wrong_core_field(draw: st.DrawFn) -> tuple[dict[str, Any], tuple[str, ...]]:
    """A core field (present in BASE or not) set to a value its own schema refuses."""
    field = draw(st.sampled_from(MUTABLE_FIELDS))
    value = draw(json_values)
    assume(not Draft202012Validator(CORE_PROPERTIES[field]).is_valid(value))
    return changed((f"$.{field}", value)), (f"$.{field}",)


@st.composite
def wrong_entry_field(
    draw: st.DrawFn, entry_schema: dict[str, Any], names: list[str]
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """A field deep inside dataset.train[i] / dataset.eval[0] set to a value it refuses."""
    where = draw(st.sampled_from(["$.dataset.train[0]", "$.dataset.train[1]", "$.dataset.eval[0]"]))
    field = draw(st.sampled_from(sorted(entry_schema["properties"])))
    value = draw(json_values)
    if field == "name":  # the composed schema allows only registered names
        assume(value not in names)
    else:
        assume(not Draft202012Validator(entry_schema["properties"][field]).is_valid(value))
    return changed((f"{where}.{field}", value)), (f"{where}.{field}",)


@st.composite
def unknown_keys(draw: st.DrawFn) -> tuple[dict[str, Any], tuple[str, ...]]:
    """BASE plus keys the schema does not know, each reported as unknown."""
    keys = draw(
        st.lists(
            st.text(min_size=1, max_size=8).filter(lambda k: k not in CORE_PROPERTIES),
            min_size=1,
            max_size=3,
            unique=True,
        )
    )
    config = copy.deepcopy(BASE)
    for key in keys:
        config[key] = draw(json_values)
    return config, tuple(f"unknown key {json.dumps(k, ensure_ascii=False)}" for k in keys)


@st.composite
def missing_required(draw: st.DrawFn) -> tuple[dict[str, Any], tuple[str, ...]]:
    gone = draw(st.sets(st.sampled_from(REQUIRED), min_size=1))
    config = copy.deepcopy(BASE)
    for key in sorted(gone, reverse=True):  # "dataset.train" before "dataset"
        if key == "dataset.train":
            if "dataset" not in gone:
                del config["dataset"]["train"]
        else:
            del config[key]
    expect = tuple(f'missing required key "{k.split(".")[-1]}"' for k in gone)
    if "dataset" in gone:
        expect = tuple(e for e in expect if '"train"' not in e)
    return config, expect


def _run_generated(folder: Path, raw_bytes: bytes, suffix: str, expect: tuple[str, ...]) -> None:
    path = folder / f"generated{suffix}"
    path.write_bytes(raw_bytes)
    assert_clear_failure(validate(path), expect)


def test_random_mutations_of_a_valid_config_exit_2(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    folder = tmp_path_factory.mktemp("mutations")
    (folder / "train.json").write_text("[]", encoding="utf-8")
    registry = make_registry(entry_points=True)
    entry_schema = _entry_schema(registry)
    names = sorted(registry.datasets)
    seen: set[bytes] = set()

    @settings(
        max_examples=170,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
    )
    @given(
        mutation=st.one_of(
            wrong_core_field(),
            wrong_entry_field(entry_schema, names),
            unknown_keys(),
            missing_required(),
        ),
        suffix=st.sampled_from([".json", ".yaml"]),
    )
    def check(mutation: tuple[dict[str, Any], tuple[str, ...]], suffix: str) -> None:
        config, expect = mutation
        data = dump(config, suffix)
        if suffix == ".yaml":
            assume(_yaml_holds(data, config))  # the YAML text holds exactly the mutation
        seen.add(suffix.encode() + data)
        _run_generated(folder, data, suffix, expect)

    check()
    assert len(seen) >= 100, f"only {len(seen)} distinct mutated configs were checked"


def test_random_bytes_and_text_exit_2(tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("noise")
    seen: set[bytes] = set()

    @settings(max_examples=60, deadline=None, database=None)
    @given(
        data=st.binary(max_size=200) | st.text(max_size=200).map(str.encode),
        suffix=st.sampled_from([".json", ".yaml", ".yml"]),
    )
    def check(data: bytes, suffix: str) -> None:
        assume(b"model_name_or_path" not in data)  # so it cannot be a valid config
        seen.add(suffix.encode() + data)
        _run_generated(folder, data, suffix, ())

    check()
    assert len(seen) >= 40


def test_at_least_200_malformed_configs_are_covered() -> None:
    generated = 100 + 40  # the minimums the two hypothesis tests assert they checked
    assert len(CORPUS) + generated >= 200
