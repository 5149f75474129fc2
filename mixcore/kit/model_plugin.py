"""One model, one object: write a model plugin's dispatch hooks without the name check in each.

Subclass :class:`ModelPlugin`, set the class attributes that describe the model, and override
the work methods the model supports. The class turns each overridden work method into an ordinary
pluggy hook implementation that answers only for ``name`` (and returns None, letting other
plugins answer, for every other model). Methods left alone are not hooks at all, so ``mixcore
plugins list`` shows what the model really implements and a claimed capability without its
hooks is caught when the plugin loads. The entry point names an *instance*::

    [project.entry-points."mixcore.plugins"]
    tiny_llava = "mixcore_tiny_llava.plugin:plugin"     # plugin = TinyLlava()

========================  ===========================  ======================================
work method               hook                         called with
========================  ===========================  ======================================
``load``                  ``load_model``               ``(source, options)``
``check_options``         ``check_model_options``      ``(source, options)``
``encode``                ``preprocess_sample``        ``(sample, bundle, max_length)``
``length``                ``sample_length``            ``(sample, bundle)``
``collate``               ``collate_batch``            ``(features, bundle)``
``answer``                ``generate``                 ``(bundle, prompts, max_new_tokens)``
``save``                  ``save_model``               ``(bundle, folder)``
``lora_targets``          ``lora_target_modules``      ``(bundle)``
``plan``                  ``parallel_plan``            ``(bundle)``
``export``                ``export_model``             ``(bundle, folder, max_length)``
``processing``            ``load_processing``          ``(folder)``
========================  ===========================  ======================================

Each method receives what its hook receives, less ``model_name``, and returns what the hook
returns (see :mod:`mixcore.api.hookspecs`). ``answer`` is called with ``num_beams=`` only when
beam search is asked for (more than one beam); a model whose ``answer`` takes no ``num_beams``
decodes greedily, and asking it for beams is a clear usage error.

Stock work methods, for a model whose ``load`` puts a
:class:`~mixcore.kit.conversation.ConversationEncoder` in ``bundle.extras["encoder"]`` and an
:class:`~mixcore.kit.images.ImagePreprocessor` (or None) in ``bundle.processor``: assign them in
the class body (``encode = encode_conversation``) and they become hooks like written ones;
:func:`save_bundle` writes the bundle of any PaddleNLP model as
:func:`mixcore.kit.checkpoints.load_checkpoint` reads it back.
:func:`object_schema` and :data:`RANDOM_INIT_OPTION` shorten the usual ``options_schema``.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from mixcore.api.errors import UsageError
from mixcore.api.markers import hookimpl

__all__ = [
    "DTYPE_OPTION",
    "RANDOM_INIT_OPTION",
    "ModelPlugin",
    "component_of",
    "component_pattern",
    "conversation_length",
    "encode_conversation",
    "freeze_components",
    "object_schema",
    "pad_collate",
    "requested_dtype",
    "save_bundle",
]

#: The ``random_init`` model option of a preset that has no published weights.
RANDOM_INIT_OPTION: dict[str, Any] = {
    "type": "boolean",
    "default": False,
    "description": (
        "Initialise the preset randomly (it has no published weights). Off by default so a "
        "missing checkpoint is an error, not a silently untrained model."
    ),
}


#: The ``dtype`` model option of a plugin that loads checkpoints (see :func:`requested_dtype`).
DTYPE_OPTION: dict[str, Any] = {
    "enum": ["auto", "float32", "bfloat16", "float16"],
    "default": "auto",
    "description": (
        "Parameter dtype of a loaded checkpoint. auto: the checkpoint's torch_dtype where the "
        "device computes in it (bfloat16 on Ampere or newer GPUs), else float32."
    ),
}


def requested_dtype(options: dict[str, Any]) -> str | None:
    """The dtype the ``dtype`` option asks for, None for ``auto`` (the checkpoint decides)."""
    dtype = options.get("dtype", "auto")
    return None if dtype == "auto" else dtype


def component_pattern(prefixes: Sequence[str]) -> str:
    """A regex (for ``re.match``) of the parameter and sublayer names under any of
    ``prefixes``, also behind a wrapper's prefix (LoRA's ``model.``)."""
    alternatives = "|".join(re.escape(p) for p in prefixes)
    return rf"(.*\.)?({alternatives})(\.|$)"


def component_of(name: str, components: dict[str, Sequence[str]]) -> str | None:
    """The component whose prefixes ``name`` (a parameter name) starts with, or None."""
    for component, prefixes in components.items():
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return component
    return None


def freeze_components(
    model: Any, components: dict[str, Sequence[str]], frozen: Sequence[str]
) -> None:
    """Stop the gradients of every parameter of the ``frozen`` components."""
    for name, param in model.named_parameters():
        if component_of(name, components) in frozen:
            param.stop_gradient = True


def object_schema(**properties: dict[str, Any]) -> dict[str, Any]:
    """The JSON Schema of an options object with these properties and no others."""
    return {"type": "object", "additionalProperties": False, "properties": properties}


# One routing function per hook, with the hook's exact parameter names (pluggy matches them).


def _load_model(self: Any, model_name: str, source: str, options: dict[str, Any]) -> Any:
    return self.load(source, options) if model_name == self.name else None


def _check_model_options(self: Any, model_name: str, source: str, options: dict[str, Any]) -> Any:
    return self.check_options(source, options) if model_name == self.name else None


def _preprocess_sample(
    self: Any, model_name: str, sample: Any, bundle: Any, max_length: int
) -> Any:
    return self.encode(sample, bundle, max_length) if model_name == self.name else None


def _sample_length(self: Any, model_name: str, sample: Any, bundle: Any) -> Any:
    return self.length(sample, bundle) if model_name == self.name else None


def _collate_batch(self: Any, model_name: str, features: Sequence[Any], bundle: Any) -> Any:
    return self.collate(features, bundle) if model_name == self.name else None


def _generate(
    self: Any,
    model_name: str,
    bundle: Any,
    prompts: Sequence[Any],
    max_new_tokens: int,
    num_beams: int,
) -> Any:
    if model_name != self.name:
        return None
    if num_beams > 1:
        if "num_beams" not in inspect.signature(self.answer).parameters:
            raise UsageError(f"model {self.name!r} decodes greedily only: use num_beams 1")
        return self.answer(bundle, prompts, max_new_tokens, num_beams=num_beams)
    return self.answer(bundle, prompts, max_new_tokens)


def _save_model(self: Any, model_name: str, bundle: Any, folder: str) -> Any:
    return self.save(bundle, folder) if model_name == self.name else None


def _lora_target_modules(self: Any, model_name: str, bundle: Any) -> Any:
    return self.lora_targets(bundle) if model_name == self.name else None


def _parallel_plan(self: Any, model_name: str, bundle: Any) -> Any:
    return self.plan(bundle) if model_name == self.name else None


def _export_model(
    self: Any, model_name: str, bundle: Any, folder: str, max_length: int | None
) -> Any:
    return self.export(bundle, folder, max_length) if model_name == self.name else None


def _load_processing(self: Any, model_name: str, folder: str) -> Any:
    return self.processing(folder) if model_name == self.name else None


#: work method -> (hook name, the routing function that becomes the hook implementation).
WORK_METHODS: dict[str, tuple[str, Callable[..., Any]]] = {
    "load": ("load_model", _load_model),
    "check_options": ("check_model_options", _check_model_options),
    "encode": ("preprocess_sample", _preprocess_sample),
    "length": ("sample_length", _sample_length),
    "collate": ("collate_batch", _collate_batch),
    "answer": ("generate", _generate),
    "save": ("save_model", _save_model),
    "lora_targets": ("lora_target_modules", _lora_target_modules),
    "plan": ("parallel_plan", _parallel_plan),
    "export": ("export_model", _export_model),
    "processing": ("load_processing", _load_processing),
}


class ModelPlugin:
    """Base class of a plugin that brings one model (see the module docstring).

    Class attributes: ``name`` (the registered model name), ``description``,
    ``options_schema`` (JSON Schema of ``model_options``), ``capabilities`` (see
    :data:`mixcore.api.CAPABILITIES`), ``aliases`` (preset names ``model_name_or_path`` may
    use) and ``model_types`` (``config.json`` ``model_type`` values of checkpoint folders this
    model loads). ``packed_attention`` tells :func:`pad_collate` what a packed batch carries:
    ``"mask"`` (the dense block-diagonal ``[batch, 1, len, len]`` mask) or ``"segments"``
    (``segment_ids``, for a model whose forward attends per segment with
    :mod:`mixcore.kit.nn.segment_attention`). ``manifest`` is made from ``description``.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    options_schema: ClassVar[dict[str, Any]] = {"type": "object", "additionalProperties": False}
    capabilities: ClassVar[dict[str, bool]] = {}
    aliases: ClassVar[Sequence[str]] = ()
    model_types: ClassVar[Sequence[str]] = ()
    packed_attention: ClassVar[str] = "mask"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for method, (hook, route) in WORK_METHODS.items():
            if any(method in vars(klass) for klass in cls.__mro__ if klass is not ModelPlugin):
                setattr(cls, hook, hookimpl(route))

    @property
    def manifest(self) -> dict[str, Any]:
        return {"api_version": 1, "description": self.description or self.name}

    @hookimpl
    def register_models(self, register: Callable[..., None]) -> None:
        register(
            name=self.name,
            description=self.description or self.name,
            options_schema=self.options_schema,
            capabilities=dict(self.capabilities),
            aliases=list(self.aliases),
            model_types=list(self.model_types),
        )


