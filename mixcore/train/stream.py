"""Streamed training data: sharded sources mixed by weight, packed per buffer, resumable mid-shard.

A ``dataset.train`` whose entries set ``streaming: true`` is not read up front. Each entry's
plugin returns a :class:`~mixcore.api.records.ShardedSource` (a plugin that returns an ordinary
sequence of samples gets it streamed as one shard), and :class:`StreamingDataset`, a Paddle
``IterableDataset``, draws the training items from them while training runs:

* **Mixing.** The stream is cut into *blocks* of ``dataset.stream_buffer`` samples. For each
  slot of block ``b`` a source is chosen at random with probability proportional to its
  ``weight`` (default 1), from a generator seeded by ``(seed, b)`` alone. Each source walks its
  shards in an order drawn from ``(seed, source number, pass)`` and starts a new shuffled pass
  when it has read them all, so it never runs out.
* **Bad records.** A record the plugin yields as a :class:`~mixcore.api.errors.DataError` (and
  a sample the model cannot encode, or an over-long one under ``overlong_policy: drop``) is left
  out and its slot filled by the source's next record under ``on_bad_sample: skip``; the problem
  rides with the next item to the trainer, which reports it with the shard and index. Under
  ``error`` the run stops there, naming the record.
* **Packing.** With ``mixtoken`` a block's samples are planned into packs by
  :func:`mixcore.kit.packing.plan_packs` over their lengths, then the packs are put in an order
  drawn from ``(seed, b)``; without it the items are the block's samples in drawn order.
* **Exact resume.** Everything above is a function of the seed and of where each source stood
  when a block began, so the stream's position is small: the block number, how many of its items
  were trained on, and each source's ``(pass, shard, record)`` at the block's start. The data
  loader reads ahead of training, so the dataset keeps that position for each item it handed
  out, and a checkpoint stores the one of the last item actually trained on (``global_step x
  per_device_train_batch_size x gradient_accumulation_steps x data-parallel size`` items) in
  :data:`STREAM_STATE_FILE`. A run resumed from it rebuilds that block from the sources'
  positions (reading from the saved record, not from the start of the shard), skips the items
  already trained and goes on; PaddleNLP's own skipping of trained batches is turned off
  (``ignore_data_skip``), so nothing is replayed.

The stream is read in the training process (``dataloader_num_workers`` 0; validation says so).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mixcore.api.errors import DataError, MixcoreError
from mixcore.api.records import ModelBundle, Sample, ShardedSource
from mixcore.kit.packing import pack_features, plan_packs
from mixcore.registry import Registry
from mixcore.train.assemble import build_entry
from mixcore.train.data import (
    PROBLEMS_KEY,
    SOURCE_IDS_KEY,
    Problem,
    ProblemLog,
    error_note,
    sample_length,
)

__all__ = [
    "DEFAULT_STREAM_BUFFER",
    "STREAM_STATE_FILE",
    "SequenceShards",
    "StreamSpec",
    "StreamingDataset",
    "build_stream",
]

#: File of a checkpoint folder holding the stream's position (JSON).
STREAM_STATE_FILE = "stream_state.json"
STATE_FORMAT = 1
#: Samples per block when ``dataset.stream_buffer`` is not given.
DEFAULT_STREAM_BUFFER = 512
#: Item positions kept for checkpoints beyond the last trained step (the loader's read-ahead).
_KEEP_AHEAD = 1 << 16


class StreamError(MixcoreError):
    """A stream cannot be built or resumed as configured."""


class SequenceShards:
    """A dataset plugin's sequence of samples streamed as one shard (for kinds without shards)."""

    def __init__(self, samples: Sequence[Sample], name: str) -> None:
        self.samples = samples
        self.shards = [name]

    def read_shard(self, shard: int, start: int = 0) -> Iterator[tuple[int, Sample | DataError]]:
        for index in range(start, len(self.samples)):
            yield index, self.samples[index]


