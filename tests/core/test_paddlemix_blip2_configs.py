"""PaddleMIX's published BLIP-2 configs validate, and each of their PaddleMIX keys means what it
means there or is refused with what to do instead.

The two configs below are PaddleMIX's ``paddlemix/config/blip2/sft_argument.json`` and
``paddlemix/config/blip2/lora_sft_argument.json`` at commit
6afaf05de0485715b2c8b2587e17bb2dfe4f4cda (both last changed in 4d8458fb3b94), key for key and
value for value. How PaddleMIX reads each key: ``paddlemix/tools/supervised_finetune.py``,
``paddlemix/trainer/argument.py`` and ``blip2_trainer.py``, ``paddlemix/optimization``.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest

from mixcore import hookimpl
from mixcore.config import apply_defaults, compose_schema, prepare_config, validate_config
from mixcore.config.schema import CORE_PROPERTIES, PADDLEMIX, REFUSED_ENTRY_KEYS
from mixcore.issues import Issue
from mixcore.registry import Registry
from mixcore.testing import make_plugin, make_registry, run_cli, write_config

BLIP2_SFT: dict[str, Any] = {
    "model_name_or_path": "paddlemix/blip2-pretrained-opt2.7b",
    "text_model_name_or_path": "facebook/opt-2.7b",
    "dataset": {
        "train": [{"name": "coco_caption", "splits": "train"}],
        "eval": [{"name": "coco_caption", "splits": "val"}],
    },
    "output_dir": "./checkpoints/blip2_sft_ckpts",
    "overwrite_output_dir": True,
    "per_device_train_batch_size": 32,
    "gradient_accumulation_steps": 1,
    "per_device_eval_batch_size": 128,
    "eval_accumulation_steps": 16,
    "num_train_epochs": 10,
    "learning_rate": 1e-03,
    "weight_decay": 0.05,
    "adam_beta2": 0.95,
    "eta_min": 1e-5,
    "warmup_start_lr": 1e-6,
    "lr_scheduler_name": "CosineDecayWithWarmup",
    "logging_steps": 1,
    "save_steps": 10,
    "evaluation_strategy": "steps",
    "save_strategy": "steps",
    "max_length": 2048,
    "fp16": True,
    "fp16_opt_level": "O1",
    "do_train": True,
    "do_eval": False,
    "do_predict": False,
    "disable_tqdm": True,
    "load_best_model_at_end": True,
    "eval_with_do_generation": False,
    "save_total_limit": 1,
}

BLIP2_LORA: dict[str, Any] = {
    **copy.deepcopy(BLIP2_SFT),
    "lora": True,
    "lora_rank": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    "lora_target_modules": [
        "language_model.opt.decoder.layers.*.self_attn.q_proj.*",
        "language_model.opt.decoder.layers.*.self_attn.v_proj.*",
    ],
}

PUBLISHED = pytest.mark.parametrize("published", [BLIP2_SFT, BLIP2_LORA], ids=["sft", "lora"])

#: The alias PaddleMIX's files name; the blip2 plugin registers it (or will), the tests' own
#: in-memory BLIP-2 does here.
ALIAS = "paddlemix/blip2-pretrained-opt2.7b"


@hookimpl
def register_models(register: Any) -> None:
    register(
        name="fake_blip2",
        description="in-memory BLIP-2 stand-in",
        capabilities={"sft": True, "lora": True},
        aliases=[ALIAS],
        model_types=["blip-2"],
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


FAKE_BLIP2 = make_plugin(
    "fake_blip2", register_models, load_model, preprocess_sample, lora_target_modules
)


@pytest.fixture(scope="module")
def registry() -> Registry:
    """The in-memory BLIP-2 and the installed datasets plugin (coco_caption)."""
    return make_registry(
        FAKE_BLIP2, entry_points=True, environ={"MIXCORE_PLUGINS": "datasets,fake_blip2"}
    )


def local(published: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``published`` with each dataset entry's ``splits`` replaced by local Karpathy-style files
    (what PaddleMIX downloads for them) written under ``folder``."""
    (folder / "images").mkdir(exist_ok=True)
    (folder / "images" / "a.jpg").write_bytes(b"\xff\xd8\xff")  # located, never decoded here
    config = copy.deepcopy(published)
    for split in ("train", "eval"):
        for entry in config["dataset"][split]:
            name = f"coco_karpathy_{entry.pop('splits')}.json"
            records = [{"image": "a.jpg", "caption": ["A cat.", "A small cat."], "image_id": "1"}]
            (folder / name).write_text(json.dumps(records), encoding="utf-8")
            entry |= {"data_files": name, "image_root": "images"}
    return config


