"""The config schema: core fields (PaddleMIX's names) composed with every plugin's options."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from mixcore.api.constants import DATASET_ENTRY_SCHEMA

if TYPE_CHECKING:
    from mixcore.registry import Registry

SCHEMA_ID = "https://mixcore.dev/schemas/config.json"


def _int(minimum: int = 0, maximum: int | None = None, **extra: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer", "minimum": minimum, **extra}
    if maximum is not None:
        schema["maximum"] = maximum
    return schema


def _num(**bounds: Any) -> dict[str, Any]:
    return {"type": "number", **bounds}


_BOOL = {"type": "boolean"}
_STRATEGY = {"enum": ["no", "steps", "epoch"]}
_PATTERNS = {"type": "array", "items": {"type": "string", "minLength": 1}}
_DEGREE = _int(
    -1,
    4096,
    description="Cards the model is split over; 1 or -1 (derive) mean no splitting.",
)
_BIG = 2**31 - 1

CORE_PROPERTIES: dict[str, Any] = {
    # Model
    "model_name_or_path": {
        "type": "string",
        "minLength": 1,
        "description": "Local checkpoint folder, or a registered model alias (qwen_vl/tiny).",
    },
    "model": {
        "type": "string",
        "description": "Registered model name; only needed when model_name_or_path is ambiguous.",
    },
    "model_options": {
        "type": "object",
        "default": {},
        "description": "Options of the model's plugin.",
    },
    "freeze_include": {
        **_PATTERNS,
        "default": [],
        "description": "Glob patterns of parameter names to freeze (e.g. '*visual*').",
    },
    "freeze_exclude": {
        **_PATTERNS,
        "default": [],
        "description": "Glob patterns kept trainable even when freeze_include matches them.",
    },
    # Data
    "dataset": {
        "type": "object",
        "additionalProperties": False,
        "required": ["train"],
        "properties": {
            "train": {
                "type": "array",
                "minItems": 1,
                "items": {"$ref": "#/$defs/dataset_entry"},
            },
            "eval": {"type": "array", "items": {"$ref": "#/$defs/dataset_entry"}},
            "train_samples": _int(
                1,
                _BIG,
                description="Samples the weighted train sources share per epoch (default: their "
                "total size).",
            ),
            "eval_samples": _int(
                1,
                _BIG,
                description="Samples the weighted eval sources share (default: their size).",
            ),
        },
    },
    "mixtoken": {
        **_BOOL,
        "default": False,
        "description": "MIXToken packing: several samples per max_length sequence, each "
        "attending only to itself (needs a model with the packing capability).",
    },
    "max_length": _int(
        16,
        1_048_576,
        default=2048,
        description="Tokens per sample (per packed sequence with mixtoken), image tokens included.",
    ),
    "overlong_policy": {
        "enum": ["truncate", "drop", "error"],
        "default": "truncate",
        "description": "A sample longer than max_length: cut its text from the end, never "
        "through an image (truncate), leave it out and count it (drop), or stop (error).",
    },
    "on_bad_sample": {
        "enum": ["error", "skip"],
        "default": "error",
        "description": "Stop at the first bad record or skip and count it; a dataset entry's "
        "own on_bad_sample overrides it.",
    },
    # Trainer
    "output_dir": {"type": "string", "minLength": 1},
    "overwrite_output_dir": {**_BOOL, "default": False},
    "do_train": {**_BOOL, "default": True},
    "do_eval": {**_BOOL, "default": False},
    "do_predict": _BOOL,
    "per_device_train_batch_size": _int(1, 65536),
    "per_device_eval_batch_size": _int(1, 65536),
    "gradient_accumulation_steps": _int(1, 65536),
    "eval_accumulation_steps": _int(1, 65536),
    "num_train_epochs": _num(exclusiveMinimum=0, maximum=1e6),
    "max_steps": _int(-1, _BIG),
    "learning_rate": _num(exclusiveMinimum=0, maximum=10),
    "weight_decay": _num(minimum=0, maximum=10),
    "adam_beta1": _num(minimum=0, exclusiveMaximum=1),
    "adam_beta2": _num(minimum=0, exclusiveMaximum=1),
    "adam_epsilon": _num(exclusiveMinimum=0, maximum=1),
    "max_grad_norm": _num(minimum=0),
    "warmup_ratio": _num(minimum=0, maximum=1),
    "warmup_steps": _int(0, _BIG),
    "lr_scheduler_type": {
        "enum": ["linear", "cosine", "constant", "constant_with_warmup", "polynomial"]
    },
    "logging_steps": _int(1, _BIG, default=10),
    "logging_dir": {"type": "string", "minLength": 1},
    "logging_first_step": _BOOL,
    "evaluation_strategy": {**_STRATEGY, "default": "no"},
    "eval_steps": _int(1, _BIG, description="Steps between evaluations (default: logging_steps)."),
    "save_strategy": {**_STRATEGY, "default": "epoch"},
    "save_steps": _int(1, _BIG, default=500),
    "save_total_limit": {"type": ["integer", "null"], "minimum": 1},
    "seed": _int(0, 2**32 - 1, default=42),
    "bf16": {**_BOOL, "default": False},
    "fp16": {**_BOOL, "default": False},
    "fp16_opt_level": {"enum": ["O0", "O1", "O2"]},
    "recompute": _BOOL,
    "dataloader_num_workers": _int(0, 256),
    "disable_tqdm": _BOOL,
    "resume_from_checkpoint": {
        "type": ["string", "boolean", "null"],
        "description": "A checkpoint folder to continue from, or true for the latest in output_dir.",
    },
    "load_best_model_at_end": {**_BOOL, "default": False},
    "metric_for_best_model": {"type": "string"},
    "greater_is_better": _BOOL,
    "report_to": {
        "default": ["none"],
        "anyOf": [
            {"enum": ["none", "visualdl", "wandb", "tensorboard"]},
            {"type": "array", "items": {"enum": ["none", "visualdl", "wandb", "tensorboard"]}},
        ],
    },
    "skip_memory_metrics": _BOOL,
    "benchmark": {
        **_BOOL,
        "default": False,
        "description": "Report throughput instead of saving checkpoints.",
    },
    "eval_with_do_generation": _BOOL,
    # LoRA
    "lora": {
        **_BOOL,
        "default": False,
        "description": "Train low-rank adapters instead of the full weights.",
    },
    "lora_rank": _int(1, 4096, default=8),
    "lora_alpha": _num(exclusiveMinimum=0, maximum=1e6, default=16),
    "lora_dropout": _num(minimum=0, exclusiveMaximum=1, default=0.0),
    "lora_target_modules": {
        **_PATTERNS,
        "description": "Regular expressions over layer names; the model plugin's default if absent.",
    },
    # Parallelism
    "tensor_parallel_degree": _DEGREE,
    "pipeline_parallel_degree": _DEGREE,
    "sharding_parallel_degree": _DEGREE,
    "sharding": {
        "type": "string",
        "pattern": r"^\s*((stage[123]|offload)(\s+(stage[123]|offload))*)?\s*$",
        "description": "ZeRO-style sharding: 'stage1', 'stage2', 'stage3', optionally 'offload'.",
    },
}


def apply_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` with every default filled in: the place defaults are applied.

    Each top-level field the schema gives a ``default`` and the config leaves out gets it, and
    each dataset entry its ``label`` (``name#index``) and ``on_bad_sample`` (the config's), as
    :data:`~mixcore.api.constants.DATASET_ENTRY_SCHEMA` promises ``build_dataset``. Code that
    reads a prepared config (:func:`mixcore.config.prepare_config`) uses ``config[key]`` for these
    fields, never a default of its own. Values the config gives are kept as they are, valid or
    not, so the cross-field checks of validation can run on the result too.
    """
    out = dict(config)
    for key, schema in CORE_PROPERTIES.items():
        if key not in out and "default" in schema:
            out[key] = copy.deepcopy(schema["default"])
    dataset = out.get("dataset")
    if isinstance(dataset, dict):
        dataset = dict(dataset)
        for split in ("train", "eval"):
            entries = dataset.get(split)
            if isinstance(entries, list):
                dataset[split] = [
                    _entry_defaults(entry, i, out["on_bad_sample"])
                    for i, entry in enumerate(entries)
                ]
        out["dataset"] = dataset
    return out


