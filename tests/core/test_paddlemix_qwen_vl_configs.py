"""PaddleMIX's published Qwen-VL configs, and what each of their keys is in mixcore.

The three configs below are PaddleMIX's ``paddlemix/config/qwen_vl/sft_argument.json``,
``sft_argument_stage2.json`` and ``lora_sft_argument.json`` at commit
6afaf05de0485715b2c8b2587e17bb2dfe4f4cda (last changed in d8ba4440, the same files on its
release/2.0 and release/2.1 branches), key for key and value for value. Their data paths
(``train.json``, ``val.json``, ``chat_template.json``) are local names, resolved by PaddleMIX
against the working folder and by mixcore against the config file's folder.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from mixcore.config import compose_schema, validate_config
from mixcore.config.parallel_checks import paddle_build
from mixcore.config.schema import CORE_PROPERTIES
from mixcore.registry import Registry
from mixcore.testing import make_registry

#: ``paddlemix/config/qwen_vl/sft_argument.json``.
QWEN_VL_SFT: dict[str, Any] = {
    "model_name_or_path": "qwen-vl/qwen-vl-chat-7b",
    "freeze_include": ["*visual*"],
    "freeze_exclude": ["*visual.attn_pool*"],
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
    "mixtoken": True,
    "output_dir": "./checkpoints/qwen_vl_sft_ckpts",
    "overwrite_output_dir": True,
    "per_device_train_batch_size": 1,
    "gradient_accumulation_steps": 16,
    "per_device_eval_batch_size": 1,
    "eval_accumulation_steps": 16,
    "num_train_epochs": 10,
    "learning_rate": 1e-05,
    "weight_decay": 0.1,
    "adam_beta2": 0.95,
    "warmup_ratio": 0.01,
    "lr_scheduler_type": "cosine",
    "logging_steps": 1,
    "save_steps": 100,
    "evaluation_strategy": "epoch",
    "save_strategy": "epoch",
    "max_length": 2048,
    "bf16": True,
    "fp16_opt_level": "O1",
    "do_train": True,
    "do_eval": False,
    "disable_tqdm": True,
    "load_best_model_at_end": False,
    "eval_with_do_generation": False,
    "skip_memory_metrics": False,
    "benchmark": False,
    "save_total_limit": 1,
}

#: ``paddlemix/config/qwen_vl/sft_argument_stage2.json``.
QWEN_VL_SFT_STAGE2: dict[str, Any] = {
    "model_name_or_path": "qwen-vl/qwen-vl-chat-7b",
    "freeze_include": ["*visual*"],
    "freeze_exclude": ["*visual.attn_pool*"],
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
    "mixtoken": True,
    "output_dir": "./checkpoints/qwen_vl_sft_ckpts",
    "overwrite_output_dir": True,
    "per_device_train_batch_size": 1,
    "tensor_parallel_degree": 1,
    "pipeline_parallel_degree": 1,
    "sharding": "stage2",
    "gradient_accumulation_steps": 1,
    "per_device_eval_batch_size": 1,
    "eval_accumulation_steps": 16,
    "num_train_epochs": 10,
    "learning_rate": 1e-05,
    "weight_decay": 0.1,
    "adam_beta2": 0.95,
    "warmup_ratio": 0.01,
    "lr_scheduler_type": "cosine",
    "logging_steps": 1,
    "save_steps": 100,
    "evaluation_strategy": "epoch",
    "save_strategy": "epoch",
    "max_length": 2048,
    "bf16": True,
    "fp16_opt_level": "O1",
    "do_train": True,
    "do_eval": False,
    "disable_tqdm": True,
    "load_best_model_at_end": False,
    "eval_with_do_generation": False,
    "skip_memory_metrics": False,
    "benchmark": False,
    "save_total_limit": 1,
}

#: ``paddlemix/config/qwen_vl/lora_sft_argument.json``.
QWEN_VL_LORA: dict[str, Any] = {
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
    "mixtoken": True,
    "output_dir": "./checkpoints/qwen_vl_sft_ckpts",
    "overwrite_output_dir": True,
    "per_device_train_batch_size": 1,
    "gradient_accumulation_steps": 16,
    "per_device_eval_batch_size": 1,
    "eval_accumulation_steps": 16,
    "num_train_epochs": 1,
    "learning_rate": 1e-05,
    "weight_decay": 0.1,
    "adam_beta2": 0.95,
    "warmup_ratio": 0.01,
    "lr_scheduler_type": "cosine",
    "logging_steps": 1,
    "save_steps": 100,
    "evaluation_strategy": "epoch",
    "save_strategy": "epoch",
    "max_length": 2048,
    "bf16": True,
    "fp16_opt_level": "O1",
    "do_train": True,
    "do_eval": False,
    "disable_tqdm": True,
    "load_best_model_at_end": False,
    "eval_with_do_generation": False,
    "skip_memory_metrics": False,
    "benchmark": False,
    "save_total_limit": 1,
    "lora": True,
    "lora_rank": 64,
    "lora_alpha": 16,
    "lora_dropout": 0.05,
    "lora_target_modules": [".*attn.c_attn.*", ".*attn.c_proj.*", ".*mlp.w1.*", ".*mlp.w2.*"],
}

PUBLISHED_CONFIGS = {"sft": QWEN_VL_SFT, "sft_stage2": QWEN_VL_SFT_STAGE2, "lora": QWEN_VL_LORA}
PUBLISHED = pytest.mark.parametrize(
    "published", list(PUBLISHED_CONFIGS.values()), ids=list(PUBLISHED_CONFIGS)
)

#: PaddleNLP's chat_template.json form of Qwen-VL-Chat's ChatML turns.
CHAT_TEMPLATE = {
    "system": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n",
    "conversation": [
        "<|im_start|>user\n{{user}}<|im_end|>\n<|im_start|>assistant\n",
        "{{bot}}<|im_end|>\n",
    ],
    "query": "<|im_start|>user\n{{query}}<|im_end|>\n<|im_start|>assistant\n",
}


def write_chatml_data(folder: Path) -> None:
    """PaddleMIX's Qwen-VL data files in ``folder``: ``train.json`` and ``val.json`` in its
    ``conversations`` form, an image, and ``chat_template.json``."""
    from PIL import Image

    (folder / "images").mkdir(exist_ok=True)
    Image.new("RGB", (8, 8), (200, 30, 30)).save(folder / "images" / "red.png")
    record = {
        "conversations": [
            ["Picture 1: <img>images/red.png</img>\nWhat colour is it?", "Red."],
            ["Are you sure?", "Yes."],
        ]
    }
    for name in ("train.json", "val.json"):
        (folder / name).write_text(json.dumps([record, record]), encoding="utf-8")
    (folder / "chat_template.json").write_text(json.dumps(CHAT_TEMPLATE), encoding="utf-8")


def local(published: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``published`` with its data written beside the config in ``folder``: its data paths are
    already local names, so the config stays as published."""
    write_chatml_data(folder)
    return copy.deepcopy(published)


