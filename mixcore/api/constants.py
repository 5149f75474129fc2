"""Constants both sides of the plugin boundary agree on."""

from __future__ import annotations

from typing import Any

#: Label value of a token that carries no loss (PaddleNLP's and PyTorch's cross-entropy default).
#: Features carry labels already shifted to the next token, so the last label of a sample is
#: always this value and no label ever points across a packed sample's boundary.
IGNORE_INDEX = -100

#: What a model entry may claim in its ``capabilities`` map.
CAPABILITIES = (
    "inference",
    "sft",
    "pretrain",
    "lora",
    "packing",
    "tensor_parallel",
    "pipeline_parallel",
    "deploy",
)

#: Keys of a ``dataset.train[i]`` / ``dataset.eval[i]`` entry that the core reads whatever the
#: dataset kind, with their JSON Schema. A dataset plugin's option schema must not redefine them.
#: ``build_dataset`` always receives ``label`` and ``on_bad_sample`` filled in (``name#index`` and
#: the config's top-level ``on_bad_sample`` when the entry leaves them out).
DATASET_ENTRY_SCHEMA: dict[str, dict[str, Any]] = {
    "name": {"type": "string", "description": "The registered dataset kind, e.g. chatml_dataset."},
    "weight": {
        "type": "number",
        "exclusiveMinimum": 0,
        "description": "Share of the mixture drawn from this source (normalised over all sources).",
    },
    "num_samples": {
        "type": "integer",
        "minimum": 1,
        "maximum": 2**31 - 1,
        "description": "Exact number of samples drawn from this source.",
    },
    "label": {
        "type": "string",
        "minLength": 1,
        "description": "Name used in mixture reports and per-source loss; defaults to name#index.",
    },
    "on_bad_sample": {
        "enum": ["error", "skip"],
        "description": "Override the config's on_bad_sample for this source.",
    },
    "streaming": {
        "type": "boolean",
        "description": "Read this dataset.train source shard by shard while training (an "
        "iterable stream mixed by weight, resumable mid-shard) instead of all of it up front; "
        "needs max_steps. Either every dataset.train entry streams or none does.",
    },
}

#: Attribute a dataset returned by ``build_dataset`` may carry: the records it left out under
#: ``on_bad_sample: skip``, as ``(source file, record index, reason)`` tuples, which the core
#: reports with the run. Absent means nothing was skipped.
SKIPPED_ATTRIBUTE = "skipped"

#: Key of a checkpoint folder's ``config.json`` under which mixcore records which plugin and model
#: wrote the folder (``{"plugin": ..., "model": ..., "version": ...}``); the registry resolves a
#: folder by it before trying ``model_type``. :func:`mixcore.kit.checkpoints.write_model_record`
#: writes it.
MODEL_RECORD_KEY = "mixcore"

#: Key of a model's output (the dict-like ``ModelOutput`` its ``forward`` returns) under which it
#: may report the parts of its loss, ``{name: scalar tensor}`` (BLIP-2's stage-1 pretraining:
#: ``itc``, ``itm``, ``itg``). The trainer averages each over the logging interval and logs it as
#: ``loss/<name>`` beside the total, in the progress lines and the loss-curve picture. A model
#: whose config lists the key in ``keys_to_ignore_at_inference`` keeps it out of evaluation
#: outputs.
LOSS_TERMS_KEY = "loss_terms"