def messages(issues: list[Issue], path: str) -> list[str]:
    return [issue.message for issue in issues if issue.path == path]


# -- the published files ---------------------------------------------------------------------------


def test_the_published_key_sets_are_the_ones_mapped_here() -> None:
    """Every key of the two files is a field of the config schema (none is an unknown key)."""
    assert len(BLIP2_SFT) == 30 and len(BLIP2_LORA) == 35
    assert set(BLIP2_LORA) <= set(CORE_PROPERTIES)
    assert {k for e in BLIP2_SFT["dataset"]["train"] for k in e} == {"name", "splits"}
    paddlemix_own = {"text_model_name_or_path", "eta_min", "warmup_start_lr", "lr_scheduler_name"}
    assert all(PADDLEMIX in CORE_PROPERTIES[key] for key in paddlemix_own)
    assert PADDLEMIX in REFUSED_ENTRY_KEYS["splits"]


@PUBLISHED
def test_published_blip2_config_validates_with_local_data(
    registry: Registry, tmp_path: Path, published: dict[str, Any]
) -> None:
    config = local(published, tmp_path)
    assert validate_config(config, registry, base_dir=tmp_path, world_size=1) == []


@PUBLISHED
def test_mixcore_validate_accepts_the_published_file(
    tmp_path: Path, published: dict[str, Any]
) -> None:
    path = write_config(tmp_path, local(published, tmp_path))
    result = run_cli(
        ["validate", "--config", str(path)],
        plugins=[FAKE_BLIP2],
        entry_points=True,
        environ={"MIXCORE_PLUGINS": "datasets,fake_blip2"},
    )
    assert result.exit_code == 0, result.stdout + result.stderr


@PUBLISHED
def test_with_the_installed_plugins_only_the_blip2_plugin_may_object(
    tmp_path: Path, published: dict[str, Any]
) -> None:
    """Against the real blip2 plugin (its alias for PaddleMIX's caption checkpoint), nothing the
    core reads is wrong: what is left is the plugin's to say (capabilities, weights on disk)."""
    config = local(published, tmp_path) | {"model_name_or_path": "paddlemix/blip2-caption-opt2.7b"}
    issues = validate_config(config, make_registry(entry_points=True), base_dir=tmp_path)
    assert {i.path for i in issues} <= {"$.model_name_or_path", "$.model_options"}, issues


@PUBLISHED
def test_published_splits_are_refused_with_what_to_write_instead(
    registry: Registry, tmp_path: Path, published: dict[str, Any]
) -> None:
    issues = validate_config(published, registry, base_dir=tmp_path)
    (train,) = messages(issues, "$.dataset.train[0].splits")
    assert train.startswith("not supported: PaddleMIX's splits picks a split of a dataset")
    assert "mixcore never downloads" in train and "data_files" in train
    assert messages(issues, "$.dataset.eval[0].splits") == [train]
    # Not "unknown key": the schema knows the key and why it is refused.
    assert not any("unknown key" in i.message for i in issues)
    assert {i.path for i in issues} == {
        f"$.dataset.{split}[0]{key}" for split in ("train", "eval") for key in ("", ".splits")
    }  # the entry's own issue: data_files is missing


