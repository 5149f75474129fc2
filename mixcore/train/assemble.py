"""Assemble a run from a prepared config: freezing, LoRA, datasets, the parameter report.

The config is one :func:`mixcore.config.prepare_config` returned (checked, defaults filled in).
The model itself comes from :func:`mixcore.models.load_model_bundle`. Everything here goes
through the registry's hooks; no model or dataset is known by name.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mixcore.api.errors import MixcoreError, PluginError
from mixcore.api.records import ModelBundle, ShardedSource
from mixcore.config.validation import entry_files
from mixcore.registry import ModelEntry, Registry
from mixcore.train.data import SourceSpec
from mixcore.train.data_cache import DataCache
from mixcore.train.source_reading import store_source

log = logging.getLogger(__name__)


class TrainError(MixcoreError):
    """The run cannot be assembled as configured."""


def apply_freezing(model: Any, include: Sequence[str], exclude: Sequence[str]) -> list[str]:
    """Freeze parameters whose name matches an ``include`` glob and no ``exclude`` glob.

    Globs use ``fnmatch`` against full parameter names such as ``visual.transformer.resblocks.0
    .attn.in_proj.weight``: ``*visual*`` freezes the whole vision tower, and an exclude like
    ``*visual.attn_pool*`` keeps the resampler trainable inside it. Returns the frozen names.
    """
    frozen = []
    for name, param in model.named_parameters():
        if any(fnmatch.fnmatchcase(name, p) for p in include) and not any(
            fnmatch.fnmatchcase(name, p) for p in exclude
        ):
            param.stop_gradient = True
            frozen.append(name)
    for pattern in include:
        if not any(fnmatch.fnmatchcase(n, pattern) for n, _ in model.named_parameters()):
            raise TrainError(f"freeze_include pattern {pattern!r} matches no parameter")
    return frozen


def apply_lora(
    registry: Registry, entry: ModelEntry, bundle: ModelBundle, config: dict[str, Any]
) -> tuple[Any, list[str]]:
    """Wrap the model with ``paddlenlp.peft.LoRAModel``; return it and the target patterns.

    Targets come from the config's ``lora_target_modules`` or the plugin's
    ``lora_target_modules`` hook. Parameters left trainable by the freeze patterns of a model
    that LoRA does not adapt (``freeze_exclude`` of a frozen tower, say the resampler) stay fully
    trainable beside the LoRA weights.
    """
    import paddle
    from paddlenlp.peft import LoRAConfig, LoRAModel

    targets = config.get("lora_target_modules") or registry.hook.lora_target_modules(
        model_name=entry.name, bundle=bundle
    )
    if not targets:
        raise TrainError(f"model {entry.name!r} names no LoRA targets; set lora_target_modules")
    names = [n for n, _ in bundle.model.named_sublayers()]
    for pattern in targets:
        if not any(re.fullmatch(pattern, n) for n in names):
            raise TrainError(f"lora_target_modules pattern {pattern!r} matches no layer")
    trainable = sorted(_trainable_modules(bundle.model, config, targets))
    lora_config = LoRAConfig(
        target_modules=list(targets),
        trainable_modules=trainable or None,
        r=config["lora_rank"],
        lora_alpha=config["lora_alpha"],
        lora_dropout=config["lora_dropout"],
        dtype="float32",
    )
    # LoRA's A matrices are random: seed right before wrapping so runs are reproducible.
    paddle.seed(config["seed"])
    model = LoRAModel(bundle.model, lora_config)
    model.mark_only_lora_as_trainable()
    return model, list(targets)


def _trainable_modules(model: Any, config: dict[str, Any], targets: Sequence[str]) -> set[str]:
    """Parameters ``freeze_exclude`` keeps trainable, outside LoRA's targets, as exact regexes.

    ``LoRAConfig.trainable_modules`` is matched (``re.fullmatch``) against parameter names.
    """
    keep = config["freeze_exclude"]
    out = set()
    for name, _ in model.named_parameters():
        if any(fnmatch.fnmatchcase(name, p) for p in keep):
            owner = name.rsplit(".", 1)[0]
            if not any(re.fullmatch(t, owner) for t in targets):
                out.add(re.escape(name))
    return out


def parameter_report(model: Any, components: dict[str, str]) -> list[tuple[str, int, int]]:
    """(component, trainable, frozen) parameter counts, plus an ``other`` row when needed."""
    rows: dict[str, list[int]] = {label: [0, 0] for label in components}
    compiled = {label: re.compile(pattern) for label, pattern in components.items()}
    for name, param in model.named_parameters():
        plain = name.removeprefix("model.")  # LoRAModel prefixes the wrapped model's names
        label = next((lab for lab, rx in compiled.items() if rx.match(plain)), "other")
        counts = rows.setdefault(label, [0, 0])
        counts[0 if not param.stop_gradient else 1] += int(param.numel())
    return [(label, t, f) for label, (t, f) in rows.items() if t or f]


def build_entry(registry: Registry, kind: Any, options: dict[str, Any], base_dir: Path) -> Any:
    """What the dataset plugin's ``build_dataset`` hook builds for one entry of kind ``kind``."""
    built = registry.hook.build_dataset(
        dataset_name=kind.name, options=options, base_dir=str(base_dir)
    )
    if built is None:
        raise PluginError(
            f"dataset {kind.name!r} is registered by plugin {kind.plugin!r} but no plugin built "
            "it (its build_dataset hook returned nothing)"
        )
    return built


