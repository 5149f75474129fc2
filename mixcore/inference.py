"""`mixcore infer`: answers from a model (optionally with a LoRA adapter) for prompts or a data set.

Everything that can be checked without Paddle is checked first: which model and options
(:func:`request_model`, the model's option schema and its plugin's ``check_model_options``),
and a data file's dataset entry (:func:`data_file_entry`, the dataset kind's option schema and
its files). Then the model is loaded (:func:`load_requested`) and the prompts answered batch by
batch (:func:`predict`, :func:`answer_all`).

``--engine paddle-inference`` answers with a folder ``mixcore export`` wrote instead
(:func:`request_exported`, :func:`load_exported`): the plugin's ``load_processing`` gives the
tokenizer and image processor, prompts are encoded by the same ``preprocess_sample`` hook, and
:class:`mixcore.exported.ExportedModel` runs the parts through Paddle Inference's predictor,
decoding greedily.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mixcore.api.errors import ConfigError, DataError, MixcoreError, PluginError
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


#: The token budget prompts of an exported model are encoded with (then measured against it).
_UNTRUNCATED = 2**31 - 1


@dataclass(frozen=True)
class ExportRequest:
    """What ``infer --engine paddle-inference`` answers with, checked without Paddle."""

    entry: ModelEntry
    folder: Path
    manifest: dict[str, Any]


@dataclass
class DeployedModel:
    """An exported model ready to answer: its prompt-side bundle (``model`` None) and parts."""

    entry: ModelEntry
    processing: ModelBundle
    runtime: Any  # mixcore.exported.ExportedModel

    def answer(
        self, registry: Registry, prompts: Sequence[Sample], max_new_tokens: int
    ) -> list[str]:
        """Greedy answers, one prompt at a time, encoded as the dynamic model encodes them."""
        room = self.runtime.prompt_room(max_new_tokens)
        answers = []
        for prompt in prompts:
            # Encoded whole, then measured: a prompt cut to fit would be another question.
            features = registry.hook.preprocess_sample(
                model_name=self.entry.name,
                sample=prompt,
                bundle=self.processing,
                max_length=_UNTRUNCATED,
            )
            if features is None:
                raise PluginError(f"no plugin encodes prompts for model {self.entry.name!r}")
            length = len(features["input_ids"])
            if length > room:
                raise DataError(
                    f"the prompt takes {length} tokens, but the export takes "
                    f"{self.runtime.max_length} in all and {max_new_tokens} are kept for the "
                    "answer: export with a larger --max-length, or ask for fewer --max-new-tokens",
                    source=prompt.source,
                    index=prompt.index,
                )
            images = features.get("images")
            if images is not None and len(images) == 0:
                images = None
            new = self.runtime.generate(features["input_ids"], images, max_new_tokens)
            text = self.processing.tokenizer.decode(new, skip_special_tokens=True)
            answers.append(text.strip())
        return answers


def request_exported(registry: Registry, folder: Path) -> ExportRequest:
    """The export in ``folder``, its manifest checked and its model registered here.

    :raises UsageError: ``folder`` is not a complete export (:func:`mixcore.exported.read_manifest`).
    :raises UnknownNameError: the model it was exported from is not registered here.
    """
    from mixcore.exported import read_manifest

    manifest = read_manifest(folder)
    entry = registry.model(manifest["model"])
    return ExportRequest(entry, Path(folder), manifest)


def load_exported(registry: Registry, request: ExportRequest) -> DeployedModel:
    """Open the export's parts with Paddle Inference and its prompt side through the plugin."""
    from mixcore.exported import ExportedModel

    processing = registry.hook.load_processing(
        model_name=request.entry.name,
        folder=str(request.folder / request.manifest["processing"]),
    )
    if processing is None:
        raise PluginError(
            f"model {request.entry.name!r} was exported, but no installed plugin reads its "
            "prompt-side files (load_processing)"
        )
    return DeployedModel(request.entry, processing, ExportedModel.open(request.folder))


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
    bundle: ModelBundle | DeployedModel,
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
        if isinstance(bundle, DeployedModel):
            if num_beams > 1:
                raise MixcoreError("the paddle-inference engine decodes greedily: use num_beams 1")
            answers = bundle.answer(registry, prompts, max_new_tokens)
        else:
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
    bundle: ModelBundle | DeployedModel,
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
