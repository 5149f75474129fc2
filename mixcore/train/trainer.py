"""PaddleNLP's ``Trainer`` with what mixcore's data needs: problems, per-source loss, data waits.

The subclass changes no optimisation step. It only

* takes the problems a batch carries (:data:`~mixcore.train.data.PROBLEMS_KEY`) before the
  batch reaches the model, counting skipped samples and stopping the run, in the training loop's
  own thread, at a sample that must not be skipped;
* computes, when the data is a mixture, each source's mean token loss from the logits the model
  already returned (no second forward pass), and logs it beside the overall loss as
  ``loss/<source>`` (and ``eval_loss/<source>`` at evaluation).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from mixcore.errors import DataError
from mixcore.train.data import (
    PROBLEMS_KEY,
    SOURCE_IDS_KEY,
    Problem,
    ProblemLog,
    error_from_note,
)

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


class SourceLosses:
    """Running sums of token loss and token count per mixture source."""

    def __init__(self, labels: Sequence[str]) -> None:
        self.labels = list(labels)
        self.reset()

    def reset(self) -> None:
        self.sums = [0.0] * len(self.labels)
        self.counts = [0] * len(self.labels)

    def add(self, logits: Any, labels: Any, source_ids: Any) -> bool:
        """Accumulate one batch; False when the logits do not line up with the labels."""
        import paddle
        import paddle.nn.functional as F

        if logits is None or list(logits.shape[:2]) != list(labels.shape[:2]):
            return False
        with paddle.no_grad():
            token_loss = F.cross_entropy(
                logits.astype("float32"),
                labels.unsqueeze(-1),
                reduction="none",
                ignore_index=IGNORE_INDEX,
            ).squeeze(-1)
            valid = labels != IGNORE_INDEX
            n = len(self.labels)
            ids = paddle.where(valid, source_ids, paddle.full_like(source_ids, n))
            ids = paddle.clip(ids, 0, n).flatten()
            sums = paddle.zeros([n + 1], dtype="float32").scatter_(
                ids, token_loss.flatten(), overwrite=False
            )
            counts = paddle.zeros([n + 1], dtype="float32").scatter_(
                ids, paddle.ones_like(token_loss.flatten()), overwrite=False
            )
            values = paddle.stack([sums, counts]).numpy()
        for i in range(n):
            self.sums[i] += float(values[0, i])
            self.counts[i] += int(values[1, i])
        return True

    def means(self) -> dict[str, float]:
        return {
            label: self.sums[i] / self.counts[i]
            for i, label in enumerate(self.labels)
            if self.counts[i]
        }


def trainer_class() -> type:
    """The :class:`MixcoreTrainer` class (built on first use: it subclasses PaddleNLP's)."""
    from paddlenlp.trainer import Trainer

    class MixcoreTrainer(Trainer):
        """PaddleNLP's Trainer that understands mixcore's batches (see the module docstring)."""

        def __init__(
            self,
            *args: Any,
            problems: ProblemLog,
            source_labels: Sequence[str] = (),
            eval_source_labels: Sequence[str] = (),
            report: Callable[[str], None] = print,
            **kwargs: Any,
        ) -> None:
            super().__init__(*args, **kwargs)
            self.problems = problems
            self.report = report
            # Per-source numbers only mean something for a mixture.
            self.train_losses = SourceLosses(source_labels) if len(source_labels) > 1 else None
            self.eval_losses = (
                SourceLosses(eval_source_labels) if len(eval_source_labels) > 1 else None
            )
            self._misaligned_warned = False

        def take_problems(self, inputs: dict[str, Any]) -> None:
            raw = inputs.pop(PROBLEMS_KEY, None)
            if not raw:
                return
            notes = json.loads(raw)
            for source, index, reason in notes["skipped"]:
                if self.problems.add(Problem(source, index, reason, "batch")):
                    self.report(f"skipped {source} record {index}: {reason}")
            if notes.get("error"):  # a plugin's bug (or mixcore's) met building the batch
                raise error_from_note(notes["error"])
            if notes["fatal"]:
                source, index, reason = notes["fatal"]
                raise DataError(
                    reason
                    + (
                        "; fix the record or set on_bad_sample to 'skip'"
                        if len(notes["skipped"]) == 0
                        else ""
                    ),
                    source=source or "",
                    index=index,
                )

        def training_step(self, model: Any, inputs: dict[str, Any]) -> Any:
            self.take_problems(inputs)
            return super().training_step(model, inputs)

        def prediction_step(self, model: Any, inputs: dict[str, Any], *args: Any, **kw: Any):
            self.take_problems(inputs)
            return super().prediction_step(model, inputs, *args, **kw)

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False):
            source_ids = inputs.pop(SOURCE_IDS_KEY, None)
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True)
            losses = self.train_losses if model.training else self.eval_losses
            if losses is not None and source_ids is not None and "labels" in inputs:
                logits = outputs.get("logits") if isinstance(outputs, dict) else None
                if logits is None and isinstance(outputs, (tuple, list)) and len(outputs) > 1:
                    logits = outputs[1]
                added = losses.add(logits, inputs["labels"], source_ids)
                if not added and not self._misaligned_warned:
                    log.warning("per-source loss is off: the logits do not match the labels")
                    self._misaligned_warned = True
            return (loss, outputs) if return_outputs else loss

        def log(self, logs: dict[str, float], **kwargs: Any) -> None:
            for key, losses in (("loss", self.train_losses), ("eval_loss", self.eval_losses)):
                if key in logs and losses is not None:
                    for label, value in losses.means().items():
                        logs[f"{key}/{label}"] = round(value, 6)
                    losses.reset()
            super().log(logs, **kwargs)

    return MixcoreTrainer


