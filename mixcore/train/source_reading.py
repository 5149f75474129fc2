"""Reading a :class:`~mixcore.api.records.ShardedSource` into the processed-data cache, on every
core.

A cache miss reads the entry's records one at a time, checks each through its plugin and writes
it as a row (:mod:`mixcore.train.data_cache`). Checking is most of that cost (about 12 µs a
chatml record; parsing the JSON is 2 µs), so where the source can count its records cheaply
(an optional ``count_records(shard)`` method, see :class:`~mixcore.api.records.ShardedSource`)
the records are cut into one contiguous range per worker process. Each forked worker reads its
range through ``read_shard(shard, start)``, which skips the records before ``start`` unchecked,
and writes its rows into a part file of the staging entry; the parts are then joined in order.
The entry is the one a single process writes (the same samples in the same order, the same
refused records), only its name tables are kept per part.

``on_bad_sample`` is applied as for a source built whole: bad records are kept as skipped, or,
with ``"error"``, the first one is raised, with how many more there are, once every record is
checked.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mixcore.api.errors import DataError, MixcoreError
from mixcore.api.records import Sample, ShardedSource
from mixcore.train.data_cache import CachedSamples, DataCache, PartWritten, write_part

__all__ = ["PARALLEL_READ_MIN", "reading_workers", "store_source"]

log = logging.getLogger(__name__)

#: Fewer records than this are read by this process alone (forking costs more than it saves).
PARALLEL_READ_MIN = 20_000
#: A worker publishes its progress every this many records.
_PROGRESS_EVERY = 2048

Skipped = tuple[str, int, str]
#: ``(shard, start, stop)``: records ``start <= index < stop`` of a shard (``stop`` None: to the end).
Segment = tuple[int, int, int | None]


def store_source(
    cache: DataCache,
    key: str,
    source: ShardedSource,
    on_bad_sample: str,
    label: str,
    workers: int | None = None,
) -> CachedSamples | None:
    """Read ``source`` into the cache entry ``key`` and return the entry; None when the cache
    cannot be written (the caller builds the source whole instead).

    ``workers``: processes that read (default: :func:`reading_workers`, one per core)."""
    workers = reading_workers() if workers is None else workers
    split = _split(source, workers) if workers > 1 else None

    def fill(staging: Path) -> tuple[list[PartWritten], list[Skipped]]:
        if split is None:
            parts, skipped = _read_alone(staging, source)
        else:
            parts, skipped = _read_in_parallel(staging, source, *split, label)
        if skipped and on_bad_sample != "skip":
            raise _first_bad(skipped)  # nothing is cached: the next run reports it again
        return parts, skipped

    try:
        return cache.write_source_parts(key, fill)
    except OSError as exc:
        log.warning("%s: not cached (%s); it is read whole instead", label, exc)
        return None


def reading_workers() -> int:
    """Processes that read a source into the cache: ``$MIXCORE_MEASURE_WORKERS`` when set (it
    also counts the processes measuring lengths), else the cores this process may use (at most
    8); one where processes cannot be forked."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return 1
    asked = os.environ.get("MIXCORE_MEASURE_WORKERS", "")
    if asked.isdigit() and int(asked) > 0:
        return int(asked)
    return max(1, min(len(os.sched_getaffinity(0)), 8))


def _first_bad(skipped: Sequence[Skipped]) -> DataError:
    source, index, reason = skipped[0]
    more = len(skipped) - 1
    if more:
        reason += (
            f" (and {more} more bad record{'s' if more > 1 else ''}; "
            "fix them or set on_bad_sample to 'skip')"
        )
    return DataError(reason, source=source, index=index)


