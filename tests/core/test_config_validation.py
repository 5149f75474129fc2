"""validate_config: every problem at once, each with its JSON path, against the composed schema."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from mixcore import hookimpl
from mixcore.api.errors import ConfigError
from mixcore.config import check_config, compose_schema, core_schema, validate_config
from mixcore.issues import Issue
from mixcore.registry import Registry
from mixcore.testing import make_plugin, make_registry, run_cli


@pytest.fixture(scope="module")
def registry() -> Registry:
    """The installed built-in plugins (qwen_vl, chatml_dataset, ...)."""
    return make_registry(entry_points=True)


def valid_config() -> dict[str, Any]:
    return {
        "model_name_or_path": "qwen_vl/tiny",
        "model_options": {"random_init": True},
        "dataset": {
            "train": [
                {"name": "chatml_dataset", "data_files": "train.json"},
                {"name": "chatml_dataset", "data_files": ["train.json"], "weight": 2},
            ],
            "eval": [{"name": "chatml_dataset", "data_files": "train.json"}],
        },
        "output_dir": "out",
        "do_train": False,  # independent of which capabilities the qwen_vl plugin claims today
    }


def paths(issues: list[Issue]) -> list[str]:
    return [issue.path for issue in issues]


def messages(issues: list[Issue], path: str) -> list[str]:
    return [issue.message for issue in issues if issue.path == path]


def test_valid_config_has_no_issues(registry: Registry, tmp_path: Path) -> None:
    (tmp_path / "train.json").write_text("[]")
    assert validate_config(valid_config(), registry, base_dir=tmp_path, world_size=1) == []


# -- every problem at once -------------------------------------------------------------------------


def three_mistakes() -> dict[str, Any]:
    config = valid_config()
    config["learning_rat"] = 1e-5  # unknown top-level key
    config["dataset"]["train"][1]["data_files"] = 5  # wrong type deep inside train[1]
    config["dataset"]["eval"][0]["name"] = "chatml"  # unknown dataset name
    return config


def test_three_independent_mistakes_are_reported_together(registry: Registry) -> None:
    issues = validate_config(three_mistakes(), registry)
    assert paths(issues) == [
        "$.dataset.eval[0].name",
        "$.dataset.train[1].data_files",
        "$.learning_rat",
    ]
    assert "did you mean 'chatml_dataset'?" in messages(issues, "$.dataset.eval[0].name")[0]
    assert messages(issues, "$.dataset.train[1].data_files") == [
        "expected string or array of string, got 5"
    ]
    assert messages(issues, "$.learning_rat") == [
        "unknown key \"learning_rat\" (did you mean 'learning_rate'?)"
    ]


def test_three_mistakes_in_one_cli_run_exit_2_listing_each(tmp_path: Path) -> None:
    (tmp_path / "train.json").write_text("[]")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(three_mistakes()))
    result = run_cli(["validate", "--config", str(path)], entry_points=True)
    assert result.exit_code == 2
    lines = result.stdout.splitlines()
    assert lines[0] == f"{path}: 3 problem(s)"
    assert [line.split(":")[0].strip() for line in lines[1:]] == [
        "$.dataset.eval[0].name",
        "$.dataset.train[1].data_files",
        "$.learning_rat",
    ]


def test_check_config_raises_one_error_listing_every_issue(registry: Registry) -> None:
    with pytest.raises(ConfigError) as info:
        check_config(three_mistakes(), registry, source="mine.json")
    assert info.value.source == "mine.json"
    assert len(info.value.issues) == 3
    assert str(info.value).splitlines()[0] == "mine.json: 3 problem(s)"


def test_issues_are_sorted_and_never_repeated(registry: Registry) -> None:
    config = valid_config()
    config["dataset"]["train"] = ["a", "a", None]
    config["zzz"] = config["aaa"] = 1
    issues = validate_config(config, registry)
    assert issues == sorted(set(issues))
    assert paths(issues) == [
        "$.aaa",
        "$.dataset.train[0]",
        "$.dataset.train[1]",
        "$.dataset.train[2]",
        "$.zzz",
    ]


def test_missing_required_fields_are_each_named(registry: Registry) -> None:
    issues = validate_config({"dataset": {}}, registry)
    assert [str(i) for i in issues] == [
        '$: missing required key "model_name_or_path"',
        '$: missing required key "output_dir"',
        '$.dataset: missing required key "train"',
    ]


# -- did you mean ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [
        ("max_lenght", "max_length"),
        ("output_dri", "output_dir"),
        ("lora_rnak", "lora_rank"),
        ("per_device_train_batchsize", "per_device_train_batch_size"),
    ],
)
def test_unknown_top_level_keys_suggest_the_nearest_field(
    registry: Registry, key: str, suggestion: str
) -> None:
    config = valid_config() | {key: 1}
    assert messages(validate_config(config, registry), f"$.{key}") == [
        f"unknown key {json.dumps(key)} (did you mean {suggestion!r}?)"
    ]


def test_unknown_key_without_a_near_match_lists_the_allowed_keys(registry: Registry) -> None:
    config = valid_config()
    config["dataset"]["train"][0]["xyz"] = 1
    (message,) = messages(validate_config(config, registry), "$.dataset.train[0].xyz")
    assert message.startswith('unknown key "xyz"; allowed: ')
    assert "data_files" in message
    assert "weight" in message


def test_unknown_top_level_key_without_a_near_match_points_to_the_list(
    registry: Registry,
) -> None:
    # The top level has over a hundred keys: listing them all would bury the message.
    (message,) = messages(validate_config(valid_config() | {"xyzzy": 1}, registry), "$.xyzzy")
    assert message.startswith('unknown key "xyzzy"; none of the ')
    assert "`mixcore schema`" in message and "docs/config-reference.md" in message
    assert "allowed:" not in message and "output_dir" not in message


def test_validate_help_says_where_the_keys_are_listed() -> None:
    result = run_cli(["validate", "--help"])
    assert "docs/config-reference.md" in result.stdout and "mixcore schema" in result.stdout


def test_typo_in_a_dataset_option_suggests_the_option(registry: Registry) -> None:
    config = valid_config()
    config["dataset"]["train"][0]["chat_templte"] = "t.json"
    assert messages(validate_config(config, registry), "$.dataset.train[0].chat_templte") == [
        "unknown key \"chat_templte\" (did you mean 'chat_template'?)"
    ]


def test_unknown_model_alias_suggests_the_nearest_alias(registry: Registry) -> None:
    config = valid_config() | {"model_name_or_path": "qwen-vl/qwen-vl-chat-8b"}
    (message,) = messages(validate_config(config, registry), "$.model_name_or_path")
    assert message.startswith("unknown model or local checkpoint folder 'qwen-vl/qwen-vl-chat-8b'")
    assert "(did you mean 'qwen-vl/qwen-vl-chat-7b'?)" in message


def test_unknown_explicit_model_is_reported_once_on_the_model_field(registry: Registry) -> None:
    config = valid_config() | {"model": "qwen"}
    issues = validate_config(config, registry)
    assert paths(issues) == ["$.model"]
    assert "(did you mean 'qwen_vl'?)" in issues[0].message


def test_enum_typo_suggests_the_allowed_value(registry: Registry) -> None:
    config = valid_config() | {"lr_scheduler_type": "cosin"}
    (message,) = messages(validate_config(config, registry), "$.lr_scheduler_type")
    assert message.endswith("(did you mean 'cosine'?)")


# -- model_options against the resolved model ------------------------------------------------------


def test_model_options_use_the_schema_of_the_model_an_alias_resolves_to(registry: Registry) -> None:
    config = valid_config() | {"model_options": {"random_init": "yes", "random_int": True}}
    issues = validate_config(config, registry)
    assert [str(i) for i in issues] == [
        '$.model_options.random_init: expected boolean, got string "yes"',
        "$.model_options.random_int: unknown key \"random_int\" (did you mean 'random_init'?)",
    ]


def test_model_options_use_the_explicit_models_schema(registry: Registry) -> None:
    config = valid_config() | {"model": "qwen_vl", "model_options": {"random_init": 1}}
    assert paths(validate_config(config, registry)) == ["$.model_options.random_init"]


def test_model_options_of_a_checkpoint_folder_follow_its_model_type(
    registry: Registry, tmp_path: Path
) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "qwen_vl"}')
    config = valid_config() | {"model_name_or_path": str(tmp_path), "model_options": {"x": 1}}
    assert paths(validate_config(config, registry)) == ["$.model_options.x"]


def test_each_model_brings_its_own_options_schema() -> None:
    @hookimpl
    def register_models(register: Any) -> None:
        register(
            name="toy",
            description="a toy model",
            aliases=["toy/tiny"],
            options_schema={
                "type": "object",
                "additionalProperties": False,
                "properties": {"width": {"type": "integer", "minimum": 1}},
            },
        )

    registry = make_registry(make_plugin("toy", register_models), entry_points=True)
    config = valid_config() | {"model_name_or_path": "toy/tiny"}
    assert validate_config(config | {"model_options": {"width": 4}}, registry) == []
    issues = validate_config(
        config | {"model_options": {"width": 0, "random_init": True}}, registry
    )
    assert [str(i) for i in issues] == [
        '$.model_options.random_init: unknown key "random_init"; allowed: width',
        "$.model_options.width: must be >= 1, got 0",
    ]


def test_checkpoint_folder_without_config_json_is_named(registry: Registry, tmp_path: Path) -> None:
    config = valid_config() | {"model_name_or_path": str(tmp_path)}
    assert messages(validate_config(config, registry), "$.model_name_or_path") == [
        f"checkpoint folder {str(tmp_path)!r} has no config.json"
    ]


def test_a_model_that_cannot_train_is_reported_only_when_training() -> None:
    @hookimpl
    def register_models(register: Any) -> None:
        register(name="frozen", description="no capabilities", capabilities={})

    registry = make_registry(make_plugin("frozen", register_models), entry_points=True)
    config = valid_config() | {"model_name_or_path": "frozen"}
    assert validate_config(config, registry) == []
    del config["do_train"]
    (message,) = messages(validate_config(config, registry), "$.model_name_or_path")
    assert message.startswith("model 'frozen' cannot be trained yet")


def claiming_plugin(name: str, capabilities: dict[str, bool]) -> Any:
    """An in-memory plugin with one model named ``name`` claiming ``capabilities``, and the
    load and preprocess hooks that back an ``sft`` claim (they are never called here)."""

    @hookimpl
    def register_models(register: Any) -> None:
        register(name=name, description="in-memory model", capabilities=capabilities)

    @hookimpl
    def load_model(model_name: str, source: str, options: dict[str, Any]) -> None:
        return None

    @hookimpl
    def preprocess_sample(model_name: str, sample: Any, bundle: Any, max_length: int) -> None:
        return None

    return make_plugin(name, register_models, load_model, preprocess_sample)


def test_a_trainable_in_memory_model_validates_a_training_config() -> None:
    registry = make_registry(claiming_plugin("trainable", {"sft": True}), entry_points=True)
    config = valid_config() | {"model_name_or_path": "trainable", "do_train": True}
    assert validate_config(config, registry) == []


# -- cross-field checks ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("degrees", "world_size", "ok"),
    [
        ({"tensor_parallel_degree": 1, "sharding_parallel_degree": 4}, 8, True),
        ({"sharding_parallel_degree": 4, "pipeline_parallel_degree": -1}, 4, True),
        ({"sharding_parallel_degree": 4}, 2, False),
        ({"sharding_parallel_degree": 4}, 6, False),
        ({"sharding_parallel_degree": 2, "pipeline_parallel_degree": 1}, 1, False),
    ],
)
def test_parallel_degrees_must_divide_the_world_size(
    registry: Registry, degrees: dict[str, int], world_size: int, ok: bool
) -> None:
    issues = validate_config(valid_config() | degrees, registry, world_size=world_size)
    if ok:
        assert issues == []
    else:
        (message,) = messages(issues, "$.tensor_parallel_degree")
        assert f"do not divide the {world_size} process(es)" in message


def test_degrees_are_not_checked_against_an_unknown_world_size(registry: Registry) -> None:
    assert validate_config(valid_config() | {"sharding_parallel_degree": 3}, registry) == []


@pytest.mark.parametrize(
    "key", ["tensor_parallel_degree", "pipeline_parallel_degree", "sharding_parallel_degree"]
)
def test_a_degree_of_zero_is_refused(registry: Registry, key: str) -> None:
    assert messages(validate_config(valid_config() | {key: 0}, registry), f"$.{key}") == [
        "0 is not a degree; use 1 for no splitting or -1 to derive"
    ]


def test_a_false_degree_is_a_type_error_not_a_zero_degree(registry: Registry) -> None:
    issues = validate_config(valid_config() | {"tensor_parallel_degree": False}, registry)
    assert [str(i) for i in issues] == [
        "$.tensor_parallel_degree: expected integer, got boolean false"
    ]


def test_sharding_without_a_degree_shards_over_every_data_parallel_card(
    registry: Registry,
) -> None:
    # PaddleNLP's sharding_parallel_degree default, -1, is every data-parallel card. (Stage 1:
    # stage 2 and 3 over several ranks need GPUs, which tests/train/test_parallel_config.py
    # checks.)
    config = valid_config() | {"sharding": "stage1"}
    assert validate_config(config, registry, world_size=8) == []
    config["sharding_parallel_degree"] = -1
    assert validate_config(config, registry, world_size=8) == []


def test_bf16_and_fp16_together_are_refused(registry: Registry) -> None:
    config = valid_config() | {"bf16": True, "fp16": True}
    assert messages(validate_config(config, registry), "$.fp16") == [
        "bf16 and fp16 are both true; choose one"
    ]


@pytest.mark.parametrize("request_eval", [{"evaluation_strategy": "steps"}, {"do_eval": True}])
def test_evaluation_needs_eval_data(registry: Registry, request_eval: dict[str, Any]) -> None:
    config = valid_config() | request_eval
    assert validate_config(config, registry) == []
    del config["dataset"]["eval"]
    (key,) = request_eval
    assert messages(validate_config(config, registry), f"$.{key}") == [
        "evaluation is requested but dataset.eval is empty"
    ]


def test_lora_targets_must_be_regular_expressions(registry: Registry) -> None:
    config = valid_config() | {"lora_target_modules": [".*attn.*", "((c_attn", "[a-"]}
    issues = validate_config(config, registry)
    assert paths(issues) == ["$.lora_target_modules[1]", "$.lora_target_modules[2]"]
    assert all(i.message.startswith("not a regular expression: ") for i in issues)


def test_a_missing_relative_data_file_says_whether_the_working_folder_has_it(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PaddleMIX resolves data paths against the working folder, mixcore against the config's.
    config_dir, work = tmp_path / "configs", tmp_path / "work"
    config_dir.mkdir()
    work.mkdir()
    (work / "train.json").write_text("[]")
    monkeypatch.chdir(work)
    config = valid_config()
    config["dataset"]["train"] = [{"name": "chatml_dataset", "data_files": "train.json"}]
    config["dataset"]["eval"] = [{"name": "chatml_dataset", "data_files": "val.json"}]
    issues = validate_config(config, registry, base_dir=config_dir)
    assert [str(i) for i in issues] == [
        f"$.dataset.eval[0].data_files: file not found: {config_dir / 'val.json'} (paths are "
        f"relative to the config file's folder; it is not in the working folder {work}, where "
        "PaddleMIX looks, either)",
        f"$.dataset.train[0].data_files: file not found: {config_dir / 'train.json'} (paths are "
        "relative to the config file's folder; it is in the working folder, where PaddleMIX "
        f"looks: give {work / 'train.json'} or a path relative to {config_dir})",
    ]


def test_weight_and_num_samples_are_exclusive(registry: Registry) -> None:
    config = valid_config()
    config["dataset"]["train"][1]["num_samples"] = 10
    assert [str(i) for i in validate_config(config, registry)] == [
        "$.dataset.train[1]: give weight or num_samples, not both"
    ]


# -- data files ------------------------------------------------------------------------------------


def test_data_files_must_exist_relative_to_the_config_folder(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the working folder is the config's: nothing more to say
    (tmp_path / "train.json").write_text("[]")
    config = valid_config()
    config["dataset"]["train"][1]["data_files"] = ["train.json", "missing.json"]
    config["dataset"]["eval"][0]["chat_template"] = "no_template.json"
    issues = validate_config(config, registry, base_dir=tmp_path)
    assert [str(i) for i in issues] == [
        f"$.dataset.eval[0].chat_template: file not found: {tmp_path / 'no_template.json'}",
        f"$.dataset.train[1].data_files[1]: file not found: {tmp_path / 'missing.json'}",
    ]
    assert validate_config(config, registry) == []  # no base_dir: files are not looked up


def test_data_files_are_found_from_another_working_directory(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.json").write_text("[]")
    config = valid_config()
    for split in ("train", "eval"):
        for entry in config["dataset"][split]:
            entry["data_files"] = "data/train.json"
    monkeypatch.chdir(tmp_path / "data")
    assert validate_config(config, registry, base_dir=tmp_path) == []


def test_unusable_file_names_are_issues_not_crashes(registry: Registry, tmp_path: Path) -> None:
    (tmp_path / "train.json").write_text("[]")
    config = valid_config() | {"model_name_or_path": "m" * 5000}
    config["dataset"]["train"][0]["data_files"] = "d" * 5000
    config["dataset"]["train"][1]["name"] = ["chatml_dataset"]
    issues = validate_config(config, registry, base_dir=tmp_path)
    assert paths(issues) == [
        "$.dataset.train[0].data_files",
        "$.dataset.train[1].name",
        "$.model_name_or_path",
    ]
    assert issues[0].message.startswith('cannot check "ddd')
    assert issues[2].message.startswith("unknown model or local checkpoint folder 'mmm")
    assert len(issues[2].message) < 1000


# -- the composed schema ---------------------------------------------------------------------------


def test_composed_and_core_schemas_are_valid_draft_2020_12(registry: Registry) -> None:
    Draft202012Validator.check_schema(compose_schema(registry))
    Draft202012Validator.check_schema(core_schema())


def test_composed_schema_includes_each_plugins_options(registry: Registry) -> None:
    schema = compose_schema(registry)
    assert "chatml_dataset" in schema["$defs"]["datasets"]
    assert "data_files" in schema["$defs"]["datasets"]["chatml_dataset"]["properties"]
    assert "qwen_vl" in schema["properties"]["model"]["enum"]
    assert "random_init" in schema["$defs"]["models"]["qwen_vl"]["properties"]


PADDLEMIX_QWEN_VL_SFT: dict[str, Any] = {
    "model_name_or_path": "qwen-vl/qwen-vl-chat-7b",
    "dataset": {
        "train": [
            {
                "name": "chatml_dataset",
                "data_files": "train.json",
                "chat_template": "chat_template.json",
            }
        ],
        "eval": [
            {
                "name": "chatml_dataset",
                "data_files": "val.json",
                "chat_template": "chat_template.json",
            }
        ],
    },
    "mixtoken": False,
    "output_dir": "./checkpoints/qwen_vl_sft_ckpts",
    "overwrite_output_dir": True,
    "per_device_train_batch_size": 1,
    "gradient_accumulation_steps": 8,
    "per_device_eval_batch_size": 1,
    "eval_accumulation_steps": 16,
    "num_train_epochs": 1,
    "learning_rate": 1e-05,
    "weight_decay": 0.1,
    "adam_beta2": 0.95,
    "warmup_ratio": 0.01,
    "lr_scheduler_type": "cosine",
    "logging_steps": 1,
    "save_steps": 1000,
    "evaluation_strategy": "no",
    "save_strategy": "steps",
    "max_length": 2048,
    "bf16": True,
    "fp16_opt_level": "O2",
    "do_train": True,
    "skip_memory_metrics": False,
    "benchmark": False,
    "save_total_limit": 1,
    "tensor_parallel_degree": 1,
    "sharding_parallel_degree": 1,
    "sharding": "stage2",
    "pipeline_parallel_degree": 1,
    "freeze_include": ["*visual*"],
    "freeze_exclude": ["*visual.attn_pool*"],
}

PADDLEMIX_QWEN_VL_LORA: dict[str, Any] = {
    **copy.deepcopy(PADDLEMIX_QWEN_VL_SFT),
    "output_dir": "./checkpoints/qwen_vl_lora_ckpts",
    "learning_rate": 1e-04,
    "lora": True,
    "lora_rank": 8,
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    "lora_target_modules": [
        ".*attn.c_attn.*",
        ".*attn.c_proj.*",
        ".*mlp.w1.*",
        ".*mlp.w2.*",
    ],
}


@pytest.mark.parametrize(
    "config", [PADDLEMIX_QWEN_VL_SFT, PADDLEMIX_QWEN_VL_LORA], ids=["sft", "lora"]
)
def test_paddlemix_qwen_vl_configs_fit_the_composed_schema(
    registry: Registry, tmp_path: Path, config: dict[str, Any]
) -> None:
    for name in ("train.json", "val.json", "chat_template.json"):
        (tmp_path / name).write_text("[]")
    issues = validate_config(config, registry, base_dir=tmp_path, world_size=1)
    # The only complaint: the published model's files are not on this machine.
    assert [i.path for i in issues] == ["$.model_options"], issues
    assert "mixcore never downloads" in issues[0].message
    assert Draft202012Validator(compose_schema(registry)).is_valid(config)


# -- mixtures and packing --------------------------------------------------------------------------


def test_mixtoken_on_a_model_that_cannot_pack_is_a_clear_error() -> None:
    registry = make_registry(claiming_plugin("unpacked", {"sft": True}), entry_points=True)
    config = valid_config() | {"model_name_or_path": "unpacked", "do_train": True}
    assert validate_config(config, registry) == []
    (message,) = messages(validate_config(config | {"mixtoken": True}, registry), "$.mixtoken")
    assert message.startswith("model 'unpacked' cannot pack samples")


def test_a_packing_claim_needs_its_own_length_and_collate_hooks() -> None:
    registry = make_registry(claiming_plugin("packer", {"packing": True}))
    record = registry.plugin("packer")
    assert not record.ok
    assert "claims 'packing'" in record.reason and "sample_length, collate_batch" in record.reason


def test_qwen_vl_can_pack(registry: Registry) -> None:
    config = valid_config() | {"mixtoken": True, "overlong_policy": "drop"}
    assert validate_config(config, registry) == []


def test_mixture_fields_are_checked(registry: Registry) -> None:
    config = valid_config()
    entry = config["dataset"]["train"][0]
    config["dataset"]["train"] = [
        entry | {"label": "a", "weight": 2},
        entry | {"label": "a", "num_samples": 0},
    ]
    config["dataset"]["eval_samples"] = 10
    config["dataset"]["eval"] = [entry]
    issues = validate_config(config, registry)
    assert messages(issues, "$.dataset.train[1].label") == [
        "label 'a' is already used by dataset.train[0]"
    ]
    assert messages(issues, "$.dataset.train[1].num_samples")
    (budget,) = messages(issues, "$.dataset.eval_samples")
    assert "no dataset.eval entry has a weight" in budget
    overlong = messages(
        validate_config(valid_config() | {"overlong_policy": "cut"}, registry), "$.overlong_policy"
    )
    assert overlong and "truncate" in overlong[0]