@dataclass
class StreamSpec:
    """One streamed ``dataset.train`` entry: its source and mixture fields."""

    label: str
    source: ShardedSource
    weight: float
    on_bad_sample: str


class _Cursor:
    """Where one source stands: its pass, the position in that pass's shard order, the record."""

    def __init__(self, number: int, spec: StreamSpec, seed: int, position: Sequence[int]) -> None:
        self.number, self.spec, self.seed = number, spec, seed
        self.epoch, self.shard_pos, self.record = (int(v) for v in position)
        self._order: tuple[int, list[int]] | None = None
        self._reader: Iterator[tuple[int, Sample | DataError]] | None = None
        self._good_epoch = self.epoch

    def position(self) -> list[int]:
        return [self.epoch, self.shard_pos, self.record]

    def shard(self) -> int:
        if self._order is None or self._order[0] != self.epoch:
            count = len(self.spec.source.shards)
            order = np.random.default_rng([self.seed, self.number, self.epoch]).permutation(count)
            self._order = (self.epoch, order.tolist())
        return self._order[1][self.shard_pos]

    def next(self) -> Sample | DataError:
        """The source's next record (a sample or a bad record's error); raises for a source that
        has gone a whole pass without one usable record, or for a shard that cannot be read."""
        while True:
            if self.epoch > self._good_epoch + 1:
                raise DataError(
                    f"dataset.train source {self.spec.label!r} has no usable sample in a whole "
                    f"pass over its {len(self.spec.source.shards)} shard(s)"
                )
            if self._reader is None:
                self._reader = iter(self.spec.source.read_shard(self.shard(), self.record))
            item = next(self._reader, None)
            if item is None:
                self._reader = None
                self.shard_pos, self.record = self.shard_pos + 1, 0
                if self.shard_pos == len(self.spec.source.shards):
                    self.epoch, self.shard_pos = self.epoch + 1, 0
                continue
            index, value = item
            self.record = index + 1
            if isinstance(value, Sample):
                self._good_epoch = self.epoch
            return value


@dataclass
class _Item:
    samples: list[tuple[Sample, int]]  # (sample, source number)
    notes: list[list[Any]]  # [source, index, reason] of records left out before it


class _Stop(Exception):
    def __init__(self, note: list[Any]) -> None:
        super().__init__(note[2])
        self.note = note


def _iterable_base() -> type:
    from paddle.io import IterableDataset

    return IterableDataset