# --- stock work methods ----------------------------------------------------------------------


def encode_conversation(self: Any, sample: Any, bundle: Any, max_length: int) -> dict[str, Any]:
    """Stock ``encode``: ``input_ids`` and pre-shifted ``labels`` from
    ``bundle.extras["encoder"]``, and (with a ``bundle.processor``) ``images`` ``[n, 3, H, W]``:
    the sample's images whose spans survived truncation, loaded safely and preprocessed."""
    encoded = bundle.extras["encoder"].encode(sample, max_length)
    features = encoded.arrays()
    if bundle.processor is not None:
        features["images"] = bundle.processor.sample_images(sample, len(encoded.image_spans))
    return features


def conversation_length(self: Any, sample: Any, bundle: Any) -> int:
    """Stock ``length``: ``bundle.extras["encoder"]``'s untruncated length; reads no image."""
    return bundle.extras["encoder"].length(sample)


def pad_collate(self: Any, features: Sequence[Any], bundle: Any) -> dict[str, Any]:
    """Stock ``collate``: :func:`mixcore.kit.collation.pad_batch` with the tokenizer's pad id
    (packed features get their position ids and, by the plugin's ``packed_attention``, the
    block-diagonal mask or their ``segment_ids``; images concatenated)."""
    from mixcore.kit.collation import pad_batch

    return pad_batch(
        features,
        bundle.tokenizer.pad_token_id,
        packed_attention=getattr(self, "packed_attention", "mask"),
    )


def save_bundle(self: Any, bundle: Any, folder: str) -> str:
    """Stock ``save``: :func:`mixcore.kit.checkpoints.save_checkpoint` of ``bundle.model`` with
    its tokenizer and processor, recorded as written by the model ``self.name``."""
    from mixcore.kit.checkpoints import save_checkpoint

    save_checkpoint(
        folder,
        bundle.model,
        plugin=self.name,
        tokenizer=bundle.tokenizer,
        processor=bundle.processor,
    )
    return folder