def test_a_dataset_kind_with_a_splits_option_keeps_its_meaning(tmp_path: Path) -> None:
    @hookimpl
    def register_datasets(register: Any) -> None:
        register(
            name="hub_data",
            description="a dataset with its own splits",
            options_schema={"type": "object", "properties": {"splits": {"enum": ["train"]}}},
        )

    registry = make_registry(FAKE_BLIP2, make_plugin("hub", register_datasets))
    config = {
        "model_name_or_path": ALIAS,
        "dataset": {"train": [{"name": "hub_data", "splits": "train"}]},
        "output_dir": "out",
    }
    assert validate_config(config, registry) == []


# -- text_model_name_or_path -----------------------------------------------------------------------


def checkpoint(folder: Path, text_config: Any) -> Path:
    folder.mkdir()
    config: dict[str, Any] = {"model_type": "blip-2"}
    if text_config is not None:
        config["text_config"] = text_config
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def text_model_issues(registry: Registry, tmp_path: Path, **fields: Any) -> list[str]:
    config = local(BLIP2_SFT, tmp_path) | fields
    issues = validate_config(config, registry, base_dir=tmp_path)
    assert {i.path for i in issues} <= {"$.text_model_name_or_path"}, issues
    return messages(issues, "$.text_model_name_or_path")


@pytest.mark.parametrize(
    "text_config",
    [
        {"_name_or_path": "facebook/opt-2.7b", "model_type": "opt"},  # Hugging Face, PaddleNLP
        "facebook/opt-2.7b",  # PaddleMIX's own Blip2Config
        {"_name_or_path": "/root/.paddlenlp/models/facebook/opt-2.7b"},  # converted from a copy
    ],
    ids=["hf", "paddlemix", "path"],
)
def test_text_model_that_the_checkpoint_is_built_on_is_accepted(
    registry: Registry, tmp_path: Path, text_config: Any
) -> None:
    checkpoint(tmp_path / "blip2-opt-2.7b", text_config)
    assert text_model_issues(registry, tmp_path, model_name_or_path="blip2-opt-2.7b") == []


def test_text_model_equal_to_the_checkpoint_or_beside_an_alias_is_accepted(
    registry: Registry, tmp_path: Path
) -> None:
    checkpoint(tmp_path / "ckpt", None)
    same = {"model_name_or_path": "ckpt", "text_model_name_or_path": "./ckpt/"}
    assert text_model_issues(registry, tmp_path, **same) == []
    # An alias names a published checkpoint, whose own language model and tokenizer are fixed.
    assert text_model_issues(registry, tmp_path, model_name_or_path=ALIAS) == []


def test_text_model_another_checkpoint_is_built_on_is_refused(
    registry: Registry, tmp_path: Path
) -> None:
    folder = checkpoint(tmp_path / "ckpt", {"_name_or_path": "facebook/opt-6.7b"})
    (message,) = text_model_issues(registry, tmp_path, model_name_or_path="ckpt")
    assert message == (
        f"the checkpoint in {folder} is built on 'facebook/opt-6.7b' (its config.json "
        "text_config), not 'facebook/opt-2.7b'; mixcore uses the checkpoint's own tokenizer: "
        "set text_model_name_or_path to 'facebook/opt-6.7b' or remove it"
    )


def test_text_model_a_checkpoint_does_not_record_is_refused(
    registry: Registry, tmp_path: Path
) -> None:
    checkpoint(tmp_path / "ckpt", {"model_type": "opt"})
    (message,) = text_model_issues(registry, tmp_path, model_name_or_path="ckpt")
    assert "names no language model" in message
    assert message.endswith("remove text_model_name_or_path")


def test_a_separate_tokenizer_folder_is_refused(registry: Registry, tmp_path: Path) -> None:
    checkpoint(tmp_path / "ckpt", {"_name_or_path": "facebook/opt-2.7b"})
    (tmp_path / "opt-tokenizer").mkdir()
    for source in ("ckpt", ALIAS):
        (message,) = text_model_issues(
            registry, tmp_path, model_name_or_path=source, text_model_name_or_path="opt-tokenizer"
        )
        assert message.startswith(f"names the folder {tmp_path / 'opt-tokenizer'}, but mixcore")
        assert "copy the tokenizer files into the checkpoint folder" in message


# -- the learning-rate schedule --------------------------------------------------------------------