def _split(source: ShardedSource, workers: int) -> tuple[list[list[Segment]], int] | None:
    """One list of segments per worker, covering every record in order, and the record count;
    None when the source cannot count its records or has too few to be worth splitting."""
    count = getattr(source, "count_records", None)
    if not callable(count):
        return None
    counts = []
    for shard in range(len(source.shards)):
        n = count(shard)
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            return None  # this shard cannot be counted cheaply: read the source in one process
        counts.append(n)
    total = sum(counts)
    if total < PARALLEL_READ_MIN:
        return None
    bounds = [total * w // workers for w in range(workers + 1)]
    plan: list[list[Segment]] = []
    for lo, hi in itertools.pairwise(bounds):
        segments: list[Segment] = []
        first = 0  # global index of the shard's first record
        for shard, n in enumerate(counts):
            start, stop = max(lo - first, 0), min(hi - first, n)
            if start < stop:
                # The last range of a shard reads to its end, whatever was counted.
                segments.append((shard, start, None if stop == n else stop))
            first += n
        plan.append(segments)
    return plan, total


def _records(
    source: ShardedSource, segments: Sequence[Segment], skipped: list[Skipped]
) -> Iterator[Sample]:
    for shard, start, stop in segments:
        for index, item in source.read_shard(shard, start):
            if stop is not None and index >= stop:
                break
            if isinstance(item, DataError):
                skipped.append((item.source or source.shards[shard], index, item.reason))
            else:
                yield item


def _read_alone(staging: Path, source: ShardedSource) -> tuple[list[PartWritten], list[Skipped]]:
    skipped: list[Skipped] = []
    everything = [(shard, 0, None) for shard in range(len(source.shards))]
    part = write_part(staging / "samples.bin", _records(source, everything, skipped))
    return [part], skipped


# What forked workers read: the source (inherited, not pickled) and a shared progress counter.
_reading: tuple[ShardedSource, Any] | None = None


def _read_part(task: tuple[Path, list[Segment]]) -> tuple[PartWritten, list[Skipped]] | tuple:
    assert _reading is not None
    source, progress = _reading
    path, segments = task
    skipped: list[Skipped] = []

    def counted(samples: Iterator[Sample]) -> Iterator[Sample]:
        seen = 0
        for sample in samples:
            yield sample
            seen += 1
            if seen % _PROGRESS_EVERY == 0:
                with progress.get_lock():
                    progress.value += _PROGRESS_EVERY
        with progress.get_lock():
            progress.value += seen % _PROGRESS_EVERY

    try:
        return write_part(path, counted(_records(source, segments, skipped))), skipped
    except DataError as exc:  # the whole shard is unreadable: raised again by the parent
        return ("error", exc.reason, exc.source, exc.index)


def _read_in_parallel(
    staging: Path, source: ShardedSource, plan: list[list[Segment]], total: int, label: str
) -> tuple[list[PartWritten], list[Skipped]]:
    global _reading
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    from tqdm.auto import tqdm

    progress = multiprocessing.get_context("fork").Value("q", 0)
    _reading = (source, progress)
    bar = tqdm(total=total, desc=f"reading {label}", unit="record", leave=False, mininterval=0.5)
    try:
        # An executor, not a Pool: a worker that dies makes it fail instead of waiting forever.
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(len(plan), mp_context=context) as pool:
            futures = [
                pool.submit(_read_part, (staging / f"part-{i}.bin", segments))
                for i, segments in enumerate(plan)
            ]
            pending: Any = futures
            while pending:
                _, pending = wait(pending, timeout=0.5, return_when=FIRST_EXCEPTION)
                bar.update(progress.value - bar.n)
                if any(f.done() and f.exception() for f in futures):
                    break
            results = [f.result() for f in futures]
    except BrokenProcessPool as exc:
        raise MixcoreError(
            "a process reading records into the data cache died (out of memory?); "
            "MIXCORE_MEASURE_WORKERS=1 reads in this process alone"
        ) from exc
    finally:
        _reading = None
        bar.close()
    parts: list[PartWritten] = []
    skipped: list[Skipped] = []
    for result in results:
        if result[0] == "error":
            _, reason, where, index = result
            raise DataError(reason, source=where, index=index)
        part, refused = result
        parts.append(part)
        skipped.extend(refused)
    return parts, skipped
