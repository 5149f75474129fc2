"""The training data of a run: sources -> usable samples -> mixture -> (packed) items -> batches.

Everything model-specific goes through the registry's hooks; this module decides *which* samples
are trained on and in what groups, and keeps the record of every sample left out and why.

Bad samples are found at three moments: when a dataset plugin builds its source (structure, image
paths), when lengths are measured (text and templates, before training, only when packing or an
over-long policy needs lengths), and when a sample is preprocessed for a batch (image decoding,
which stays lazy). The last happens in data-loader worker processes whose exceptions, and whose
copies of any counter, never reach the training loop intact. So a problem found there travels
*with the batch*: the collator attaches it, and the trainer (in the loop's own thread) counts it
as skipped or stops the run with it. Any other exception met building an item or a batch (a
plugin's bug in ``preprocess_sample`` or ``collate_batch``, a :class:`PluginHookError` naming
it) travels the same way and stops the run: raised in a loader thread it would be printed there
and leave the training loop waiting forever for a batch that never comes.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mixcore.api.errors import DataError, MixcoreError, PluginError, PluginHookError
from mixcore.api.records import ModelBundle, Sample
from mixcore.kit.packing import PackPlan, pack_features, plan_pack_array
from mixcore.mixture import MixtureSource, allocate, draw_mixture_arrays
from mixcore.registry import Registry
from mixcore.train.data_cache import DataCache, LengthRecord

log = logging.getLogger(__name__)

#: Batch key carrying the problems met while building it (a JSON string: survives worker pipes).
PROBLEMS_KEY = "mixcore_problems"
#: Batch key with the mixture source of every label position (-1 on padding).
SOURCE_IDS_KEY = "source_ids"

#: What to do with a sample longer than ``max_length``.
OVERLONG_POLICIES = ("truncate", "drop", "error")


def error_note(exc: Exception) -> dict[str, Any]:
    """``exc`` as JSON values, to travel in a batch's problems (see :func:`error_from_note`)."""
    if isinstance(exc, PluginHookError):
        return {"kind": "plugin_hook", **exc.to_json()}
    if isinstance(exc, DataError):
        return {"kind": "data", "reason": exc.reason, "source": exc.source, "index": exc.index}
    if isinstance(exc, MixcoreError):
        return {"kind": "mixcore", "message": str(exc)}
    return {
        "kind": "internal",
        "message": f"{type(exc).__name__}: {exc}",
        "detail": "".join(traceback.format_exception(exc)),
    }


def error_from_note(note: dict[str, Any]) -> MixcoreError:
    """The error :func:`error_note` described, to raise in the training loop's thread."""
    kind = note["kind"]
    if kind == "plugin_hook":
        return PluginHookError.from_json(note)
    if kind == "data":
        return DataError(note["reason"], source=note["source"], index=note["index"])
    if kind == "mixcore":
        return MixcoreError(note["message"])
    error = MixcoreError(
        f"building a batch failed: {note['message']} (a bug in mixcore or in the model plugin; "
        "--verbose shows the traceback)"
    )
    error.detail = note.get("detail", "")
    return error


@dataclass(frozen=True)
class Problem:
    """A sample left out of training (or that stopped it), with where and when it was found."""

    source: str
    index: int
    reason: str
    stage: str  # "build", "measure", "overlong" or "batch"

    def where(self) -> str:
        return f"{self.source} record {self.index}" if self.source else f"record {self.index}"