def test_lr_scheduler_name_is_the_cosine_schedule(registry: Registry, tmp_path: Path) -> None:
    prepared = prepare_config(local(BLIP2_SFT, tmp_path), registry, base_dir=tmp_path)
    assert prepared["lr_scheduler_type"] == "cosine"
    assert (prepared["eta_min"], prepared["warmup_start_lr"]) == (1e-5, 1e-6)
    # Left out, both ends are PaddleNLP's: 0.
    bare = apply_defaults({"lr_scheduler_type": "cosine"})
    assert (bare["eta_min"], bare["warmup_start_lr"]) == (0.0, 0.0)


def test_an_unknown_lr_scheduler_name_says_what_to_use(registry: Registry) -> None:
    config = BLIP2_SFT | {"lr_scheduler_name": "CosineDecay"}
    (message,) = messages(validate_config(config, registry), "$.lr_scheduler_name")
    assert message == (
        'got "CosineDecay"; allowed: "CosineDecayWithWarmup" (did you mean '
        "'CosineDecayWithWarmup'?); PaddleMIX has no other scheduler; for PaddleNLP's other "
        "schedules set lr_scheduler_type instead"
    )


def test_lr_scheduler_name_and_another_lr_scheduler_type_conflict(registry: Registry) -> None:
    config = BLIP2_SFT | {"lr_scheduler_type": "linear"}
    issues = validate_config(config, registry)
    assert messages(issues, "$.lr_scheduler_name") == [
        "'CosineDecayWithWarmup' is lr_scheduler_type 'cosine', but lr_scheduler_type is "
        "'linear'; keep one of the two"
    ]
    same = BLIP2_SFT | {"lr_scheduler_type": "cosine"}
    assert messages(validate_config(same, registry), "$.lr_scheduler_name") == []


def test_eta_min_and_warmup_start_lr_need_the_cosine_schedule(registry: Registry) -> None:
    config = {k: v for k, v in BLIP2_SFT.items() if k != "lr_scheduler_name"}
    issues = validate_config(config, registry)
    (eta,) = messages(issues, "$.eta_min")
    assert eta.startswith("is the rate the cosine schedule ends at, but the schedule is linear")
    assert "set lr_scheduler_type to 'cosine'" in eta and eta.endswith("or remove eta_min")
    assert messages(issues, "$.warmup_start_lr")
    # 0 is every schedule's own end: nothing to object to.
    zero = config | {"eta_min": 0, "warmup_start_lr": 0.0}
    assert not {"$.eta_min", "$.warmup_start_lr"} & {
        i.path for i in validate_config(zero, registry)
    }


def test_eta_min_above_the_learning_rate_is_refused(registry: Registry) -> None:
    issues = validate_config(BLIP2_SFT | {"eta_min": 2e-3}, registry)
    assert messages(issues, "$.eta_min") == [
        "0.002 is above learning_rate 0.001; it must not exceed it"
    ]


# -- keys mixcore cannot honour --------------------------------------------------------------------


@pytest.mark.parametrize("key", ["eval_with_do_generation", "do_predict"])
def test_prediction_keys_are_accepted_false_and_refused_true(registry: Registry, key: str) -> None:
    assert messages(validate_config(BLIP2_SFT, registry), f"$.{key}") == []
    (message,) = messages(validate_config(BLIP2_SFT | {key: True}, registry), f"$.{key}")
    assert message.startswith("must be false, got true; mixcore ")
    assert "mixcore infer --model CHECKPOINT --data FILE" in message


def test_the_composed_schema_carries_the_reasons_for_editors(registry: Registry) -> None:
    schema = compose_schema(registry)
    entry = schema["$defs"]["datasets"]["coco_caption"]["properties"]["splits"]
    assert entry["not"] == {} and "data_files" in entry["x-refused"]
    assert schema["properties"]["eval_with_do_generation"]["const"] is False


# -- eta_min and warmup_start_lr reach the Trainer -------------------------------------------------


