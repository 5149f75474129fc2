"""PaddleNLP's ``Trainer`` with what mixcore's data needs: problems, per-source loss, data waits.

The subclass changes no optimisation step. It only

* takes the problems a batch carries (:data:`~mixcore.train.data.PROBLEMS_KEY`) before the
  batch reaches the model, counting skipped samples and stopping the run, in the training loop's
  own thread, at a sample that must not be skipped;
* computes, when the data is a mixture, each source's mean token loss from the logits the model
  already returned (no second forward pass), and logs it beside the overall loss as
  ``loss/<source>`` (and ``eval_loss/<source>`` at evaluation), summed over every rank of a
  distributed run before it is logged, so rank 0 reports the run's numbers;
* logs the parts of the loss a model reports under :data:`~mixcore.api.LOSS_TERMS_KEY`
  (BLIP-2's stage-1 ``itc`` / ``itm`` / ``itg``) as ``loss/<name>``, averaged like the loss;
* builds the cosine schedule with the config's ``eta_min`` and ``warmup_start_lr``
  (:mod:`mixcore.train.schedule`), which PaddleNLP's has no arguments for;
* draws each epoch's order from the seed and the epoch number alone
  (:class:`EpochOrderSampler`), so a resumed run sees the batches the uninterrupted run saw,
  whichever epoch it resumes in, starting at the batch it stopped before instead of replaying
  the ones already trained;
* writes checkpoints through :mod:`mixcore.train.checkpoints` (staged, sealed with a
  completeness record, renamed; RNG and scheduler states as JSON, no pickle) and reads them
  back the same way.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mixcore import run_folder
from mixcore.api.constants import IGNORE_INDEX, LOSS_TERMS_KEY
from mixcore.api.errors import DataError
from mixcore.train import checkpoints
from mixcore.train.data import (
    PROBLEMS_KEY,
    SOURCE_IDS_KEY,
    Problem,
    ProblemLog,
    error_from_note,
)
from mixcore.train.schedule import cosine_scheduler
from mixcore.train.tensor_parallel_checkpoints import load_split_optimizer, save_whole

log = logging.getLogger(__name__)


class LossTerms:
    """Running means of the parts of the loss a model reports (:data:`LOSS_TERMS_KEY`)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, outputs: Any) -> None:
        terms = outputs.get(LOSS_TERMS_KEY) if isinstance(outputs, dict) else None
        for name, value in (terms or {}).items():
            self.sums[name] = self.sums.get(name, 0.0) + float(value)
            self.counts[name] = self.counts.get(name, 0) + 1

    def means(self) -> dict[str, float]:
        return {name: self.sums[name] / self.counts[name] for name in self.sums}

    def reduce(self) -> None:
        """Sum every rank's sums and counts, so each rank holds the run's (every rank reports the
        same terms, in the same order once sorted)."""
        names = sorted(self.sums)
        values = sum_across_ranks([self.sums[n] for n in names] + [self.counts[n] for n in names])
        self.sums = dict(zip(names, values[: len(names)], strict=True))
        self.counts = {n: round(c) for n, c in zip(names, values[len(names) :], strict=True)}


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

    def reduce(self) -> None:
        """Sum every rank's token losses and counts, so each rank holds the run's numbers: the
        mean per source is then over every token of every rank's batches."""
        n = len(self.labels)
        values = sum_across_ranks([*self.sums, *self.counts])
        self.sums = values[:n]
        self.counts = [round(c) for c in values[n:]]

    def means(self) -> dict[str, float]:
        return {
            label: self.sums[i] / self.counts[i]
            for i, label in enumerate(self.labels)
            if self.counts[i]
        }


def sum_across_ranks(values: list[float]) -> list[float]:
    """``values`` summed over every process of a distributed run (in float64), element by
    element; unchanged in a single process. Every process must call it at the same point.

    With tensor or pipeline parallel the ranks that share a batch each add it, so sums and
    counts are multiplied alike and the means made of them stay the means over the run's data.
    """
    import paddle.distributed as dist

    if not values or dist.get_world_size() <= 1:
        return list(values)
    import paddle

    tensor = paddle.to_tensor(np.asarray(values, dtype="float64"))
    dist.all_reduce(tensor)
    return [float(v) for v in tensor.numpy()]