@dataclass
class ProblemLog:
    """Every sample skipped in a run, each once, in the order found."""

    problems: dict[tuple[str, int], Problem] = field(default_factory=dict)

    def add(self, problem: Problem) -> bool:
        """Record ``problem``; False when that sample was already recorded."""
        key = (problem.source, problem.index)
        if key in self.problems:
            return False
        self.problems[key] = problem
        return True

    def __len__(self) -> int:
        return len(self.problems)

    def by_stage(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for problem in self.problems.values():
            counts[problem.stage] = counts.get(problem.stage, 0) + 1
        return counts

    def to_json(self) -> list[dict[str, Any]]:
        return [p.__dict__ for p in self.problems.values()]


@dataclass
class SourceSpec:
    """One dataset entry after its plugin built it, with the mixture fields of its config.

    ``cache_key`` names the entry in the processed-data cache (:mod:`mixcore.train.data_cache`)
    when it is cached, so its lengths can be cached too."""

    label: str
    samples: Sequence[Sample]
    weight: float | None = None
    num_samples: int | None = None
    skipped: list[tuple[str, int, str]] = field(default_factory=list)
    on_bad_sample: str = "error"
    cache_key: str | None = None


@dataclass
class LengthCache:
    """Where measured lengths are kept: the cache and the key of the run's model in it."""

    cache: DataCache
    model_key: str

    def read(self, source: SourceSpec) -> LengthRecord | None:
        if source.cache_key is None:
            return None
        return self.cache.read_lengths(source.cache_key, self.model_key)

    def write(self, source: SourceSpec, record: LengthRecord) -> None:
        if source.cache_key is None:
            return
        try:
            self.cache.write_lengths(source.cache_key, self.model_key, record)
        except OSError as exc:  # a full or read-only disk costs the cache, not the run
            log.warning("%s: lengths not cached (%s)", source.label, exc)


@dataclass
class SplitPlan:
    """What a split will train or evaluate on: the samples, grouped into dataset items.

    Held as arrays, so a million samples cost megabytes: drawn sample ``i`` is sample
    ``sample_of[i]`` of source ``source_of[i]``; item ``k`` is sample ``k`` unpacked, or pack
    ``k`` of ``packs``."""

    sources: list[Sequence[Sample]]
    source_of: np.ndarray  # source number of each drawn sample
    sample_of: np.ndarray  # its index in that source's samples
    labels: list[str]
    report: list[str]
    policies: list[str] = field(default_factory=list)  # on_bad_sample of each source
    packs: PackPlan | None = None
    lengths: np.ndarray | None = None  # untruncated length of each drawn sample, when measured

    @property
    def packed(self) -> bool:
        return self.packs is not None

    def __len__(self) -> int:
        """Number of drawn samples."""
        return len(self.source_of)

    def sample(self, i: int) -> Sample:
        return self.sources[int(self.source_of[i])][int(self.sample_of[i])]

    def item_count(self) -> int:
        return len(self.packs) if self.packs is not None else len(self.source_of)

    def item(self, k: int) -> list[int]:
        """The drawn samples of item ``k``."""
        return self.packs.pack(k) if self.packs is not None else [k]


#: Below this many samples measuring in one process is quicker than starting workers.
PARALLEL_MEASURE_MIN = 20_000
_MEASURE_CHUNK = 4096
#: What forked measuring workers read: (registry, model name, bundle, samples).
_measuring: tuple[Any, ...] | None = None


def sample_length(registry: Registry, model_name: str, bundle: ModelBundle, sample: Sample) -> int:
    """Tokens ``sample`` takes (image tokens included, untruncated): the model plugin's
    ``sample_length`` hook, or for a plugin without one the length of its full preprocessing.
    A sample the model cannot encode raises :class:`DataError`."""
    length = registry.hook.sample_length(model_name=model_name, sample=sample, bundle=bundle)
    if length is None:
        features = registry.hook.preprocess_sample(
            model_name=model_name, sample=sample, bundle=bundle, max_length=2**31 - 1
        )
        length = len(features["input_ids"])
    return length


def _measure_range(
    registry: Registry,
    model_name: str,
    bundle: ModelBundle,
    samples: Sequence[Sample],
    start: int,
    end: int,
    stop_at_bad: bool,
) -> tuple[np.ndarray, dict[int, str]]:
    lengths = np.full(end - start, -1, dtype=np.int32)
    reasons: dict[int, str] = {}
    for i in range(start, end):
        try:
            length = sample_length(registry, model_name, bundle, samples[i])
        except DataError as exc:
            reasons[i] = exc.reason
            if stop_at_bad:
                break
        else:
            lengths[i - start] = length
    return lengths, reasons


def _measure_chunk(bounds: tuple[int, int]) -> tuple[int, np.ndarray, dict[int, str]]:
    assert _measuring is not None
    lengths, reasons = _measure_range(*_measuring, *bounds, stop_at_bad=False)
    return bounds[0], lengths, reasons


def measuring_workers(count: int) -> int:
    """How many processes measure ``count`` samples: ``$MIXCORE_MEASURE_WORKERS`` when set,
    else the cores this process may use (at most 8); one for few samples or where processes
    cannot be forked."""
    import multiprocessing
    import os

    if count < PARALLEL_MEASURE_MIN or "fork" not in multiprocessing.get_all_start_methods():
        return 1
    asked = os.environ.get("MIXCORE_MEASURE_WORKERS", "")
    if asked.isdigit() and int(asked) > 0:
        return int(asked)
    return max(1, min(len(os.sched_getaffinity(0)), 8))


def measure_lengths(
    registry: Registry,
    model_name: str,
    bundle: ModelBundle,
    samples: Sequence[Sample],
    *,
    stop_at_bad: bool = False,
    progress: bool = True,
    workers: int | None = None,
) -> tuple[LengthRecord, Sample | None]:
    """Tokens each sample takes (image tokens included, before truncation), ``-1`` for one the
    model cannot encode (its reason recorded).

    Uses the model plugin's ``sample_length`` hook (text only, fast), or, for a plugin without
    one, the length of its full preprocessing. Many samples are measured by forked worker
    processes, one range of samples at a time (``workers``: default
    :func:`measuring_workers`); they only tokenise, as data-loader workers do. With
    ``stop_at_bad`` (one process only) the first bad sample ends the measurement and is
    returned beside the incomplete record.
    """
    global _measuring
    from tqdm.auto import tqdm

    workers = measuring_workers(len(samples)) if workers is None else workers
    bar = tqdm(
        total=len(samples),
        desc="measuring samples",
        unit="sample",
        disable=not progress or len(samples) < 2000,
        leave=False,
        mininterval=0.5,
    )
    if stop_at_bad or workers <= 1:
        lengths = np.full(len(samples), -1, dtype=np.int32)
        reasons: dict[int, str] = {}
        for start in range(0, len(samples), _MEASURE_CHUNK):
            end = min(start + _MEASURE_CHUNK, len(samples))
            part, found = _measure_range(
                registry, model_name, bundle, samples, start, end, stop_at_bad
            )
            lengths[start:end] = part
            reasons.update(found)
            bar.update(end - start)
            if found and stop_at_bad:
                bar.close()
                return LengthRecord(lengths, reasons), samples[min(found)]
        bar.close()
        return LengthRecord(lengths, reasons), None

    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    lengths = np.full(len(samples), -1, dtype=np.int32)
    reasons = {}
    chunks = [
        (start, min(start + _MEASURE_CHUNK, len(samples)))
        for start in range(0, len(samples), _MEASURE_CHUNK)
    ]
    _measuring = (registry, model_name, bundle, samples)
    try:
        # An executor, not a Pool: a worker that dies makes it fail instead of waiting forever.
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            for done in as_completed([pool.submit(_measure_chunk, c) for c in chunks]):
                start, part, found = done.result()
                lengths[start : start + len(part)] = part
                reasons.update(found)
                bar.update(len(part))
    except BrokenProcessPool as exc:
        raise MixcoreError(
            "a process measuring sample lengths died (out of memory?); "
            "MIXCORE_MEASURE_WORKERS=1 measures in this process alone"
        ) from exc
    finally:
        _measuring = None
        bar.close()
    return LengthRecord(lengths, reasons), None


def _source_lengths(
    registry: Registry,
    model_name: str,
    bundle: ModelBundle,
    source: SourceSpec,
    problems: ProblemLog,
    length_cache: LengthCache | None,
) -> np.ndarray:
    """``source``'s sample lengths (``-1`` for bad ones), from the cache when it has them.

    A bad sample raises when the source's ``on_bad_sample`` is ``"error"`` and is recorded
    as skipped otherwise."""
    record = length_cache.read(source) if length_cache is not None else None
    if record is None:
        kept = length_cache is not None and source.cache_key is not None
        stop = source.on_bad_sample != "skip" and not kept  # nothing to keep: stop early
        record, bad = measure_lengths(
            registry, model_name, bundle, source.samples, stop_at_bad=stop
        )
        if bad is not None:
            raise DataError(record.reasons[min(record.reasons)], source=bad.source, index=bad.index)
        if length_cache is not None:
            length_cache.write(source, record)
    if record.reasons:
        if source.on_bad_sample != "skip":
            first = min(record.reasons)
            sample = source.samples[first]
            raise DataError(record.reasons[first], source=sample.source, index=sample.index)
        for i, reason in sorted(record.reasons.items()):
            sample = source.samples[i]
            problems.add(Problem(sample.source, sample.index, reason, "measure"))
    return record.lengths


def plan_split(
    registry: Registry,
    model_name: str,
    bundle: ModelBundle,
    sources: Sequence[SourceSpec],
    *,
    max_length: int,
    seed: int,
    overlong: str = "truncate",
    pack: bool = False,
    budget: int | None = None,
    problems: ProblemLog,
    split: str = "train",
    length_cache: LengthCache | None = None,
    measure_all: bool = False,
) -> SplitPlan:
    """Choose the samples of a split: drop unusable ones, draw the mixture, pack if asked.

    Lengths are measured when packing or an over-long policy needs them, or ``measure_all``
    (the dry run, which checks every sample's text that way)."""
    for source in sources:
        for file, index, reason in source.skipped:
            problems.add(Problem(file, index, reason, "build"))
    measure = measure_all or pack or overlong != "truncate"
    usable: list[np.ndarray] = []  # per source: indexes into its samples
    lengths_of: list[np.ndarray] = []  # per source: lengths of the usable ones
    overlong_found: list[tuple[SourceSpec, int, int]] = []  # (source, sample index, length)
    for source in sources:
        if measure:
            lengths = _source_lengths(registry, model_name, bundle, source, problems, length_cache)
            keep = lengths >= 0
            if overlong != "truncate":
                too_long = np.flatnonzero(lengths > max_length)
                overlong_found += [(source, int(i), int(lengths[i])) for i in too_long]
                if overlong == "drop":
                    keep &= lengths <= max_length
            kept = np.flatnonzero(keep)
            usable.append(kept)
            lengths_of.append(lengths[kept])
        else:
            usable.append(np.arange(len(source.samples), dtype=np.int64))
    if overlong_found and overlong == "error":
        source, i, length = overlong_found[0]
        sample = source.samples[i]
        more = len(overlong_found) - 1
        raise DataError(
            f"{length} tokens (image tokens included) exceed max_length {max_length}"
            + (f" (and {more} more sample{'s' if more > 1 else ''})" if more else "")
            + "; raise max_length, or set overlong_policy to 'truncate' or 'drop'",
            source=sample.source,
            index=sample.index,
        )
    for source, i, length in overlong_found:
        sample = source.samples[i]
        problems.add(
            Problem(
                sample.source,
                sample.index,
                f"{length} tokens exceed max_length {max_length} (overlong_policy 'drop')",
                "overlong",
            )
        )
    empty = [s.label for s, keep in zip(sources, usable, strict=True) if not len(keep)]
    if empty:
        raise DataError(f"dataset.{split} source {empty[0]!r} has no usable sample left")

    mixture = [
        MixtureSource(s.label, len(keep), s.weight, s.num_samples)
        for s, keep in zip(sources, usable, strict=True)
    ]
    counts = allocate(mixture, budget)
    source_of, drawn = draw_mixture_arrays(mixture, seed, budget)
    sample_of = np.empty(len(drawn), dtype=np.int64)
    lengths = np.empty(len(drawn), dtype=np.int64) if measure else None
    for number, keep in enumerate(usable):
        mine = source_of == number
        sample_of[mine] = keep[drawn[mine]]
        if lengths is not None:
            lengths[mine] = lengths_of[number][drawn[mine]]

    report = [f"{split} data: {len(drawn):,} samples (seed {seed})"]
    width = max(len(s.label) for s in sources)
    for source, keep, count in zip(sources, usable, counts, strict=True):
        how = (
            f"weight {source.weight:g}"
            if source.weight is not None
            else ("num_samples" if source.num_samples is not None else "all")
        )
        share = count / max(len(drawn), 1)
        passes = count / len(keep)
        report.append(
            f"  {source.label:<{width}}  {count:>8,} drawn ({share:6.1%}) of {len(keep):,} "
            f"usable, {passes:.2f}x each  [{how}]"
        )
    packs = None
    if pack:
        assert lengths is not None
        kept = np.minimum(lengths, max_length)  # truncated samples fill a whole pack
        packs = plan_pack_array(kept, max_length, seed)
        filled = float(kept.sum()) / max(len(packs) * max_length, 1)
        report.append(
            f"  packed into {len(packs):,} sequences of at most {max_length} tokens "
            f"({filled:.1%} of the slots hold tokens)"
        )
    return SplitPlan(
        sources=[s.samples for s in sources],
        source_of=source_of,
        sample_of=sample_of,
        labels=[s.label for s in sources],
        report=report,
        policies=[s.on_bad_sample for s in sources],
        packs=packs,
        lengths=lengths,
    )


class TrainingDataset:
    """A map-style dataset of model features; each item is one sample or one pack of samples.

    Images are read when an item is fetched (lazily, in data-loader workers when there are any).
    A sample that fails to preprocess never reaches the model. When its source's
    ``on_bad_sample`` is ``"skip"`` it is left out of its pack, or its item is replaced by the
    next good one (up to ``max_attempts`` items in a row, beyond which the data is called
    broken); with ``"error"`` the item becomes a stop signal. Either way the problem rides along in the item under
    ``PROBLEMS_KEY`` (``{"skipped": [[file, index, reason], ...], "fatal": [...] or None,
    "error": None}``) for the trainer to count or raise: an exception raised here would be lost
    in a loader thread. Any other exception makes the item a stop signal too, carrying it under
    ``"error"`` (:func:`error_note`).
    """

    def __init__(
        self,
        plan: SplitPlan,
        preprocess: Callable[[Sample], dict[str, Any]],
        *,
        with_sources: bool = False,
        max_attempts: int = 64,
    ) -> None:
        self.plan = plan
        self.preprocess = preprocess
        self.with_sources = with_sources
        self.max_attempts = max_attempts

    def __len__(self) -> int:
        return self.plan.item_count()

    def _features(self, i: int) -> dict[str, Any]:
        features = self.preprocess(self.plan.sample(i))
        if self.with_sources:
            features[SOURCE_IDS_KEY] = np.full(
                len(features["labels"]), int(self.plan.source_of[i]), dtype=np.int64
            )
        return features

    def __getitem__(self, item: int) -> dict[str, Any]:
        try:
            return self._item(item)
        except Exception as exc:
            return {PROBLEMS_KEY: {"skipped": [], "fatal": None, "error": error_note(exc)}}

    def _item(self, item: int) -> dict[str, Any]:
        skipped: list[list[Any]] = []
        count = self.plan.item_count()
        for offset in range(min(self.max_attempts, count)):
            indexes = self.plan.item((item + offset) % count)
            good = []
            for i in indexes:
                try:
                    good.append(self._features(i))
                except DataError as exc:
                    sample = self.plan.sample(i)
                    skipped.append([sample.source, sample.index, exc.reason])
                    if self.plan.policies[int(self.plan.source_of[i])] != "skip":
                        return {PROBLEMS_KEY: {"skipped": [], "fatal": skipped[-1], "error": None}}
            if good:
                features = pack_features(good) if self.plan.packed else good[0]
                features[PROBLEMS_KEY] = {"skipped": skipped, "fatal": None, "error": None}
                return features
        first = skipped[0]
        fatal = [
            first[0],
            first[1],
            f"{len(skipped)} samples in a row could not be used, so the data looks broken rather "
            f"than a few bad records; the first: {first[2]}",
        ]
        return {PROBLEMS_KEY: {"skipped": skipped, "fatal": fatal, "error": None}}


def check_every_sample(
    plan: SplitPlan,
    preprocess: Callable[[Sample], dict[str, Any]],
    problems: ProblemLog,
    *,
    max_length: int | None = None,
    progress: bool = True,
) -> tuple[int, int]:
    """Check each distinct sample of ``plan`` once, as training would meet it.

    For ``mixcore train --dry-run``: finds now what training finds batch by batch. When the
    plan's lengths were measured (which encoded every sample's text), a sample is preprocessed
    in full only when it is longer than ``max_length`` (its truncation is checked) or holds an
    image no earlier sample decoded successfully: each distinct image is decoded once, not once
    per sample that shows it. Without lengths every sample is preprocessed. A problem in a
    source whose ``on_bad_sample`` is ``"error"`` raises; otherwise it is recorded. Returns the
    number of distinct samples checked and of those preprocessed in full.
    """
    from tqdm.auto import tqdm

    # Distinct (source, sample) pairs, each with the first drawn position that has it.
    keys = plan.source_of.astype(np.int64) * (1 << 40) + plan.sample_of
    _, first = np.unique(keys, return_index=True)
    decoded: set[Path] = set()
    full = 0
    for i in tqdm(first.tolist(), desc="checking samples", unit="sample", disable=not progress):
        sample = plan.sample(i)
        if (
            plan.lengths is not None
            and max_length is not None
            and plan.lengths[i] <= max_length
            and all(image in decoded for image in sample.images)
        ):
            continue
        full += 1
        try:
            preprocess(sample)
        except DataError as exc:
            if plan.policies[int(plan.source_of[i])] != "skip":
                raise
            problems.add(Problem(sample.source, sample.index, exc.reason, "batch"))
        else:
            decoded.update(sample.images)
    return len(first), full


def make_collator(
    registry: Registry, model_name: str, bundle: ModelBundle
) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """The data loader's ``collate_fn``: the model plugin's ``collate_batch`` plus mixcore's keys.

    Adds ``PROBLEMS_KEY`` (problems met building the batch, as JSON) and, when items carry
    ``source_ids``, a ``[batch, len]`` tensor of them aligned with ``labels`` (right padding,
    row ``r`` = item ``r``: the layout the ``collate_batch`` contract asks for).
    """

    def stop(problems: dict[str, Any]) -> dict[str, Any]:
        # The trainer stops on this batch. Paddle's loader silently drops a batch without an
        # array (and ends the epoch there), hence the placeholder.
        return {PROBLEMS_KEY: json.dumps(problems), "mixcore_stop": np.zeros(1)}

    def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
        notes = [f.pop(PROBLEMS_KEY, None) or {} for f in features]
        problems = {
            "skipped": [p for note in notes for p in note.get("skipped", [])],
            "fatal": next((note["fatal"] for note in notes if note.get("fatal")), None),
            "error": next((note["error"] for note in notes if note.get("error")), None),
        }
        if problems["fatal"] is not None or problems["error"] is not None:
            return stop(problems)
        try:
            batch = build(features)
        except Exception as exc:  # raised here it would leave the training loop waiting
            return stop({**problems, "error": error_note(exc)})
        batch[PROBLEMS_KEY] = json.dumps(problems)
        return batch

    def build(features: list[dict[str, Any]]) -> dict[str, Any]:
        sources = [f.pop(SOURCE_IDS_KEY, None) for f in features]
        batch = registry.hook.collate_batch(model_name=model_name, features=features, bundle=bundle)
        if batch is None:
            raise PluginError(f"no plugin collates batches for model {model_name!r}")
        if all(s is not None for s in sources) and "labels" in batch:
            width = int(batch["labels"].shape[-1])
            ids = np.full((len(features), width), -1, dtype=np.int64)
            for row, s in enumerate(sources):
                ids[row, : min(len(s), width)] = s[:width]
            batch[SOURCE_IDS_KEY] = ids
        return batch

    return collate


def preprocessor(
    registry: Registry, model_name: str, bundle: ModelBundle, max_length: int
) -> Callable[[Sample], dict[str, Any]]:
    """``preprocess_sample`` of the run's model as a one-argument function."""

    def preprocess(sample: Sample) -> dict[str, Any]:
        features = registry.hook.preprocess_sample(
            model_name=model_name, sample=sample, bundle=bundle, max_length=max_length
        )
        if features is None:
            raise PluginError(f"no plugin preprocesses samples for model {model_name!r}")
        return dict(features)

    return preprocess
