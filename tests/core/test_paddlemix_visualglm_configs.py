"""PaddleMIX's published VisualGLM configs validate once their data files are on disk: their
dataset kind ``coco_vqa`` reads VQA records in the layout PaddleMIX's reader takes, and
``src_length``, their one key mixcore had no field for, is accepted with its meaning.

The two configs below are PaddleMIX's ``paddlemix/config/visualglm/sft_argument.json`` and
``paddlemix/config/visualglm/lora_sft_argument.json`` at commit
6afaf05de0485715b2c8b2587e17bb2dfe4f4cda (both last changed in 4d8458fb3b94; release/2.0 and
release/2.1 hold the same files), key for key and value for value. How PaddleMIX reads them:
``paddlemix/tools/supervised_finetune.py``, ``paddlemix/trainer/argument.py`` and
``paddlemix/datasets/coco_vqa.py`` (``VQADataset``; with ``data_files`` every file is read as
training records ``{image, question, answer}``, image paths taken as written).

The model here is an in-memory stand-in under PaddleMIX's model name, so these tests hold the
schema and dataset side whatever the visualglm plugin claims.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from mixcore import hookimpl
from mixcore.api.records import IMAGE_PLACEHOLDER, Message
from mixcore.config import compose_schema, prepare_config, validate_config
from mixcore.config.schema import CORE_PROPERTIES, PADDLEMIX, REFUSED_ENTRY_KEYS
from mixcore.issues import Issue
from mixcore.registry import Registry
from mixcore.testing import make_plugin, make_registry, run_cli, write_config

VISUALGLM_SFT: dict[str, Any] = {
    "model_name_or_path": "THUDM/visualglm-6b",
    "dataset": {
        "train": [{"name": "coco_vqa", "data_files": "train.json"}],
        "eval": [{"name": "coco_vqa", "data_files": "val.json"}],
    },
    "freeze_include": ["*vision_model*"],
    "mixtoken": True,
    "output_dir": "./checkpoints/visualglm-6b_sft_ckpts",
    "overwrite_output_dir": True,
    "per_device_train_batch_size": 1,
    "gradient_accumulation_steps": 4,
    "per_device_eval_batch_size": 1,
    "eval_accumulation_steps": 16,
    "num_train_epochs": 2,
    "learning_rate": 3e-04,
    "warmup_steps": 30,
    "logging_steps": 1,
    "save_steps": 10,
    "evaluation_strategy": "steps",
    "save_strategy": "steps",
    "src_length": 1024,
    "max_length": 2048,
    "fp16": True,
    "fp16_opt_level": "O2",
    "do_train": True,
    "do_eval": False,
    "disable_tqdm": True,
    "load_best_model_at_end": True,
    "eval_with_do_generation": False,
    "save_total_limit": 1,
}

VISUALGLM_LORA: dict[str, Any] = {
    "model_name_or_path": "THUDM/visualglm-6b",
    "dataset": {
        "train": [{"name": "coco_vqa", "data_files": "train.json"}],
        "eval": [{"name": "coco_vqa", "data_files": "val.json"}],
    },
    "mixtoken": True,
    "output_dir": "./checkpoints/visualglm-6b_sft_ckpts",
    "overwrite_output_dir": True,
    "per_device_train_batch_size": 1,
    "gradient_accumulation_steps": 4,
    "per_device_eval_batch_size": 1,
    "eval_accumulation_steps": 16,
    "num_train_epochs": 30,
    "learning_rate": 3e-04,
    "warmup_ratio": 0.02,
    "lr_scheduler_type": "cosine",
    "logging_steps": 1,
    "save_steps": 5,
    "evaluation_strategy": "steps",
    "save_strategy": "steps",
    "src_length": 1024,
    "max_length": 2048,
    "fp16": True,
    "fp16_opt_level": "O2",
    "do_train": True,
    "do_eval": False,
    "disable_tqdm": True,
    "load_best_model_at_end": True,
    "eval_with_do_generation": False,
    "save_total_limit": 1,
    "lora": True,
    "lora_target_modules": [
        ".*query_key_value.*",
        ".*dense.*",
        ".*dense_h_to_4h",
        ".*dense_4h_to_h",
    ],
}

PUBLISHED = pytest.mark.parametrize(
    "published", [VISUALGLM_SFT, VISUALGLM_LORA], ids=["sft", "lora"]
)

#: The name PaddleMIX's files give the model; the visualglm plugin registers it as an alias,
#: the in-memory stand-in does here.
ALIAS = "THUDM/visualglm-6b"
PLUGINS = {"MIXCORE_PLUGINS": "datasets,fake_visualglm"}


@hookimpl
def register_models(register: Any) -> None:
    register(
        name="fake_visualglm",
        description="in-memory VisualGLM stand-in",
        capabilities={"sft": True, "lora": True, "packing": True},
        aliases=[ALIAS],
        model_types=["visualglm"],
    )


@hookimpl
def load_model(model_name: str, source: str, options: dict[str, Any]) -> None:
    return None


@hookimpl
def preprocess_sample(model_name: str, sample: Any, bundle: Any, max_length: int) -> None:
    return None


@hookimpl
def lora_target_modules(model_name: str, bundle: Any) -> None:
    return None


@hookimpl
def sample_length(model_name: str, sample: Any, bundle: Any) -> None:
    return None


@hookimpl
def collate_batch(model_name: str, features: Any, bundle: Any) -> None:
    return None


FAKE_VISUALGLM = make_plugin(
    "fake_visualglm",
    register_models,
    load_model,
    preprocess_sample,
    lora_target_modules,
    sample_length,
    collate_batch,
)


@pytest.fixture(scope="module")
def registry() -> Registry:
    """The in-memory VisualGLM and the installed datasets plugin (vqa, coco_vqa)."""
    return make_registry(FAKE_VISUALGLM, entry_points=True, environ=PLUGINS)


#: Records as PaddleMIX's coco_vqa reads them (the layout of its COCO copy's vqa_train.json):
#: the image path, the question, the annotators' answers as a list, and keys it ignores.
TRAIN_RECORDS = [
    {
        "question_id": 262148000,
        "question": "Where is he looking?",
        "answer": ["down", "down", "at table", "skateboard", "down", "table", "down"],
        "image": "train2014/COCO_train2014_000000262148.jpg",
        "dataset": "vqa",
    },
    {
        "question_id": 262148001,
        "question": "What is he on top of?",
        "answer": ["picnic table", "table", "picnic table", "skateboard"],
        "image": "train2014/COCO_train2014_000000262148.jpg",
        "dataset": "vqa",
    },
    {
        "question_id": 393225000,
        "question": "Is the bowl full?",
        "answer": "yes",  # a single answer, as hand-made files give it
        "image": "train2014/COCO_train2014_000000393225.jpg",
        "dataset": "vqa",
    },
]
VAL_RECORDS = [
    {
        "question_id": 42000,
        "question": "What colour is the cat?",
        "answer": ["black", "black", "grey"],
        "image": "val2014/COCO_val2014_000000000042.jpg",
        "dataset": "vqa",
    }
]


def write_vqa_data(folder: Path) -> None:
    """``train.json`` and ``val.json`` in PaddleMIX's coco_vqa layout, with their images, in
    ``folder`` (the folder a PaddleMIX run's image paths are relative to: its working one)."""
    for name, records in (("train.json", TRAIN_RECORDS), ("val.json", VAL_RECORDS)):
        (folder / name).write_text(json.dumps(records), encoding="utf-8")
        for n, record in enumerate(records):
            image = folder / record["image"]
            image.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (40 * n, 90, 160)).save(image, format="JPEG")