def epoch_order(size: int, seed: int, epoch: int) -> np.ndarray:
    """The order of a dataset of ``size`` items in ``epoch``: a function of the seed and epoch."""
    return np.random.default_rng([seed, epoch]).permutation(size)


def epoch_order_sampler(
    dataset: Any,
    *,
    batch_size: int,
    seed: int,
    drop_last: bool,
    num_replicas: int,
    rank: int,
    accumulation_steps: int = 1,
) -> Any:
    """A batch sampler whose shuffled order depends on ``(seed, epoch)`` only, and that resumes
    where a run stopped without reading the batches before.

    Paddle's samplers draw from the global RNG, which a resumed run has not consumed the way the
    interrupted one did. PaddleNLP resumes a sampler of its own class by calling
    ``set_epoch(consumed_samples=...)`` (samples consumed by all ranks since the run began) and
    otherwise replays every batch already trained, loading and preprocessing each one to throw
    it away: minutes to hours at a late step. This one is of PaddleNLP's class and turns the
    consumed count into an epoch and a batch within it, as PaddleNLP's own step arithmetic does
    (``global_step // updates_per_epoch``, then ``global_step % updates_per_epoch`` updates of
    ``accumulation_steps`` batches), so the resumed run sees exactly the batches the
    uninterrupted one would have. Every ``batch_size * num_replicas`` items of the epoch's
    order form one global batch, of which rank ``r`` takes the ``r``-th share, so ``n`` ranks
    train on the batches one process with ``n`` times the batch size would.
    """
    from paddlenlp.utils.batch_sampler import DistributedBatchSampler

    class EpochOrderSampler(DistributedBatchSampler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.skip_batches = 0

        def set_epoch(self, epoch: int = 0, consumed_samples: int = 0) -> None:
            per_update = self.batch_size * self.nranks * accumulation_steps
            updates = consumed_samples // per_update
            per_epoch = max(len(self) // accumulation_steps, 1)
            self.epoch = epoch + updates // per_epoch
            self.skip_batches = (updates % per_epoch) * accumulation_steps
            self.consumed_samples = 0

        def __iter__(self) -> Iterator[list[int]]:
            order = epoch_order(len(self.dataset), seed, self.epoch)
            if self.total_size > len(order):  # every rank gets as many: repeat the first items
                order = np.concatenate([order, order[: self.total_size - len(order)]])
            step = self.batch_size * self.nranks
            first = self.skip_batches * step
            self.skip_batches = 0
            for start in range(first, self.total_size, step):
                chunk = order[start : start + step]
                if len(chunk) < step and self.drop_last:
                    break
                # The last, short global batch is shared evenly (its length is a multiple of
                # the ranks), so that no rank waits for one that has nothing left.
                share = len(chunk) // self.nranks
                yield chunk[self.local_rank * share : (self.local_rank + 1) * share].tolist()
            self.epoch += 1

    return EpochOrderSampler(
        dataset,
        batch_size=batch_size,
        num_replicas=num_replicas,
        rank=rank,
        shuffle=True,
        drop_last=drop_last,
    )


def tensor_shapes(model: Any, tensor_parallel: Any = None) -> dict[str, list[int]]:
    """Names and shapes of what a checkpoint of ``model`` holds (the adapter's, under LoRA):
    whole shapes, also of a model split by ``tensor_parallel`` (its checkpoints are whole)."""
    state = (
        model.get_trainable_state_dict()
        if hasattr(model, "get_trainable_state_dict")
        else model.state_dict()
    )
    whole = tensor_parallel.full_shapes if tensor_parallel is not None else {}
    return {name: whole.get(name, [int(d) for d in tensor.shape]) for name, tensor in state.items()}


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
            checkpoint_meta: dict[str, Any] | None = None,
            min_lr: float = 0.0,
            warmup_start_lr: float = 0.0,
            tensor_parallel: Any = None,
            **kwargs: Any,
        ) -> None:
            super().__init__(*args, **kwargs)
            # A model split over a tensor-parallel group (kit.tensor_parallel.TensorParallelRank):
            # its checkpoints are gathered and written whole (tensor_parallel_checkpoints).
            self.tensor_parallel = tensor_parallel
            self.checkpoint_meta = dict(checkpoint_meta or {})
            self.min_lr, self.warmup_start_lr = float(min_lr), float(warmup_start_lr)
            self._rng_from: str | None = None  # checkpoint whose RNG state is still to restore
            self.problems = problems
            self.report = report
            # Per-source numbers only mean something for a mixture.
            self.train_losses = SourceLosses(source_labels) if len(source_labels) > 1 else None
            self.eval_losses = (
                SourceLosses(eval_source_labels) if len(eval_source_labels) > 1 else None
            )
            self._misaligned_warned = False
            self.loss_terms = LossTerms()

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
            if self._rng_from is not None:  # resumed at an epoch boundary: nothing was skipped
                self._load_rng_state(self._rng_from)
            return super().training_step(model, inputs)

        def create_scheduler(self, num_training_steps: int) -> Any:
            from paddlenlp.trainer.trainer_utils import SchedulerType

            cosine = SchedulerType(self.args.lr_scheduler_type) == SchedulerType.COSINE
            if self.lr_scheduler is None and cosine and (self.min_lr or self.warmup_start_lr):
                self.lr_scheduler = cosine_scheduler(
                    self.args,
                    num_training_steps,
                    min_lr=self.min_lr,
                    warmup_start_lr=self.warmup_start_lr,
                )
            return super().create_scheduler(num_training_steps)

        # -- order of the data ---------------------------------------------------------------

        def _get_train_sampler(self) -> Any:
            if self.train_dataset is None:
                return None
            return epoch_order_sampler(
                self.train_dataset,
                batch_size=self.args.per_device_train_batch_size,
                seed=self.args.seed,
                drop_last=self.args.dataloader_drop_last,
                num_replicas=max(self.args.dataset_world_size, 1),
                rank=max(self.args.dataset_rank, 0),
                accumulation_steps=self.args.gradient_accumulation_steps,
            )

        # -- checkpoints -------------------------------------------------------------------------

        def train(self, resume_from_checkpoint: str | None = None, **kwargs: Any) -> Any:
            self._rng_from = resume_from_checkpoint
            return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

        def _load_rng_state(self, checkpoint: str | None) -> None:
            # PaddleNLP calls this once the batches already trained are skipped.
            if checkpoint is None or self._rng_from is None:
                return
            self._rng_from = None
            path = Path(checkpoint) / rng_file(self.args.process_index)
            checkpoints.restore_rng_state(json.loads(path.read_text(encoding="utf-8")))

        def _wrap_model(self, model: Any, training: bool = True) -> Any:
            wrapped = super()._wrap_model(model, training=training)
            if self.tensor_parallel is not None and hasattr(wrapped, "_pre_forward"):
                # Fleet's TensorParallel sends the first rank's batch to the others before each
                # forward, with device copies that only GPUs and XPUs have: over gloo, the same
                # with paddle.distributed.broadcast.
                from mixcore.kit.tensor_parallel import on_cpu

                group = self.tensor_parallel.group
                if on_cpu():
                    wrapped._pre_forward = lambda *a, **kw: broadcast_batch(group, a, kw)
            return wrapped

        def _load_from_checkpoint(self, resume_from_checkpoint: Any = None) -> None:
            if self.tensor_parallel is not None:
                return  # the whole weights were read before the model was split (run.py)
            super()._load_from_checkpoint(resume_from_checkpoint)

        def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
            if checkpoint is None:
                return
            if self.tensor_parallel is not None:
                state = load_split_optimizer(self.model, self.tensor_parallel, checkpoint)
                self.optimizer.set_state_dict(state)
                scheduler = Path(checkpoint) / checkpoints.SCHEDULER_FILE
                self.lr_scheduler.set_state_dict(json.loads(scheduler.read_text(encoding="utf-8")))
                return
            from paddlenlp.trainer.plugins.unified_checkpoint import (
                load_single_card_optimizer,
                load_unified_optimizer,
            )
            from paddlenlp.trainer.utils.helper import broadcast_dp_optimizer

            if self.args.world_size > 1 and not self.args.use_hybrid_parallel:
                # Data parallel alone: every rank's optimizer is the whole one, read by the first
                # rank as one card reads it and broadcast below. PaddleNLP's loader for several
                # ranks expects optimizer states for every tensor of the model's state dict and
                # stops with a KeyError at a buffer (the resampler's fixed positions) or a frozen
                # weight.
                state = None
                if self.args.data_parallel_rank == 0:
                    state = load_single_card_optimizer(
                        self.args, self.model, self.optimizer, checkpoint
                    )
            else:
                state = load_unified_optimizer(
                    args=self.args,
                    model=self.model,
                    optimizer=self.optimizer,
                    resume_from_checkpoint=checkpoint,
                    safe_serialization=True,
                )
            if self.args.world_size > 1:
                state = broadcast_dp_optimizer(state)
            self.optimizer.set_state_dict(state)
            scheduler = Path(checkpoint) / checkpoints.SCHEDULER_FILE
            self.lr_scheduler.set_state_dict(json.loads(scheduler.read_text(encoding="utf-8")))

        def _save_checkpoint(self, model: Any, metrics: dict[str, float] | None = None) -> None:
            from paddlenlp.peft import LoRAModel
            from paddlenlp.trainer.plugins.unified_checkpoint import save_unified_optimizer

            args = self.args
            run_dir = Path(args.output_dir)
            step = self.state.global_step
            staging = checkpoints.staging_folder(run_dir, step)
            final = run_dir / f"checkpoint-{step}"
            primary = args.process_index == 0
            if primary and staging.exists():  # left by a save that was killed
                shutil.rmtree(staging)
            self._barrier()
            try:
                if self.tensor_parallel is not None:
                    save_whole(
                        args, self.model, self.optimizer, self.tensor_parallel, staging, primary
                    )
                else:
                    self.save_model(str(staging), isinstance(self.model, LoRAModel))
                writes_optimizer = (
                    self.dp_group.rank <= 0 if args.use_hybrid_parallel else args.should_save
                )
                if self.tensor_parallel is not None:
                    writes_optimizer = False  # written whole above
                if not args.ignore_save_lr_and_optim and writes_optimizer:
                    save_unified_optimizer(
                        args, self.model, self.optimizer, str(staging), safe_serialization=True
                    )
                if args.should_save:
                    checkpoints.write_json_atomic(
                        staging / checkpoints.SCHEDULER_FILE, self.lr_scheduler.state_dict()
                    )
                self._track_best(metrics, final)
                if args.should_save:
                    self.state.save_to_json(str(staging / "trainer_state.json"))
                staging.mkdir(parents=True, exist_ok=True)
                checkpoints.write_json_atomic(
                    staging / rng_file(args.process_index), checkpoints.rng_state()
                )
                # A streamed dataset.train: the position of what was trained on (stream.py).
                save_stream = getattr(self.train_dataset, "save_state", None)
                if save_stream is not None and args.should_save:
                    save_stream(staging, step, args)
                self._barrier()
                if primary:
                    meta = {
                        **self.checkpoint_meta,
                        "global_step": step,
                        "world_size": args.world_size,
                        "tensors": tensor_shapes(self.model, self.tensor_parallel),
                    }
                    checkpoints.seal(staging, final, meta)
                    self._rotate_checkpoints(use_mtime=False, output_dir=str(run_dir))
                self._barrier()
            except Exception as exc:  # disk full (an OSError, or safetensors' own error), ...
                if primary:
                    shutil.rmtree(staging, ignore_errors=True)
                found, _ = run_folder.latest_complete(run_dir)
                last = (
                    f"the last complete checkpoint is {found.path}, intact"
                    if found
                    else "no complete checkpoint was saved before"
                )
                raise checkpoints.CheckpointSaveError(
                    f"could not save checkpoint-{step} in {run_dir}: "
                    f"{getattr(exc, 'strerror', None) or exc}; the partial save was removed and "
                    f"{last}. Free "
                    "space (or fix the folder), then continue with resume_from_checkpoint: true"
                ) from None

        def _track_best(self, metrics: dict[str, float] | None, final: Path) -> None:
            # As PaddleNLP's own _save_checkpoint does, pointing at the final folder's name.
            name = self.args.metric_for_best_model
            if metrics is None or name is None:
                return
            key = name if name.startswith("eval_") else f"eval_{name}"
            value = metrics[key]
            best = self.state.best_metric
            better = best is None or (value > best if self.args.greater_is_better else value < best)
            if better or self.state.best_model_checkpoint is None:
                self.state.best_metric = value
                self.state.best_model_checkpoint = str(final)

        def _barrier(self) -> None:
            if self.args.world_size > 1:
                import paddle.distributed as dist

                dist.barrier()

        def prediction_step(self, model: Any, inputs: dict[str, Any], *args: Any, **kw: Any):
            self.take_problems(inputs)
            return super().prediction_step(model, inputs, *args, **kw)

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False):
            source_ids = inputs.pop(SOURCE_IDS_KEY, None)
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True)
            if model.training:
                self.loss_terms.add(outputs)
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
            # PaddleNLP logs on every rank at the same steps, so the sums are reduced here.
            distributed = self.args.world_size > 1
            for key, losses in (("loss", self.train_losses), ("eval_loss", self.eval_losses)):
                if key in logs and losses is not None:
                    if distributed:
                        losses.reduce()
                    for label, value in losses.means().items():
                        logs[f"{key}/{label}"] = round(value, 6)
                    losses.reset()
            if "loss" in logs:
                if distributed:
                    self.loss_terms.reduce()
                for name, value in self.loss_terms.means().items():
                    logs[f"loss/{name}"] = round(value, 6)
                self.loss_terms.reset()
            super().log(logs, **kwargs)

    return MixcoreTrainer


