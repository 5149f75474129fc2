"""The rest of PaddleNLP's ``TrainingArguments``: every field the core schema does not already
describe, accepted with PaddleNLP's type and meaning or refused with the reason.

An accepted field is handed to ``TrainingArguments`` as it is (``mixcore.train.run``
passes every config key that is a field of it), so it means what PaddleNLP 2.8.1 says it means.
A refused field is one mixcore cannot honour: it conflicts with mixcore's own data loading or
checkpoints, or no model plugin has what it needs. ``tests/core/test_trainer_fields.py``
enumerates the installed ``TrainingArguments`` and fails on a field that is neither.
"""

from __future__ import annotations

from typing import Any

from mixcore.issues import REFUSED

_BOOL: dict[str, Any] = {"type": "boolean"}
_TEXT: dict[str, Any] = {"type": "string"}
_NAMES: dict[str, Any] = {"type": ["array", "null"], "items": {"type": "string", "minLength": 1}}


def _refused(reason: str, description: str) -> dict[str, Any]:
    return {"not": {}, "description": description, REFUSED: reason}


def _only(value: Any, reason: str, description: str) -> dict[str, Any]:
    """A field accepted only at ``value`` (the one mixcore can honour)."""
    return {"const": value, "description": description, REFUSED: reason}


#: Accepted as PaddleNLP defines them; each is passed through to ``TrainingArguments``.
ACCEPTED: dict[str, Any] = {
    "prediction_loss_only": {
        **_BOOL,
        "description": "PaddleNLP: evaluation returns the loss only (mixcore evaluates by loss).",
    },
    "num_cycles": {
        "type": "number",
        "exclusiveMinimum": 0,
        "description": "PaddleNLP: waves of the cosine schedule (default 0.5, one half wave).",
    },
    "lr_end": {
        "type": "number",
        "minimum": 0,
        "description": "PaddleNLP: the rate the polynomial schedule ends at (default 1e-7).",
    },
    "power": {
        "type": "number",
        "exclusiveMinimum": 0,
        "description": "PaddleNLP: the power of the polynomial schedule (default 1.0).",
    },
    "logging_strategy": {
        "enum": ["no", "steps", "epoch"],
        "description": "PaddleNLP: when the train loss is logged (default steps).",
    },
    "log_on_each_node": {**_BOOL, "description": "PaddleNLP: multi-node runs log on every node."},
    "save_on_each_node": {
        **_BOOL,
        "description": "PaddleNLP: multi-node runs save on every node, not only the main one.",
    },
    "amp_master_grad": {
        **_BOOL,
        "description": "PaddleNLP: with fp16_opt_level O2, float32 gradients for clipping and "
        "the update.",
    },
    "bf16_full_eval": {**_BOOL, "description": "PaddleNLP: evaluate wholly in bfloat16."},
    "fp16_full_eval": {**_BOOL, "description": "PaddleNLP: evaluate wholly in float16."},
    "amp_custom_black_list": {
        **_NAMES,
        "description": "PaddleNLP: ops kept in float32 under mixed precision.",
    },
    "amp_custom_white_list": {
        **_NAMES,
        "description": "PaddleNLP: ops run in half precision under mixed precision.",
    },
    "scale_loss": {
        "type": "number",
        "exclusiveMinimum": 0,
        "description": "PaddleNLP: the initial loss scale of fp16 (default 32768).",
    },
    "data_parallel_config": {
        **_TEXT,
        "description": "PaddleNLP: space-separated data-parallel options (enable_allreduce_avg_"
        "in_gradinent_scale, gradient_sync_after_accumulate).",
    },
    "tensor_parallel_config": {
        **_TEXT,
        "description": "PaddleNLP: space-separated tensor-parallel options.",
    },
    "pipeline_parallel_config": {
        **_TEXT,
        "description": "PaddleNLP: space-separated pipeline-parallel options.",
    },
    "sharding_parallel_config": {
        **_TEXT,
        "description": "PaddleNLP: space-separated sharding options.",
    },
    "hybrid_parallel_topo_order": {
        "enum": ["pp_first", "sharding_first", None],
        "description": "PaddleNLP: the order of the communication groups (default pp_first).",
    },
    "minimum_eval_times": {
        "type": ["integer", "null"],
        "minimum": 1,
        "description": "PaddleNLP: evaluate at least this many times (shortens eval_steps).",
    },
    "dataloader_drop_last": {
        **_BOOL,
        "description": "PaddleNLP: leave out the last incomplete batch (mixcore's sampler "
        "honours it).",
    },
    "max_evaluate_steps": {
        "type": "integer",
        "minimum": -1,
        "description": "PaddleNLP: at most this many evaluation steps (-1: all).",
    },
    "run_name": {**_TEXT, "description": "PaddleNLP: a name of the run, for the loggers."},
    "ignore_data_skip": {
        **_BOOL,
        "description": "PaddleNLP: on resume, start the data from the beginning instead of "
        "skipping the batches already trained.",
    },
    "optim": {
        "enum": ["adamw", "adafactor"],
        "description": "PaddleNLP: the optimizer (default adamw).",
    },
    "wandb_api_key": {
        "type": ["string", "null"],
        "description": "PaddleNLP: the Weights & Biases key (better: the WANDB_API_KEY "
        "environment variable, which keeps it out of the config).",
    },
    "flatten_param_grads": {
        **_BOOL,
        "description": "PaddleNLP: flattened parameter gradients in the optimizer (NPU only).",
    },
    "skip_profile_timer": {
        **_BOOL,
        "description": "PaddleNLP: false logs the framework's timers.",
    },
    "unified_checkpoint_config": {
        **_TEXT,
        "description": "PaddleNLP: space-separated options of the unified checkpoint "
        "(skip_save_model_weight, master_weight_compatible, async_save, ...).",
    },
    "ignore_load_lr_and_optim": {
        **_BOOL,
        "description": "PaddleNLP: on resume, do not load the optimizer and scheduler states.",
    },
    "ignore_save_lr_and_optim": {
        **_BOOL,
        "description": "PaddleNLP: checkpoints leave out the optimizer and scheduler states "
        "(a resume then restarts them).",
    },
    "force_reshard_pp": {
        **_BOOL,
        "description": "PaddleNLP: reshard pipeline stages on resume even at the same degree.",
    },
    "lazy_data_processing": {
        **_BOOL,
        "description": "PaddleNLP: process data lazily; mixcore always preprocesses each sample "
        "when its batch is loaded, so it has no effect.",
    },
}

