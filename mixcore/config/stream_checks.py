"""Cross-field checks of a config whose ``dataset.train`` streams (``streaming: true``).

A stream has no length, so what the map-style data decides by counting (epochs, ``num_samples``,
``train_samples``) is asked for differently: the run's length is ``max_steps`` and the mixture is
by ``weight`` alone. These checks say so before anything is loaded, each at its JSON path.
"""

from __future__ import annotations

from typing import Any

from mixcore.issues import Issue


def streaming_entries(config: dict[str, Any], split: str = "train") -> list[int]:
    """Indexes of the ``dataset.<split>`` entries that set ``streaming: true``."""
    dataset = config.get("dataset")
    entries = dataset.get(split) if isinstance(dataset, dict) else None
    if not isinstance(entries, list):
        return []
    return [i for i, e in enumerate(entries) if isinstance(e, dict) and e.get("streaming") is True]


def streams(config: dict[str, Any]) -> bool:
    """Whether a prepared config's ``dataset.train`` streams (validation makes it all or none)."""
    entries = config["dataset"].get("train", [])
    return bool(entries) and all(e.get("streaming") is True for e in entries)


def check_streaming(config: dict[str, Any], issues: set[Issue]) -> None:
    """Add the problems of a streamed ``dataset.train`` (none when nothing streams)."""
    for i in streaming_entries(config, "eval"):
        issues.add(
            Issue(
                f"$.dataset.eval[{i}].streaming",
                "only dataset.train can stream; evaluation reads its sources whole: remove "
                "streaming here",
            )
        )
    streamed = streaming_entries(config)
    if not streamed:
        return
    dataset = config["dataset"]
    entries = dataset["train"]
    first = f"dataset.train[{streamed[0]}].streaming"
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            continue
        if i not in streamed:
            issues.add(
                Issue(
                    f"$.dataset.train[{i}]",
                    f"{first} is true: either every dataset.train entry streams or none does; "
                    'add "streaming": true here',
                )
            )
        if "num_samples" in entry:
            issues.add(
                Issue(
                    f"$.dataset.train[{i}].num_samples",
                    "a stream mixes its sources by weight and has no epoch to count samples "
                    "in: give weight instead",
                )
            )
    if "train_samples" in dataset:
        issues.add(
            Issue(
                "$.dataset.train_samples",
                f"{first} is true and a stream has no epoch to share out: remove train_samples "
                "(max_steps sets the run's length)",
            )
        )
    max_steps = config.get("max_steps")
    if not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps <= 0:
        issues.add(
            Issue(
                "$.max_steps",
                f"{first} is true, so the run's length cannot come from the data (a stream has "
                "no epochs): set max_steps to the number of optimizer steps to train",
            )
        )
    workers = config.get("dataloader_num_workers")
    if isinstance(workers, int) and not isinstance(workers, bool) and workers > 0:
        issues.add(
            Issue(
                "$.dataloader_num_workers",
                f"{first} is true and a stream is read in the training process (its position "
                "is saved with every checkpoint): set dataloader_num_workers to 0",
            )
        )