@pytest.fixture(scope="module")
def registry() -> Registry:
    return make_registry(entry_points=True)


def test_the_published_key_sets_are_config_fields() -> None:
    assert [len(c) for c in PUBLISHED_CONFIGS.values()] == [32, 35, 35]
    for published in PUBLISHED_CONFIGS.values():
        assert set(published) <= set(CORE_PROPERTIES)
        entries = [e for split in ("train", "eval") for e in published["dataset"][split]]
        assert {k for e in entries for k in e} == {"name", "data_files", "chat_template"}
    # stage2 shards with no sharding_parallel_degree: over every data-parallel card.
    assert "sharding_parallel_degree" not in QWEN_VL_SFT_STAGE2


@PUBLISHED
def test_published_qwen_vl_config_fits_the_schema_with_local_data(
    registry: Registry, tmp_path: Path, published: dict[str, Any]
) -> None:
    config = local(published, tmp_path)
    assert Draft202012Validator(compose_schema(registry)).is_valid(config)
    issues = validate_config(config, registry, base_dir=tmp_path, world_size=8)
    # The only complaint: the published model's files are not on this machine; and on a machine
    # without GPUs, that stage2 over 8 ranks needs them.
    gpu_only = "stage2" in config.get("sharding", "") and paddle_build() == "cpu"
    expected = ["$.model_options", *(["$.sharding"] if gpu_only else [])]
    assert [i.path for i in issues] == expected, issues
    assert "mixcore never downloads" in issues[0].message
    if gpu_only:
        assert "sharding stage2 needs GPUs" in issues[1].message
