"""Every field of the installed PaddleNLP ``TrainingArguments`` is a config key: accepted with
PaddleNLP's type and handed to the Trainer, or refused with the reason. A PaddleNLP upgrade that
adds a field fails here until the field is given one or the other."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import pytest

from mixcore.config import core_schema, validate_config
from mixcore.config.schema import CORE_PROPERTIES
from mixcore.issues import REFUSED, validate
from mixcore.testing import make_registry

TrainingArguments = pytest.importorskip("paddlenlp.trainer").TrainingArguments
FIELDS = [f for f in dataclasses.fields(TrainingArguments) if f.init]
#: Keys the core schema gives PaddleNLP's name but a meaning of mixcore's own (documented in
#: the config reference): their PaddleNLP default is not necessarily one of their values.
OWN_MEANING = {"do_predict", "resume_from_checkpoint", "report_to"}


def _refused(schema: dict[str, Any]) -> bool:
    return "not" in schema or "const" in schema


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return dataclasses.MISSING
    return value.value if isinstance(value, enum.Enum) else value


@pytest.mark.parametrize("field", FIELDS, ids=lambda f: f.name)
def test_every_training_argument_is_accepted_or_refused_with_a_reason(field) -> None:
    schema = CORE_PROPERTIES.get(field.name)
    assert schema is not None, f"PaddleNLP's TrainingArguments.{field.name} is not a config key"
    if _refused(schema):
        assert isinstance(schema.get(REFUSED), str) and schema[REFUSED].strip()


@pytest.mark.parametrize(
    "field",
    [
        f
        for f in FIELDS
        if not _refused(CORE_PROPERTIES.get(f.name, {"not": {}})) and f.name not in OWN_MEANING
    ],
    ids=lambda f: f.name,
)
def test_an_accepted_field_takes_paddlenlps_default(field) -> None:
    default = _default(field)
    if default is dataclasses.MISSING or default is None:
        return  # None means "unset" there, as leaving the key out does here
    assert validate(default, CORE_PROPERTIES[field.name]) == [], (field.name, default)


def test_a_refused_training_argument_says_why() -> None:
    config = {"output_dir": "out", "distributed_dataloader": True}
    issues = validate(config, core_schema())
    assert [str(i) for i in issues if i.path == "$.distributed_dataloader"] == [
        "$.distributed_dataloader: not supported: "
        + CORE_PROPERTIES["distributed_dataloader"][REFUSED]
    ]


def test_accepted_fields_reach_the_trainers_arguments(tmp_path) -> None:
    from mixcore.config import apply_defaults
    from mixcore.train.run import training_arguments

    config = apply_defaults(
        {
            "model_name_or_path": "m",
            "dataset": {"train": [{"name": "d"}]},
            "output_dir": str(tmp_path / "out"),
            "optim": "adafactor",
            "logging_strategy": "epoch",
            "dataloader_drop_last": True,
            "run_name": "first",
            "num_cycles": 1.5,
        }
    )
    args = training_arguments(config)
    assert args.optim.value == "adafactor"
    assert args.logging_strategy.value == "epoch"
    assert args.dataloader_drop_last is True
    assert args.run_name == "first"
    assert args.num_cycles == 1.5


def test_device_is_one_of_paddles_kinds() -> None:
    registry = make_registry(entry_points=False)
    base = {"model_name_or_path": "m", "dataset": {"train": [{"name": "d"}]}, "output_dir": "o"}
    issues = validate_config(base | {"device": "tpu"}, registry)
    assert [i.message for i in issues if i.path == "$.device"] == [
        'got "tpu"; allowed: "cpu", "gpu", "xpu", "npu" (did you mean \'xpu\'?)'
    ]
    issues = validate_config(base | {"device": "cpu"}, registry)
    assert not [i for i in issues if i.path == "$.device"]


def test_a_combination_only_paddlenlp_checks_is_a_train_error_not_a_traceback(tmp_path) -> None:
    from mixcore.config import apply_defaults
    from mixcore.train.assemble import TrainError
    from mixcore.train.run import training_arguments

    config = apply_defaults(
        {
            "model_name_or_path": "m",
            "dataset": {"train": [{"name": "d"}]},
            "output_dir": str(tmp_path / "out"),
            "unified_checkpoint_config": "no_such_option",
        }
    )
    with pytest.raises(TrainError, match="PaddleNLP's TrainingArguments refused the config: "):
        training_arguments(config)