def test_cosine_rate_runs_from_warmup_start_lr_to_eta_min() -> None:
    from mixcore.train.schedule import cosine_rate

    shape = {"learning_rate": 1e-3, "warmup_steps": 4, "total_steps": 20}
    rates = [cosine_rate(s, **shape, min_lr=1e-5, warmup_start_lr=1e-6) for s in range(21)]
    assert rates[0] == 1e-6 and rates[4] == pytest.approx(1e-3)
    assert rates[2] == pytest.approx(1e-6 + (1e-3 - 1e-6) / 2)
    assert rates[20] == pytest.approx(1e-5) and min(rates[4:]) == pytest.approx(1e-5)
    assert all(a >= b for a, b in itertools.pairwise(rates[4:]))
    # Halfway through the decay: the midpoint of the two ends.
    assert rates[12] == pytest.approx((1e-3 + 1e-5) / 2)
    # With both ends at 0 it is PaddleNLP's cosine schedule.
    plain = [cosine_rate(s, **shape) for s in range(21)]
    progress = [(s - 4) / 16 for s in range(4, 21)]
    assert plain[4:] == pytest.approx([1e-3 * 0.5 * (1 + math.cos(math.pi * p)) for p in progress])


def test_the_trainer_schedule_ends_at_eta_min(registry: Registry, tmp_path: Path) -> None:
    """The published schedule, built by mixcore's Trainer from the prepared config: it starts
    at warmup_start_lr, peaks at learning_rate and ends at eta_min."""
    import paddle

    from mixcore.train.data import ProblemLog
    from mixcore.train.run import training_arguments
    from mixcore.train.trainer import trainer_class

    config = local(BLIP2_SFT, tmp_path) | {"warmup_steps": 3, "fp16": False}
    config["output_dir"] = str(tmp_path / "out")
    prepared = prepare_config(config, registry, base_dir=tmp_path)
    args = training_arguments(prepared)
    assert args.lr_scheduler_type.value == "cosine" and args.learning_rate == 1e-3
    trainer = trainer_class()(
        model=paddle.nn.Linear(2, 2),
        args=args,
        problems=ProblemLog(),
        min_lr=prepared["eta_min"],
        warmup_start_lr=prepared["warmup_start_lr"],
    )
    trainer.create_optimizer_and_scheduler(num_training_steps=12)
    rates = []
    for _ in range(13):
        rates.append(trainer.optimizer.get_lr())
        trainer.lr_scheduler.step()
    assert rates[0] == pytest.approx(1e-6) and rates[3] == pytest.approx(1e-3)
    assert rates[12] == pytest.approx(1e-5)
    assert rates[11] > rates[12]


def test_without_eta_min_the_trainer_keeps_paddlenlp_cosine(
    registry: Registry, tmp_path: Path
) -> None:
    import paddle
    from paddle.optimizer.lr import LambdaDecay

    from mixcore.train.data import ProblemLog
    from mixcore.train.run import training_arguments
    from mixcore.train.trainer import trainer_class

    config = local(BLIP2_SFT, tmp_path) | {"fp16": False, "output_dir": str(tmp_path / "out")}
    del config["eta_min"], config["warmup_start_lr"]
    prepared = prepare_config(config, registry, base_dir=tmp_path)
    trainer = trainer_class()(
        model=paddle.nn.Linear(2, 2),
        args=training_arguments(prepared),
        problems=ProblemLog(),
        min_lr=prepared["eta_min"],
        warmup_start_lr=prepared["warmup_start_lr"],
    )
    scheduler = trainer.create_scheduler(10)
    assert isinstance(scheduler, LambdaDecay)
    for _ in range(10):
        scheduler.step()
    assert scheduler.get_lr() == 0.0  # PaddleNLP's cosine ends at 0


def test_a_checkpoint_without_config_json_is_reported_once(
    registry: Registry, tmp_path: Path
) -> None:
    (tmp_path / "ckpt").mkdir()
    config = local(BLIP2_SFT, tmp_path) | {"model_name_or_path": "ckpt"}
    issues = validate_config(config, registry, base_dir=tmp_path)
    assert [i.path for i in issues] == ["$.model_name_or_path"]
    assert "has no config.json" in issues[0].message