def loss_reporter(report: Callable[[str], None]) -> Any:
    """A Trainer callback that reports each logged loss (and per-source losses) in one line."""
    from paddlenlp.trainer import TrainerCallback

    class LossReporter(TrainerCallback):
        def on_log(
            self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any
        ) -> None:
            logs = logs or {}
            if "loss" in logs:
                lr = logs.get("learning_rate")
                parts = [f"step {state.global_step}/{state.max_steps}: loss {logs['loss']:.4f}"]
                parts += [
                    f"{key.removeprefix('loss/')} {value:.4f}"
                    for key, value in logs.items()
                    if key.startswith("loss/")
                ]
                if lr is not None:
                    parts.append(f"lr {lr:.2e}")
                report(", ".join(parts))
            if "eval_loss" in logs:
                parts = [f"step {state.global_step}: eval loss {logs['eval_loss']:.4f}"]
                parts += [
                    f"{key.removeprefix('eval_loss/')} {value:.4f}"
                    for key, value in logs.items()
                    if key.startswith("eval_loss/")
                ]
                report(", ".join(parts))

    return LossReporter()


class DataWaitMeter:
    """Measures how much of the training steps' time the loop spent waiting for batches.

    Time from the end of one (sub)step, or of logging / evaluation / saving, to the moment the
    next batch is in hand counts as waiting; from then to the end of the (sub)step as compute.
    """

    def __init__(self) -> None:
        self.wait = 0.0
        self.compute = 0.0
        self._mark: float | None = None
        self._loaded: float | None = None

    @property
    def fraction(self) -> float | None:
        total = self.wait + self.compute
        return self.wait / total if total > 0 else None

    def callback(self) -> Any:
        from paddlenlp.trainer import TrainerCallback

        meter = self

        class DataWait(TrainerCallback):
            def _mark(self, *args: Any, **kwargs: Any) -> None:
                meter._mark = time.perf_counter()

            def on_load_data_end(self, *args: Any, **kwargs: Any) -> None:
                now = time.perf_counter()
                if meter._mark is not None:
                    meter.wait += now - meter._mark
                meter._loaded = now

            def _done(self, *args: Any, **kwargs: Any) -> None:
                now = time.perf_counter()
                if meter._loaded is not None:
                    meter.compute += now - meter._loaded
                    meter._loaded = None
                meter._mark = now

            on_epoch_begin = on_log = on_evaluate = on_save = _mark
            on_step_end = on_substep_end = _done

        return DataWait()