class StreamingDataset(_iterable_base()):  # type: ignore[misc]
    """The streamed ``dataset.train`` (see the module docstring)."""

    def __init__(
        self,
        specs: Sequence[StreamSpec],
        preprocess: Callable[[Sample], dict[str, Any]],
        *,
        seed: int,
        buffer: int = DEFAULT_STREAM_BUFFER,
        pack: bool = False,
        max_length: int,
        measure: Callable[[Sample], int | None] | None = None,
        overlong: str = "truncate",
    ) -> None:
        super().__init__()
        if not specs:
            raise StreamError("a stream needs at least one source")
        self.specs = list(specs)
        self.preprocess = preprocess
        self.seed, self.buffer, self.pack = int(seed), int(buffer), bool(pack)
        self.max_length, self.measure, self.overlong = max_length, measure, overlong
        total = float(sum(s.weight for s in self.specs))
        self.probabilities = np.array([s.weight / total for s in self.specs])
        self.with_sources = len(self.specs) > 1
        self.labels = [s.label for s in self.specs]
        self._start: dict[str, Any] = {
            "items": 0,
            "block": 0,
            "offset": 0,
            "positions": [[0, 0, 0] for _ in self.specs],
        }
        self._positions: dict[int, dict[str, Any]] = {}  # items handed out -> position after
        self._lock = threading.Lock()

    # -- the stream's plan ----------------------------------------------------------------------

    def fingerprint(self) -> dict[str, Any]:
        """What a saved position is only valid for: the sources, their shards and the settings."""
        return {
            "seed": self.seed,
            "buffer": self.buffer,
            "pack": self.pack,
            "max_length": self.max_length if (self.pack or self.overlong != "truncate") else None,
            "overlong_policy": self.overlong,
            "sources": [
                {"label": s.label, "weight": s.weight, "shards": list(s.source.shards)}
                for s in self.specs
            ],
        }

    def block_rng(self, block: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, 0x5354524D, block])

    def draw_block(self, block: int, cursors: list[_Cursor]) -> list[_Item]:
        """Block ``block``'s items, advancing ``cursors`` past the records it takes."""
        rng = self.block_rng(block)
        picks = rng.choice(len(self.specs), size=self.buffer, p=self.probabilities)
        samples: list[tuple[Sample, int]] = []
        notes: list[list[list[Any]]] = []
        lengths: list[int] = []
        pending: list[list[Any]] = []
        for number in picks.tolist():
            sample, length = self._next_good(number, cursors[number], pending)
            samples.append((sample, number))
            lengths.append(length)
            notes.append(pending)
            pending = []
        if self.pack:
            packs = plan_packs(lengths, self.max_length, int(rng.integers(2**31)))
            groups = [packs[j] for j in rng.permutation(len(packs)).tolist()]
        else:
            groups = [[i] for i in range(len(samples))]
        return [
            _Item([samples[i] for i in group], [n for i in group for n in notes[i]])
            for group in groups
        ]

    def _next_good(
        self, number: int, cursor: _Cursor, pending: list[list[Any]]
    ) -> tuple[Sample, int]:
        spec = self.specs[number]
        while True:
            value = cursor.next()
            if isinstance(value, DataError):
                note = [value.source, value.index if value.index is not None else -1, value.reason]
                if spec.on_bad_sample != "skip":
                    raise _Stop(note)
                pending.append(note)
                continue
            length = self.max_length
            if self.measure is not None:
                try:
                    measured = self.measure(value)
                except DataError as exc:
                    note = [value.source, value.index, exc.reason]
                    if spec.on_bad_sample != "skip":
                        raise _Stop(note) from None
                    pending.append(note)
                    continue
                length = int(measured) if measured is not None else self.max_length
                if length > self.max_length and self.overlong != "truncate":
                    reason = f"{length} tokens exceed max_length {self.max_length}"
                    if self.overlong == "error":
                        raise _Stop(
                            [
                                value.source,
                                value.index,
                                reason + "; raise max_length, or set overlong_policy to "
                                "'truncate' or 'drop'",
                            ]
                        )
                    pending.append(
                        [value.source, value.index, reason + " (overlong_policy 'drop')"]
                    )
                    continue
                length = min(length, self.max_length)
            return value, length

    # -- iteration ------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict[str, Any]]:
        start = self._start
        cursors = [
            _Cursor(i, spec, self.seed, start["positions"][i]) for i, spec in enumerate(self.specs)
        ]
        handed, block, skip = start["items"], start["block"], start["offset"]
        carried: list[list[Any]] = []
        while True:
            at_start = [c.position() for c in cursors]
            try:
                items = self.draw_block(block, cursors)
            except _Stop as stop:
                yield self._stop({"skipped": carried, "fatal": stop.note, "error": None})
                return
            except Exception as exc:  # a shard that cannot be read, a plugin's bug
                yield self._stop({"skipped": carried, "fatal": None, "error": error_note(exc)})
                return
            for offset in range(skip, len(items)):
                features = self._features(items[offset], carried)
                if features is None:  # every sample of the item failed and was skipped
                    continue
                carried = []
                handed += 1
                with self._lock:
                    self._positions[handed] = {
                        "items": handed,
                        "block": block,
                        "offset": offset + 1,
                        "positions": at_start,
                    }
                    if len(self._positions) > _KEEP_AHEAD:  # keys come in increasing order
                        del self._positions[next(iter(self._positions))]
                notes = features[PROBLEMS_KEY]
                stops = bool(notes["fatal"] or notes["error"])
                yield features  # the collator takes PROBLEMS_KEY out of it
                if stops:
                    return
            block, skip = block + 1, 0

    @staticmethod
    def _stop(problems: dict[str, Any]) -> dict[str, Any]:
        return {PROBLEMS_KEY: problems}

    def _features(self, item: _Item, carried: list[list[Any]]) -> dict[str, Any] | None:
        skipped = carried + item.notes
        good = []
        try:
            for sample, number in item.samples:
                try:
                    features = self.preprocess(sample)
                except DataError as exc:
                    note = [sample.source, sample.index, exc.reason]
                    if self.specs[number].on_bad_sample != "skip":
                        return self._stop({"skipped": skipped, "fatal": note, "error": None})
                    skipped.append(note)
                    continue
                if self.with_sources:
                    features[SOURCE_IDS_KEY] = np.full(
                        len(features["labels"]), number, dtype=np.int64
                    )
                good.append(features)
            if not good:
                carried[:] = skipped
                return None
            features = pack_features(good) if self.pack else good[0]
        except Exception as exc:
            return self._stop({"skipped": skipped, "fatal": None, "error": error_note(exc)})
        features[PROBLEMS_KEY] = {"skipped": skipped, "fatal": None, "error": None}
        return features

    # -- checkpoints ----------------------------------------------------------------------------

    def position_after(self, items: int) -> dict[str, Any]:
        """The stream's position once ``items`` items (counted from the run's start) were used."""
        with self._lock:
            if items == self._start["items"]:
                return dict(self._start)
            found = self._positions.get(items)
            for old in [k for k in self._positions if k < items]:
                del self._positions[old]
        if found is None:
            raise StreamError(
                f"the stream's position after {items} items is not known (it handed out "
                f"{max(self._positions, default=self._start['items'])}); this is a bug in mixcore"
            )
        return dict(found)

    def save_state(self, folder: Path, global_step: int, args: Any) -> Path:
        """Write the position of what ``global_step`` steps trained on into ``folder``."""
        from mixcore.train.checkpoints import write_json_atomic

        items = consumed_items(global_step, args)
        state = {"format": STATE_FORMAT, **self.position_after(items), **self.fingerprint()}
        path = Path(folder) / STREAM_STATE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, state)
        return path

    def restore(self, checkpoint: Path) -> None:
        """Continue from the position a checkpoint's :data:`STREAM_STATE_FILE` holds."""
        path = Path(checkpoint) / STREAM_STATE_FILE
        if not path.is_file():
            raise StreamError(
                f"cannot resume the stream from {checkpoint}: it has no {STREAM_STATE_FILE} (it "
                "was written by a run whose dataset.train did not stream)"
            )
        state = json.loads(path.read_text(encoding="utf-8"))
        mine = self.fingerprint()
        changed = [k for k, v in mine.items() if state.get(k) != v]
        if state.get("format") != STATE_FORMAT or changed:
            raise StreamError(
                f"cannot resume the stream from {checkpoint}: "
                + (
                    f"the {', '.join(changed)} of dataset.train changed since it was saved "
                    "(the saved position means nothing for other data); train with the "
                    "saved settings or start a new run"
                    if changed
                    else f"{STREAM_STATE_FILE} has format {state.get('format')!r}"
                )
            )
        self._start = {k: state[k] for k in ("items", "block", "offset", "positions")}
        with self._lock:
            self._positions.clear()

    def forget_before(self, items: int) -> None:
        """Drop positions older than ``items`` (already trained past)."""
        with self._lock:
            for old in [k for k in self._positions if k < items]:
                del self._positions[old]

    def callback(self) -> Any:
        """A Trainer callback that forgets positions once their steps are trained."""
        from paddlenlp.trainer import TrainerCallback

        dataset = self

        class StreamPositions(TrainerCallback):
            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                dataset.forget_before(consumed_items(state.global_step, args))

        return StreamPositions()

    # -- dry run --------------------------------------------------------------------------------

    def check_every_record(self, problems: ProblemLog) -> int:
        """One pass over every shard of every source, each sample measured and preprocessed as
        training would (``mixcore train --dry-run``). A problem in a source whose
        ``on_bad_sample`` is ``"error"`` raises; otherwise it is recorded. Returns the number
        of samples checked."""
        checked = 0
        for spec in self.specs:
            for shard in range(len(spec.source.shards)):
                for index, value in spec.source.read_shard(shard, 0):
                    try:
                        if isinstance(value, DataError):
                            raise value
                        if self.measure is not None:
                            self.measure(value)
                        self.preprocess(value)
                        checked += 1
                    except DataError as exc:
                        if spec.on_bad_sample != "skip":
                            raise
                        source = exc.source or spec.source.shards[shard]
                        where = exc.index if exc.index is not None else index
                        problems.add(Problem(source, where, exc.reason, "batch"))
        return checked


