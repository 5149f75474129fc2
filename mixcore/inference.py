"""`mixcore infer`: answers from a model (optionally with a LoRA adapter) for prompts or a data set.

Everything that can be checked without Paddle is checked first: which model and options
(:func:`request_model`, the model's option schema and its plugin's ``check_model_options``),
and a data file's dataset entry (:func:`data_file_entry`, the dataset kind's option schema and
its files). Then the model is loaded (:func:`load_requested`) and the prompts answered batch by
batch (:func:`predict`, :func:`answer_all`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mixcore.api.errors import ConfigError, MixcoreError, PluginError
from mixcore.api.records import IMAGE_PLACEHOLDER, Message, ModelBundle, Sample
from mixcore.config import dataset_entry_issues, model_options_issues
from mixcore.config.schema import CORE_PROPERTIES
from mixcore.lora import LORA_BASE_FILE, read_lora_base
from mixcore.models import load_model_bundle, refuse_unfinished
from mixcore.registry import ModelEntry, Registry


@dataclass
class Prediction:
    index: int
    source: str
    prompt: str
    prediction: str
    reference: str | None

    @property
    def correct(self) -> bool | None:
        """Whether the prediction matches the reference exactly (None without a reference)."""
        from mixcore.kit.scoring import exact_match

        return None if self.reference is None else exact_match(self.prediction, self.reference)

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "source": self.source,
            "prompt": self.prompt,
            "prediction": self.prediction,
            "reference": self.reference,
        }


@dataclass(frozen=True)
class ModelRequest:
    """What ``infer`` or ``merge-lora`` loads, decided and checked without Paddle."""

    entry: ModelEntry
    source: str
    options: dict[str, Any]
    seed: int
    lora: Path | None = None
    #: The adapter's record of its base weights (checked once the base is loaded).
    fingerprint: dict[str, Any] | None = None


def request_model(
    registry: Registry,
    model: str | None,
    lora: Path | None = None,
    options: dict[str, Any] | None = None,
) -> ModelRequest:
    """The model ``model`` (a folder or alias) names, with ``lora`` to merge into it.

    Without ``model`` the base recorded next to the adapter by ``mixcore train`` is used, with
    its options (``options`` override them) and the seed it was built from. The options are
    checked against the model's schema and by its plugin (``check_model_options``).

    :raises ConfigError: the options have problems (source ``--model-options``).
    """
    explicit = None
    base: dict[str, Any] = {}
    if lora is not None and (model is None or (Path(lora) / LORA_BASE_FILE).is_file()):
        base = read_lora_base(lora)
    if model is None:
        if lora is None:
            raise MixcoreError("give --model (a checkpoint folder or alias), --lora, or both")
        model, explicit = base["model_name_or_path"], base["model"]
        options = {**base.get("model_options", {}), **(options or {})}
    options = options or {}
    refuse_unfinished(model)
    entry = registry.resolve_model(model, explicit)
    issues = model_options_issues(registry, entry, model, options, prefix=())
    if issues:
        raise ConfigError("--model-options", issues)
    # A preset built with random_init is the adapter's base only when built from the same seed.
    seed = int(base.get("seed", CORE_PROPERTIES["seed"]["default"]))
    return ModelRequest(entry, model, options, seed, lora, base.get("fingerprint"))


def load_requested(registry: Registry, request: ModelRequest) -> ModelBundle:
    """Load the requested model through its plugin, merge the adapter in, set eval mode."""
    from mixcore.lora import check_fingerprint, merge_lora

    _, bundle = load_model_bundle(
        registry,
        request.source,
        model=request.entry.name,
        options=request.options,
        seed=request.seed,
    )
    if request.lora is not None:
        check_fingerprint(request.fingerprint, bundle.model, request.lora)
        bundle.model = merge_lora(bundle.model, request.lora)
    bundle.model.eval()
    return bundle


def load_model_for_inference(
    registry: Registry,
    model: str | None,
    lora: Path | None = None,
    options: dict[str, Any] | None = None,
) -> tuple[ModelEntry, ModelBundle]:
    """:func:`request_model` and :func:`load_requested` in one call."""
    request = request_model(registry, model, lora, options)
    return request.entry, load_requested(registry, request)


def data_file_entry(
    registry: Registry,
    data: Path,
    dataset_name: str,
    options: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], Path]:
    """The dataset entry that reads the data file ``data`` with kind ``dataset_name``, checked.

    It is the entry a config's ``dataset.eval`` would hold (``data_files`` is the file,
    ``on_bad_sample`` is ``error`` so that every record is answered, ``options`` adds or
    overrides keys, such as an ``image_root``) and gets the same checks: the kind's option schema
    with the core entry fields, and its files. Relative paths in it are relative to the data
    file's folder, which is returned with it.

    :raises ConfigError: the entry has problems (source ``--data``), each with its JSON path.
    """
    base_dir = data.resolve().parent
    entry = {
        "name": dataset_name,
        "data_files": data.name,
        "label": data.name,
        "on_bad_sample": "error",
        **(options or {}),
    }
    issues = dataset_entry_issues(registry, entry, base_dir)
    if issues:
        raise ConfigError("--data", issues)
    return entry, base_dir


def build_data_file(registry: Registry, entry: dict[str, Any], base_dir: Path) -> Sequence[Sample]:
    """The samples of a checked :func:`data_file_entry`, built by its dataset plugin."""
    kind = registry.dataset(entry["name"])
    # Inference reads its data whole: a "streaming" option is for dataset.train only.
    options = {k: v for k, v in entry.items() if k != "streaming"}
    samples = registry.hook.build_dataset(
        dataset_name=kind.name, options=options, base_dir=str(base_dir)
    )
    if samples is None:
        raise PluginError(
            f"dataset {kind.name!r} is registered by plugin {kind.plugin!r} but no plugin built "
            "it (its build_dataset hook returned nothing)"
        )
    return samples


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
    num_beams: int = 1,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
) -> Iterator[Prediction]:
    """Yield one prediction per sample, batch by batch, in order (greedy, or beam search with
    ``num_beams`` > 1)."""
    for start in range(0, len(samples), batch_size):
        batch = [as_prompt(s) for s in samples[start : start + batch_size]]
        prompts = [p for p, _ in batch]
        answers = registry.hook.generate(
            model_name=entry.name,
            bundle=bundle,
            prompts=prompts,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
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


@dataclass
class Score:
    """How many records were answered, how many had a reference, and how many matched it."""

    records: int = 0
    scored: int = 0
    correct: int = 0

    @property
    def exact_match(self) -> float | None:
        return self.correct / self.scored if self.scored else None


def answer_all(
    registry: Registry,
    entry: ModelEntry,
    bundle: ModelBundle,
    samples: Sequence[Sample],
    each: Callable[[Prediction], None],
    *,
    max_new_tokens: int = 32,
    num_beams: int = 1,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
) -> Score:
    """Answer every sample (see :func:`predict`), hand each prediction to ``each`` as it comes,
    and score the answers against the records' final replies (exact match)."""
    score = Score()
    for prediction in predict(
        registry,
        entry,
        bundle,
        samples,
        max_new_tokens=max_new_tokens,
        num_beams=num_beams,
        batch_size=batch_size,
        progress=progress,
    ):
        each(prediction)
        score.records += 1
        if prediction.correct is not None:
            score.scored += 1
            score.correct += prediction.correct
    return score