def _entry_defaults(entry: Any, index: int, on_bad_sample: Any) -> Any:
    if not isinstance(entry, dict):
        return entry
    return {"label": f"{entry.get('name')}#{index}", "on_bad_sample": on_bad_sample, **entry}


def core_schema() -> dict[str, Any]:
    """The config schema without any plugin: dataset entries accept only the core's keys."""
    return _assemble(dataset_defs={}, model_defs={})


def compose_schema(registry: Registry) -> dict[str, Any]:
    """The full config schema: core fields plus each registered model's and dataset's options."""
    datasets = {name: e.options_schema for name, e in registry.datasets.items()}
    models = {name: e.options_schema for name, e in registry.models.items()}
    return _assemble(dataset_defs=datasets, model_defs=models)


def dataset_entry_schema(options_schema: dict[str, Any]) -> dict[str, Any]:
    """One dataset kind's entry schema: its own options plus the core entry keys, nothing else."""
    merged = copy.deepcopy(options_schema)
    merged["type"] = "object"
    merged["properties"] = {**DATASET_ENTRY_SCHEMA, **merged.get("properties", {})}
    merged["required"] = sorted({"name", *merged.get("required", [])})
    merged["additionalProperties"] = False
    return merged


_DATA_KEYWORDS = frozenset({"enum", "const", "default", "examples"})


