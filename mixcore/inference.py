"""`mixcore infer`: answers from a model (optionally with a LoRA adapter) for prompts or a data set."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mixcore.api.errors import MixcoreError, PluginError, UsageError
from mixcore.api.records import IMAGE_PLACEHOLDER, Message, ModelBundle, Sample
from mixcore.registry import ModelEntry, Registry


@dataclass
class Prediction:
    index: int
    source: str
    prompt: str
    prediction: str
    reference: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "source": self.source,
            "prompt": self.prompt,
            "prediction": self.prediction,
            "reference": self.reference,
        }


def load_model_for_inference(
    registry: Registry,
    model: str | None,
    lora: Path | None = None,
    options: dict[str, Any] | None = None,
) -> tuple[ModelEntry, ModelBundle]:
    """Load ``model`` (a folder or alias) through its plugin, with ``lora`` merged into it.

    Without ``model`` the base recorded next to the adapter by ``mixcore train`` is used.
    """
    import paddle

    from mixcore.lora import LORA_BASE_FILE, check_fingerprint, merge_lora, read_lora_base
    from mixcore.train.output import unfinished_run

    explicit = None
    base: dict[str, Any] = {}
    if lora is not None and (model is None or (Path(lora) / LORA_BASE_FILE).is_file()):
        base = read_lora_base(lora)
    if model is None:
        if lora is None:
            raise MixcoreError("give --model (a checkpoint folder or alias), --lora, or both")
        model, explicit = base["model_name_or_path"], base["model"]
        options = {**base.get("model_options", {}), **(options or {})}
    if Path(model).is_dir():
        problem = unfinished_run(Path(model))
        if problem:
            raise UsageError(problem)
    entry = registry.resolve_model(model, explicit)
    # A preset built with random_init is the adapter's base only when built from the same seed.
    paddle.seed(int(base.get("seed", 42)))
    bundle = registry.hook.load_model(model_name=entry.name, source=model, options=options or {})
    if bundle is None:
        raise PluginError(f"plugin {entry.plugin!r} did not load model {entry.name!r}")
    if lora is not None:
        check_fingerprint(base.get("fingerprint"), bundle.model, lora)
        bundle.model = merge_lora(bundle.model, lora)
    bundle.model.eval()
    return entry, bundle


def as_prompt(sample: Sample) -> tuple[Sample, str | None]:
    """The sample without its final reply (the prompt), and that reply (the reference)."""
    messages = list(sample.messages)
    reference = None
    if messages and messages[-1].role == "assistant":
        reference = messages.pop().content
    if not messages or messages[-1].role != "user":
        raise MixcoreError(f"{sample.where()}: the conversation does not end with a question")
    return replace(sample, messages=messages), reference


def single_prompt(text: str, image: Path | None) -> Sample:
    """A one-turn prompt; the image (if any) goes before the text."""
    content = f"{IMAGE_PLACEHOLDER}{text}" if image is not None else text
    images = [image] if image is not None else []
    return Sample([Message("user", content)], images=images, source="<prompt>", index=0)


def predict(
    registry: Registry,
    entry: ModelEntry,
    bundle: ModelBundle,
    samples: Sequence[Sample],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
) -> Iterator[Prediction]:
    """Yield one prediction per sample, batch by batch, in order."""
    for start in range(0, len(samples), batch_size):
        batch = [as_prompt(s) for s in samples[start : start + batch_size]]
        prompts = [p for p, _ in batch]
        answers = registry.hook.generate(
            model_name=entry.name, bundle=bundle, prompts=prompts, max_new_tokens=max_new_tokens
        )
        if answers is None:
            raise PluginError(f"no plugin generates text for model {entry.name!r}")
        for (prompt, reference), answer in zip(batch, answers, strict=True):
            yield Prediction(
                index=prompt.index,
                source=prompt.source,
                prompt=prompt.messages[-1].content,
                prediction=answer,
                reference=reference,
            )
        if progress:
            progress(len(batch))