def build_sources(
    registry: Registry,
    config: dict[str, Any],
    split: str,
    base_dir: Path,
    cache: DataCache | None = None,
    report: Callable[[str], None] = print,
) -> list[SourceSpec]:
    """Build every dataset entry of ``split`` through its plugin's ``build_dataset`` hook, or
    read it from ``cache`` when an earlier run built the same entry from the same files."""
    sources = []
    for i, entry in enumerate(config["dataset"].get(split, [])):
        options = dict(entry)  # label and on_bad_sample are filled in (apply_defaults)
        kind = registry.dataset(entry["name"])
        key = _cache_key(registry, cache, kind, options, base_dir)
        samples = cache.open_source(key) if cache is not None and key is not None else None
        if samples is not None:
            report(f"{options['label']}: {len(samples):,} checked samples from the data cache")
        else:
            cached = cache is not None and key is not None
            # Into the cache a source is read shard by shard where its plugin can, so that
            # building it holds one record at a time, not every sample.
            samples = build_entry(
                registry, kind, {**options, "streaming": True} if cached else options, base_dir
            )
            if cached and isinstance(samples, ShardedSource):
                stored = store_source(
                    cache, key, samples, options["on_bad_sample"], options["label"]
                )
                if stored is None:  # the cache cannot be written: built whole after all
                    samples, key = build_entry(registry, kind, options, base_dir), None
                else:
                    samples = stored
            elif cached and len(samples):
                samples, key = _store(cache, key, samples, options["label"])
        if len(samples) == 0:
            raise TrainError(f"dataset.{split}[{i}] ({options['label']}) has no samples")
        sources.append(
            SourceSpec(
                label=options["label"],
                samples=samples,
                weight=entry.get("weight"),
                num_samples=entry.get("num_samples"),
                skipped=list(getattr(samples, "skipped", [])),
                on_bad_sample=options["on_bad_sample"],
                cache_key=key,
            )
        )
    labels = [s.label for s in sources]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise TrainError(
            f"dataset.{split} has two sources labelled {duplicates[0]!r}; give each a unique label"
        )
    return sources


#: Entry fields that choose how many samples a source gives, not which: not part of its key.
_MIXTURE_FIELDS = ("weight", "num_samples")


def _cache_key(
    registry: Registry,
    cache: DataCache | None,
    kind: Any,
    options: dict[str, Any],
    base_dir: Path,
) -> str | None:
    """The entry's key in the data cache; None when it is not cached (no cache, or a kind whose
    options name no file, whose content therefore cannot be keyed)."""
    if cache is None or kind.options_schema.get("x-cache") is False:
        return None
    files = entry_files(options, kind, base_dir)
    if not files:
        return None
    try:
        return cache.source_key(
            kind=kind.name,
            plugin_version=registry.plugin(kind.plugin).version,
            options={k: v for k, v in options.items() if k not in _MIXTURE_FIELDS},
            base_dir=base_dir,
            files=files,
        )
    except OSError:  # a file the plugin will report better itself
        return None


def _store(cache: DataCache, key: str, samples: Any, label: str) -> tuple[Any, str | None]:
    """Write a freshly built source into the cache and read it back from there."""
    try:
        return cache.write_source(key, samples, list(getattr(samples, "skipped", []))), key
    except OSError as exc:
        log.warning("%s: not cached (%s); the next run builds it again", label, exc)
        return samples, None
