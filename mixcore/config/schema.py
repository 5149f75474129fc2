"""The config schema: core fields (PaddleMIX's names) composed with every plugin's options."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from mixcore.api.constants import DATASET_ENTRY_SCHEMA
from mixcore.config.trainer_fields import TRAINER_PROPERTIES
from mixcore.issues import REFUSED

if TYPE_CHECKING:
    from mixcore.registry import Registry

SCHEMA_ID = "https://mixcore.dev/schemas/config.json"

#: Annotation keyword on a field's schema: what PaddleMIX does with the key, where that is not
#: what a PaddleNLP ``TrainingArguments`` field of the name does or differs from mixcore's meaning
#: (read at PaddleMIX commit 6afaf05, October 2024). The config reference tabulates them.
PADDLEMIX = "x-paddlemix"

#: PaddleMIX's ``lr_scheduler_name`` values and the PaddleNLP ``lr_scheduler_type`` each one is.
#: ``paddlemix.optimization`` holds no other scheduler.
PADDLEMIX_SCHEDULERS = {"CosineDecayWithWarmup": "cosine"}


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
#: ``device`` values: Paddle's device kinds a PaddleNLP run selects with ``paddle.set_device``.
DEVICES = ("cpu", "gpu", "xpu", "npu")

CORE_PROPERTIES: dict[str, Any] = {
    # Model
    "model_name_or_path": {
        "type": "string",
        "minLength": 1,
        "description": "Local checkpoint folder, or a registered model alias (qwen_vl/tiny).",
        PADDLEMIX: "A local folder, or a name PaddleMIX downloads (paddlemix/blip2-pretrained-"
        "opt2.7b); the name also picks its trainer. mixcore never downloads: an alias of a "
        "published model needs its files on disk.",
    },
    "text_model_name_or_path": {
        "type": "string",
        "minLength": 1,
        "description": "The language model whose tokenizer the checkpoint uses (facebook/opt-2.7b). "
        "mixcore always uses the tokenizer saved with the checkpoint, so this is a check: "
        "accepted when it is model_name_or_path itself, the language model the checkpoint "
        "folder's config.json names (text_config), or any name beside a registered alias "
        "(whose checkpoint fixes its language model); refused when it names another folder or "
        "another language model.",
        PADDLEMIX: "Where the tokenizer is loaded from (default: model_name_or_path); its BLIP-2 "
        "configs name the language model, facebook/opt-2.7b.",
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
            "stream_buffer": _int(
                1,
                1_000_000,
                description="Streaming sources: samples drawn into each buffer that is packed "
                "(mixtoken) and trained on before the next is drawn (default 512).",
            ),
            "cache": {
                "type": "boolean",
                "default": True,
                "description": "Keep each data file's checked samples and their measured lengths "
                "in the processed-data cache, so the next run, a resume or a dry run on the same "
                "files starts in seconds (entries are keyed by the files' content).",
            },
            "cache_dir": {
                "type": "string",
                "minLength": 1,
                "description": "Folder of the processed-data cache, relative to the config "
                "file's folder (default: $MIXCORE_CACHE_DIR, else ~/.cache/mixcore). mixcore "
                "writes only under its data/ subfolder; deleting it is always safe.",
            },
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
    "src_length": _int(
        1,
        1_048_576,
        description="PaddleMIX's and PaddleNLP's bound on the prompt (the tokens before the "
        "answer). Accepted as a check: it must be below max_length, so that an answer fits after "
        "a prompt that long. max_length alone bounds a sample here (overlong_policy); mixcore "
        "does not cut prompts at src_length, as PaddleMIX does not either.",
        **{
            PADDLEMIX: "Declared by its DataArgument as the longest source (context) in tokens, "
            "default 1024, and read by none of its code, so it has no effect there (its VisualGLM "
            "files give 1024 beside max_length 2048). In PaddleNLP's LLM fine-tuning the prompt "
            "is cut from the left to src_length tokens and the answer to max_length minus the "
            "prompt."
        },
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
    "do_predict": {
        **_BOOL,
        "const": False,
        "description": "Only false: `mixcore train` trains and evaluates, it does not predict.",
        REFUSED: "mixcore train does not predict; run `mixcore infer --model CHECKPOINT --data "
        "FILE` on the test data after training",
        PADDLEMIX: "Read by none of its fine-tuning code (tools/supervised_finetune.py).",
    },
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
    "lr_scheduler_name": {
        "enum": sorted(PADDLEMIX_SCHEDULERS),
        "description": "PaddleMIX's name of the schedule: CosineDecayWithWarmup is lr_scheduler_type "
        "cosine (linear warmup from warmup_start_lr, then cosine decay to eta_min).",
        REFUSED: "PaddleMIX has no other scheduler; for PaddleNLP's other schedules set "
        "lr_scheduler_type instead",
        PADDLEMIX: "The scheduler its BLIP-2 and MiniGPT-4 trainers build, which ignore "
        "lr_scheduler_type. Its warmup reads warmup_steps only (mixcore also warmup_ratio); its "
        "decay, as written, takes the floor of pi * step / total steps, so the rate falls in four "
        "flat steps; mixcore's falls smoothly over the steps after warmup, as PaddleNLP's cosine.",
    },
    "eta_min": _num(
        minimum=0,
        maximum=10,
        default=0.0,
        description="The learning rate the cosine schedule ends at (PaddleNLP's ends at 0); "
        "only with lr_scheduler_type cosine or lr_scheduler_name.",
        **{PADDLEMIX: "CosineDecayWithWarmup's final rate; 1e-5 when the file leaves it out."},
    ),
    "warmup_start_lr": _num(
        minimum=0,
        maximum=10,
        default=0.0,
        description="The learning rate warmup starts from, rising linearly to learning_rate over "
        "warmup_steps (or warmup_ratio of the steps; PaddleNLP's starts from 0); only with "
        "lr_scheduler_type cosine or lr_scheduler_name. With no warmup it has no effect.",
        **{
            PADDLEMIX: "CosineDecayWithWarmup's rate at the first warmup step; 1e-6 when the "
            "file leaves it out; no effect without warmup_steps (its BLIP-2 files have none)."
        },
    ),
    "logging_steps": _int(1, _BIG, default=10),
    "logging_dir": {
        "type": "string",
        "minLength": 1,
        "description": "Where report_to's loggers write (relative to the config file's folder); "
        "default: runs/<time>_<host> inside output_dir.",
    },
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
    "disable_tqdm": {
        **_BOOL,
        "description": "true: no progress bar. mixcore draws one only when stderr is a terminal "
        "(PaddleNLP's bars are always off).",
    },
    "resume_from_checkpoint": {
        "type": ["string", "boolean", "null"],
        "description": "A checkpoint folder to continue from, or true for the latest in output_dir.",
    },
    "load_best_model_at_end": {**_BOOL, "default": False},
    "metric_for_best_model": {"type": "string"},
    "greater_is_better": _BOOL,
    "report_to": {
        "default": ["none"],
        "description": "Loggers the run's metrics also go to: visualdl or tensorboard (event "
        "files in logging_dir), wandb; each needs its package installed (validation says which).",
        PADDLEMIX: "PaddleNLP's TrainingArguments, which PaddleMIX uses, default to visualdl; "
        "mixcore's default is none.",
        "anyOf": [
            {"enum": ["none", "visualdl", "wandb", "tensorboard"]},
            {"type": "array", "items": {"enum": ["none", "visualdl", "wandb", "tensorboard"]}},
        ],
    },
    "skip_memory_metrics": _BOOL,
    "device": {
        "enum": list(DEVICES),
        "description": "Where the run trains: cpu, gpu, xpu or npu (Paddle's paddle.set_device). "
        "Absent: Paddle's own choice, the GPU on a GPU build. `mixcore train` refuses a device "
        "this Paddle build has not got; `validate` and `train --dry-run` check the config, not "
        "the machine.",
        PADDLEMIX: "Passed to paddle.set_device before the model is built; PaddleNLP's default "
        "is gpu, so a PaddleMIX run without it fails on a CPU build. PaddleNLP's Trainer itself "
        "reads it only for flatten_param_grads (npu).",
    },
    "benchmark": {
        **_BOOL,
        "default": False,
        "description": "Report throughput instead of saving checkpoints.",
    },
    "eval_with_do_generation": {
        **_BOOL,
        "const": False,
        "description": "Only false: evaluation during training measures the loss on dataset.eval.",
        REFUSED: "mixcore evaluates by loss during training; to score generated answers run "
        "`mixcore infer --model CHECKPOINT --data FILE` after training",
        PADDLEMIX: "Declared by its DataArgument, read by no code; its BLIP-2 trainer always "
        "evaluates by generating captions.",
    },
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
    "tensor_parallel_degree": {
        **_DEGREE,
        "description": "Cards each layer's weights are split over (the model plugin's plan); 1 "
        "or -1 mean no splitting. Needs GPUs (MIXCORE_CPU_TENSOR_PARALLEL=1 allows CPUs, over "
        "gloo, to check a layout).",
    },
    "pipeline_parallel_degree": {
        **_DEGREE,
        "description": "Cards the layers are split over in stages (the model plugin's plan); 1 "
        "or -1 mean no splitting. Not trained yet: validation refuses a degree above 1.",
    },
    "sharding_parallel_degree": {
        **_DEGREE,
        "description": "Ranks the sharding of `sharding` spans; -1: every data-parallel rank. "
        "The data-parallel degree is world size / (tensor x pipeline x sharding).",
    },
    "sharding": {
        "type": "string",
        "pattern": r"^\s*((stage[123]|offload)(\s+(stage[123]|offload))*)?\s*$",
        "description": "ZeRO-style sharding: 'stage1', 'stage2', 'stage3', optionally "
        "'offload'; over sharding_parallel_degree cards (absent or -1: every data-parallel card). "
        "stage1 (optimizer states) also runs on CPUs over gloo; stage2 and stage3 over several "
        "ranks need GPUs.",
    },
    # The rest of PaddleNLP's TrainingArguments, accepted with their meaning or refused.
    **TRAINER_PROPERTIES,
}


#: Keys of PaddleMIX dataset entries mixcore refuses, each with its reason. A dataset kind whose
#: options define a key of the same name keeps its own meaning.
REFUSED_ENTRY_KEYS: dict[str, dict[str, Any]] = {
    "splits": {
        "not": {},
        "description": "A split of a dataset PaddleMIX downloads; mixcore reads the files "
        "data_files names.",
        REFUSED: "PaddleMIX's splits picks a split of a dataset it downloads (coco_caption "
        "'train' is coco_karpathy_train.json of its COCO copy), and mixcore never downloads: put "
        "the split's annotation file on disk and name it in data_files (with image_root, where "
        "the kind has it, the folder its image paths are relative to)",
        PADDLEMIX: "With no data_files, the split(s) of the dataset it downloads into "
        "~/.paddlemix/datasets (coco_caption: the Karpathy train, val or test list of COCO; "
        "coco_vqa: train is its vqa_train.json and vqa_val.json, val its vqa_val_eval.json); "
        "with data_files, one split name per file.",
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

    PaddleMIX's ``lr_scheduler_name``, when the config has no ``lr_scheduler_type``, gives it
    (:data:`PADDLEMIX_SCHEDULERS`), so the Trainer reads one field.
    """
    out = dict(config)
    for key, schema in CORE_PROPERTIES.items():
        if key not in out and "default" in schema:
            out[key] = copy.deepcopy(schema["default"])
    meant = PADDLEMIX_SCHEDULERS.get(str(out.get("lr_scheduler_name")))
    if "lr_scheduler_type" not in out and meant is not None:
        out["lr_scheduler_type"] = meant
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
    """One dataset kind's entry schema: its own options plus the core entry keys, nothing else
    (PaddleMIX's entry keys mixcore refuses are there to be refused with their reason)."""
    merged = copy.deepcopy(options_schema)
    merged["type"] = "object"
    merged["properties"] = {
        **copy.deepcopy(REFUSED_ENTRY_KEYS),
        **DATASET_ENTRY_SCHEMA,
        **merged.get("properties", {}),
    }
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