def broadcast_batch(group: Any, *values: Any) -> None:
    """Every tensor in ``values`` (nested lists, tuples, dicts) set to the group's first rank's."""
    import paddle
    import paddle.distributed as dist

    for value in values:
        if isinstance(value, paddle.Tensor):
            dist.broadcast(value, src=group.ranks[0], group=group)
        elif isinstance(value, dict):
            broadcast_batch(group, *value.values())
        elif isinstance(value, (list, tuple)):
            broadcast_batch(group, *value)


def rng_file(process_index: int) -> str:
    return (
        checkpoints.RNG_FILE
        if process_index == 0
        else checkpoints.RNG_FILE.replace(".json", f".{process_index}.json")
    )


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


def final_step_log() -> Any:
    """A Trainer callback that logs the training loss at the last step too.

    PaddleNLP logs every ``logging_steps`` steps only, so a run shorter than ``logging_steps``
    logged no loss at all, and a longer one lost the loss of the steps after its last multiple.
    Asking for a log at the last step (a flag, so a last step that is a multiple of
    ``logging_steps`` is logged once) closes both gaps. With ``logging_strategy`` other than
    ``steps`` PaddleNLP's own schedule stands.
    """
    from paddlenlp.trainer import TrainerCallback
    from paddlenlp.trainer.trainer_utils import IntervalStrategy

    class LogLastStep(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            steps = IntervalStrategy(args.logging_strategy) == IntervalStrategy.STEPS
            if steps and state.max_steps > 0 and state.global_step >= state.max_steps:
                control.should_log = True
            return control

    return LogLastStep()


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