def consumed_items(global_step: int, args: Any) -> int:
    """Stream items trained on after ``global_step`` optimizer steps (each process reads the
    whole stream; PaddleNLP's ``IterableDatasetShard`` gives each its share of a batch)."""
    return (
        int(global_step)
        * args.per_device_train_batch_size
        * args.gradient_accumulation_steps
        * max(args.dataset_world_size, 1)
    )


def build_stream(
    registry: Registry,
    config: dict[str, Any],
    model_name: str,
    bundle: ModelBundle,
    preprocess: Callable[[Sample], dict[str, Any]],
    base_dir: Path,
    problems: ProblemLog,
) -> tuple[StreamingDataset, list[str]]:
    """The streamed ``dataset.train`` of ``config`` and the lines that describe it."""
    specs = []
    for i, entry in enumerate(config["dataset"]["train"]):
        options = dict(entry)
        kind = registry.dataset(entry["name"])
        source = build_entry(registry, kind, options, base_dir)
        for file, index, reason in getattr(source, "skipped", []):
            problems.add(Problem(file, index, reason, "build"))
        if not isinstance(source, ShardedSource):
            if len(source) == 0:
                raise StreamError(f"dataset.train[{i}] ({options['label']}) has no samples")
            source = SequenceShards(source, options["label"])
        if not source.shards:
            raise StreamError(f"dataset.train[{i}] ({options['label']}) has no shards")
        specs.append(
            StreamSpec(
                label=options["label"],
                source=source,
                weight=float(entry.get("weight", 1.0)),
                on_bad_sample=options["on_bad_sample"],
            )
        )
    pack = bool(config["mixtoken"])
    overlong = config["overlong_policy"]
    max_length = config["max_length"]
    measure = None
    if pack or overlong != "truncate":

        def measure(sample: Sample) -> int | None:
            return sample_length(registry, model_name, bundle, sample)

    buffer = config["dataset"].get("stream_buffer", DEFAULT_STREAM_BUFFER)
    dataset = StreamingDataset(
        specs,
        preprocess,
        seed=config["seed"],
        buffer=buffer,
        pack=pack,
        max_length=max_length,
        measure=measure,
        overlong=overlong,
    )
    total = sum(s.weight for s in specs)
    report = [
        f"train data: a stream of {len(specs)} source(s), drawn in blocks of {buffer} samples "
        f"(seed {config['seed']})" + (f", packed into {max_length}-token sequences" if pack else "")
    ]
    width = max(len(s.label) for s in specs)
    for spec in specs:
        shards = len(spec.source.shards)
        report.append(
            f"  {spec.label:<{width}}  weight {spec.weight:g} ({spec.weight / total:6.1%}), "
            f"{shards:,} shard{'s' if shards != 1 else ''}"
        )
    return dataset, report