#: Refused with what to do instead.
REFUSED_FIELDS: dict[str, Any] = {
    "do_export": _refused(
        "mixcore train does not export an inference model; after training run `mixcore "
        "export --model OUTPUT_DIR --output DIR` (for a LoRA run: `--lora OUTPUT_DIR`)",
        "PaddleNLP: export an inference model after training.",
    ),
    "no_cuda": _refused(
        "PaddleNLP declares it and reads it nowhere; use device 'cpu' to train on the CPU",
        "PaddleNLP: do not use CUDA (read by no PaddleNLP code).",
    ),
    "sharding_degree": _refused(
        "PaddleNLP deprecated it; use sharding_parallel_degree",
        "PaddleNLP: the former name of sharding_parallel_degree.",
    ),
    "save_sharded_model": _refused(
        "mixcore saves unified safetensors checkpoints, which every parallel layout loads; "
        "sharded stage1 files are not one of them",
        "PaddleNLP: each sharding rank saves its part of the model.",
    ),
    "load_sharded_model": _refused(
        "mixcore saves and resumes unified safetensors checkpoints, not sharded stage1 files",
        "PaddleNLP: load a model saved with save_sharded_model.",
    ),
    "sep_parallel_degree": _refused(
        "no model plugin gives a sequence-parallel plan; use tensor_parallel_degree or sharding",
        "PaddleNLP: sequence parallelism over this many cards.",
    ),
    "local_rank": _refused(
        "set by `python -m paddle.distributed.launch` for each process, never in a config",
        "PaddleNLP: the rank of this process on its node.",
    ),
    "past_index": _refused(
        "mixcore's models return no past state for the Trainer to feed back",
        "PaddleNLP: which model output is the past state fed to the next step.",
    ),
    "remove_unused_columns": _refused(
        "mixcore's collators build exactly the model's inputs; there are no columns to remove",
        "PaddleNLP: drop dataset columns the model's forward does not take.",
    ),
    "label_names": _refused(
        "mixcore's collators always name the labels 'labels'",
        "PaddleNLP: the input keys that are labels.",
    ),
    "distributed_dataloader": _refused(
        "mixcore's sampler gives each data-parallel rank its own batches; PaddleNLP's "
        "distributed data loader would replace it (and its resumable order)",
        "PaddleNLP: one rank reads the data and sends it to the others.",
    ),
    "unified_checkpoint": _only(
        True,
        "mixcore always saves unified safetensors checkpoints, which it resumes from exactly",
        "Only true: checkpoints are unified safetensors.",
    ),
    "to_static": _refused(
        "mixcore's models train in dynamic mode; their forward is not written for conversion "
        "to a static graph",
        "PaddleNLP: train a static graph converted from the model.",
    ),
    "enable_auto_parallel": _refused(
        "mixcore's models give tensor-parallel plans for the manual hybrid-parallel mode, not "
        "auto-parallel placements",
        "PaddleNLP: auto-parallel training.",
    ),
    "use_expert_parallel": _refused(
        "no mixcore model is a mixture of experts",
        "PaddleNLP: expert parallelism for mixture-of-experts models.",
    ),
}

TRAINER_PROPERTIES: dict[str, Any] = {**ACCEPTED, **REFUSED_FIELDS}