def local(published: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``published`` with its data written beside the config in ``folder``: its data_files
    (``train.json``, ``val.json``) are already local names, so the config stays as published."""
    write_vqa_data(folder)
    return copy.deepcopy(published)


def messages(issues: list[Issue], path: str) -> list[str]:
    return [issue.message for issue in issues if issue.path == path]


# -- the published files ---------------------------------------------------------------------------


def test_the_published_key_sets_are_the_ones_mapped_here() -> None:
    """Every key of the two files is a field of the config schema; src_length is PaddleMIX's."""
    assert len(VISUALGLM_SFT) == 27 and len(VISUALGLM_LORA) == 29
    assert set(VISUALGLM_SFT) | set(VISUALGLM_LORA) <= set(CORE_PROPERTIES)
    for published in (VISUALGLM_SFT, VISUALGLM_LORA):
        entries = [e for split in ("train", "eval") for e in published["dataset"][split]]
        assert {k for e in entries for k in e} == {"name", "data_files"}
        assert {e["name"] for e in entries} == {"coco_vqa"}
    assert PADDLEMIX in CORE_PROPERTIES["src_length"]
    assert "coco_vqa" in REFUSED_ENTRY_KEYS["splits"][PADDLEMIX]


@PUBLISHED
def test_published_visualglm_config_validates_with_local_data(
    registry: Registry, tmp_path: Path, published: dict[str, Any]
) -> None:
    config = local(published, tmp_path)
    assert config == published
    assert validate_config(config, registry, base_dir=tmp_path, world_size=1) == []


@PUBLISHED
def test_mixcore_validate_accepts_the_published_file(
    tmp_path: Path, published: dict[str, Any]
) -> None:
    path = write_config(tmp_path, local(published, tmp_path))
    result = run_cli(
        ["validate", "--config", str(path)],
        plugins=[FAKE_VISUALGLM],
        entry_points=True,
        environ=PLUGINS,
    )
    assert result.exit_code == 0, result.stdout + result.stderr


@PUBLISHED
def test_with_the_installed_plugins_only_the_model_may_object(
    tmp_path: Path, published: dict[str, Any]
) -> None:
    """Against the installed plugins (the visualglm plugin however far it has come), the data,
    the schema and every cross-field check are satisfied: what is left is the model's to say."""
    config = local(published, tmp_path)
    issues = validate_config(config, make_registry(entry_points=True), base_dir=tmp_path)
    assert {i.path for i in issues} <= {"$.model_name_or_path", "$.model_options", "$.mixtoken"}


@PUBLISHED
def test_missing_data_files_are_named_with_their_path(
    registry: Registry, tmp_path: Path, published: dict[str, Any]
) -> None:
    issues = validate_config(published, registry, base_dir=tmp_path)
    assert {i.path for i in issues} == {
        "$.dataset.train[0].data_files",
        "$.dataset.eval[0].data_files",
    }
    assert all("train.json" in m for m in messages(issues, "$.dataset.train[0].data_files"))


# -- coco_vqa --------------------------------------------------------------------------------------


def test_coco_vqa_reads_paddlemix_records_as_the_vqa_reader_does(
    registry: Registry, tmp_path: Path
) -> None:
    write_vqa_data(tmp_path)
    built = {
        name: registry.hook.build_dataset(
            dataset_name=name, options={"data_files": "train.json"}, base_dir=str(tmp_path)
        )
        for name in ("coco_vqa", "vqa")
    }
    samples = list(built["coco_vqa"])
    assert [s.messages for s in samples] == [
        [
            Message("user", f"{IMAGE_PLACEHOLDER}\nWhere is he looking?"),
            Message("assistant", "down"),
        ],
        [
            Message("user", f"{IMAGE_PLACEHOLDER}\nWhat is he on top of?"),
            Message("assistant", "picnic table"),  # the annotators' most common answer
        ],
        [Message("user", f"{IMAGE_PLACEHOLDER}\nIs the bowl full?"), Message("assistant", "yes")],
    ]
    assert [s.images for s in samples] == [[tmp_path / r["image"]] for r in TRAIN_RECORDS]
    assert [s.messages for s in built["vqa"]] == [s.messages for s in samples]


def test_coco_vqa_takes_the_vqa_options(registry: Registry, tmp_path: Path) -> None:
    """image_root (PaddleMIX's COCO copy keeps images apart from annotations) and
    prompt_template work as for vqa."""
    (tmp_path / "annotations").mkdir()
    (tmp_path / "images").mkdir()
    (tmp_path / "annotations" / "vqa_train.json").write_text(json.dumps(TRAIN_RECORDS[:1]))
    write_vqa_data(tmp_path / "images")
    options = {
        "data_files": "annotations/vqa_train.json",
        "image_root": "images",
        "prompt_template": "Answer briefly: {question}",
    }
    (sample,) = registry.hook.build_dataset(
        dataset_name="coco_vqa", options=options, base_dir=str(tmp_path)
    )
    assert sample.images == [tmp_path / "images" / TRAIN_RECORDS[0]["image"]]
    assert (
        sample.messages[0].content == f"{IMAGE_PLACEHOLDER}\nAnswer briefly: Where is he looking?"
    )


def test_coco_vqa_has_the_vqa_schema_and_refuses_splits(registry: Registry) -> None:
    schema = compose_schema(registry)["$defs"]["datasets"]
    assert schema["coco_vqa"]["properties"] == schema["vqa"]["properties"]
    config = VISUALGLM_SFT | {
        "dataset": {"train": [{"name": "coco_vqa", "splits": "train"}]},
        "evaluation_strategy": "no",
    }
    issues = validate_config(config, registry)
    (message,) = messages(issues, "$.dataset.train[0].splits")
    assert "mixcore never downloads" in message and "data_files" in message


def test_a_misspelled_coco_vqa_option_is_named_with_its_path(registry: Registry) -> None:
    entry = {"name": "coco_vqa", "data_files": "train.json", "image_rot": "images"}
    config = VISUALGLM_SFT | {"dataset": {"train": [entry]}, "evaluation_strategy": "no"}
    (message,) = messages(validate_config(config, registry), "$.dataset.train[0].image_rot")
    assert "unknown key" in message and "image_root" in message


# -- src_length ------------------------------------------------------------------------------------


def test_src_length_is_kept_beside_max_length(registry: Registry, tmp_path: Path) -> None:
    prepared = prepare_config(local(VISUALGLM_SFT, tmp_path), registry, base_dir=tmp_path)
    assert (prepared["src_length"], prepared["max_length"]) == (1024, 2048)
    bare = {k: v for k, v in VISUALGLM_SFT.items() if k != "max_length"}
    prepared = prepare_config(local(bare, tmp_path), registry, base_dir=tmp_path)
    assert (prepared["src_length"], prepared["max_length"]) == (1024, 2048)  # PaddleMIX's too


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"src_length": 2048},
            "2048 is not below max_length 2048: a prompt that long leaves no token for the "
            "answer; allowed: 1 to 2047, or remove src_length",
        ),
        (
            {"src_length": 600, "max_length": 512},
            "600 is not below max_length 512: a prompt that long leaves no token for the "
            "answer; allowed: 1 to 511, or remove src_length",
        ),
    ],
)
def test_src_length_must_leave_room_for_the_answer(
    registry: Registry, fields: dict[str, Any], expected: str
) -> None:
    config = VISUALGLM_SFT | fields
    assert messages(validate_config(config, registry), "$.src_length") == [expected]


def test_src_length_against_the_default_max_length_says_so(registry: Registry) -> None:
    config = {k: v for k, v in VISUALGLM_SFT.items() if k != "max_length"} | {"src_length": 4096}
    (message,) = messages(validate_config(config, registry), "$.src_length")
    assert message.startswith("4096 is not below max_length 2048 (the default): ")


@pytest.mark.parametrize("value", [0, "1024", True, 1.5])
def test_src_length_must_be_a_positive_integer(registry: Registry, value: Any) -> None:
    issues = validate_config(VISUALGLM_SFT | {"src_length": value}, registry)
    assert len(messages(issues, "$.src_length")) == 1


def test_the_config_reference_says_what_src_length_does() -> None:
    reference = (Path(__file__).parents[2] / "docs" / "config-reference.md").read_text()
    (row,) = [line for line in reference.splitlines() if line.startswith("| `src_length` | Decl")]
    assert "read by none of its code" in row and "must be below max_length" in row
    assert "coco_vqa" in reference
