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
========================  ===========================  ======================================

Each method receives what its hook receives, less ``model_name``, and returns what the hook
returns (see :mod:`mixcore.api.hookspecs`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from mixcore.api.markers import hookimpl

__all__ = ["ModelPlugin"]

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
    self: Any, model_name: str, bundle: Any, prompts: Sequence[Any], max_new_tokens: int
) -> Any:
    return self.answer(bundle, prompts, max_new_tokens) if model_name == self.name else None


def _save_model(self: Any, model_name: str, bundle: Any, folder: str) -> Any:
    return self.save(bundle, folder) if model_name == self.name else None


def _lora_target_modules(self: Any, model_name: str, bundle: Any) -> Any:
    return self.lora_targets(bundle) if model_name == self.name else None


def _parallel_plan(self: Any, model_name: str, bundle: Any) -> Any:
    return self.plan(bundle) if model_name == self.name else None


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
}


class ModelPlugin:
    """Base class of a plugin that brings one model (see the module docstring).

    Class attributes: ``name`` (the registered model name), ``description``,
    ``options_schema`` (JSON Schema of ``model_options``), ``capabilities`` (see
    :data:`mixcore.api.CAPABILITIES`), ``aliases`` (preset names ``model_name_or_path`` may
    use) and ``model_types`` (``config.json`` ``model_type`` values of checkpoint folders this
    model loads). ``manifest`` is made from ``description``.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    options_schema: ClassVar[dict[str, Any]] = {"type": "object", "additionalProperties": False}
    capabilities: ClassVar[dict[str, bool]] = {}
    aliases: ClassVar[Sequence[str]] = ()
    model_types: ClassVar[Sequence[str]] = ()

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