def _embedded(schema: Any, space: str, name: str) -> Any:
    """A plugin's option schema as it sits at ``#/$defs/<space>/<name>`` of the composed schema.

    Its references into itself (``"#/$defs/size"``) were checked against the plugin's own
    schema when the plugin was admitted, and mean the same when ``model_options`` are validated
    alone; inside the composed document they are rebased onto where the schema now sits.
    """
    where = "#/$defs/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in (space, name))

    def rebase(node: Any) -> Any:
        if isinstance(node, list):
            return [rebase(item) for item in node]
        if not isinstance(node, dict):
            return node
        # enum, const, default and examples hold data, not schemas: left as they are.
        out = {k: v if k in _DATA_KEYWORDS else rebase(v) for k, v in node.items()}
        for keyword in ("$ref", "$dynamicRef"):
            ref = node.get(keyword)
            if isinstance(ref, str) and (ref == "#" or ref.startswith("#/")):
                out[keyword] = where + ref[1:]
        return out

    return rebase(schema)


def _assemble(dataset_defs: dict[str, Any], model_defs: dict[str, Any]) -> dict[str, Any]:
    properties = copy.deepcopy(CORE_PROPERTIES)
    defs: dict[str, Any] = {}
    entry: dict[str, Any] = {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"enum": sorted(dataset_defs)}},
    }
    if dataset_defs:
        entry["allOf"] = [
            {
                "if": {"properties": {"name": {"const": name}}, "required": ["name"]},
                "then": {"$ref": f"#/$defs/datasets/{name}"},
            }
            for name in sorted(dataset_defs)
        ]
        defs["datasets"] = {
            n: _embedded(dataset_entry_schema(s), "datasets", n)
            for n, s in sorted(dataset_defs.items())
        }
    defs["dataset_entry"] = entry
    if model_defs:
        properties["model"]["enum"] = sorted(model_defs)
        defs["models"] = {
            n: _embedded(copy.deepcopy(s), "models", n) for n, s in sorted(model_defs.items())
        }
    schema: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "mixcore training config",
        "description": "PaddleMIX-compatible fine-tuning config, as validated by `mixcore validate`.",
        "type": "object",
        "required": ["model_name_or_path", "dataset", "output_dir"],
        "additionalProperties": False,
        "properties": properties,
        "$defs": defs,
    }
    if model_defs:
        schema["allOf"] = [
            {
                "if": {"properties": {"model": {"const": name}}, "required": ["model"]},
                "then": {"properties": {"model_options": {"$ref": f"#/$defs/models/{name}"}}},
            }
            for name in sorted(model_defs)
        ]
    return schema
