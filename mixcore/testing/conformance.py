"""Conformance checks: the contract every model plugin keeps, run against a real model.

A model author calls :func:`check_model_conformance` from a test of their plugin::

    report = check_model_conformance(
        "my_model", "my_model/tiny", options={"random_init": True}, samples=samples,
        workdir=tmp_path,
    )
    report.raise_for_failures()

Each check loads nothing of its own: the model is loaded once through the registry, exactly as
``mixcore train`` loads it, and every check goes through the registry's hooks (so the plugin's
real dispatch is tested, wrappers included). Checks that change the model (LoRA, training) work
on a copy, so the checks are independent of each other and of their order.

Paddle is imported only when a check runs; importing this module is cheap.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mixcore.api.constants import IGNORE_INDEX
from mixcore.api.errors import MixcoreError, UsageError
from mixcore.api.records import ModelBundle, Sample

__all__ = [
    "CHECKS",
    "CheckResult",
    "ConformanceFailure",
    "ConformanceReport",
    "check_model_conformance",
]

log = logging.getLogger(__name__)

#: Every check, in the order they run.
CHECKS = (
    "labels_shifted",
    "sample_length",
    "packed_equals_unpacked",
    "save_load_round_trip",
    "lora_merge_round_trip",
    "generation_learns",
    "tensor_parallel_split",
    "export_round_trip",
)
#: The capability a model entry must claim for a check to run by default.
REQUIRES = {
    "packed_equals_unpacked": "packing",
    "lora_merge_round_trip": "lora",
    "generation_learns": "inference",
    "tensor_parallel_split": "tensor_parallel",
    "export_round_trip": "deploy",
}
#: tensor_parallel_split: the degrees tried, and how far the simulated logits may stray.
TENSOR_PARALLEL_DEGREES = (2, 4)
TENSOR_PARALLEL_ATOL = 1e-5
#: export_round_trip: the export's length and how many tokens both engines write.
EXPORT_LENGTH = 128
EXPORT_NEW_TOKENS = 8
#: The feature an encoder-decoder model's labels align with (its decoder's input ids); its
#: sample length is that of ``input_ids`` (the encoder's) plus this.
DECODER_KEY = "decoder_input_ids"
#: "Do not truncate": longer than any sample a check uses.
UNLIMITED = 2**31 - 1
#: Logits of a reloaded checkpoint may differ from the saved model's by this much at most.
ROUND_TRIP_ATOL = 1e-6
#: The seed set before the model is loaded (a random-init preset) and before LoRA wraps it.
SEED = 42
#: generation_learns: optimiser steps at most, how often to try generating, learning rate.
TRAIN_STEPS = 60
GENERATE_EVERY = 10
LEARNING_RATE = 1e-2


@dataclass
class CheckResult:
    """The outcome of one check: its name, whether it passed, and what was expected and found."""

    name: str
    passed: bool
    message: str
    seconds: float = 0.0

    def __str__(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'} {self.name}: {self.message}"


@dataclass
class ConformanceReport:
    """What :func:`check_model_conformance` found: one :class:`CheckResult` per check run, in
    :data:`CHECKS` order, and the checks left out because the model does not claim the
    capability they need (``skipped``: check name -> why)."""

    model: str
    checks: list[CheckResult] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """True when every check that ran passed."""
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.passed]

    @property
    def names(self) -> list[str]:
        """The names of the checks that ran."""
        return [c.name for c in self.checks]

    def __getitem__(self, name: str) -> CheckResult:
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(f"check {name!r} did not run (ran: {', '.join(self.names) or 'none'})")

    def raise_for_failures(self) -> None:
        """Raise :class:`ConformanceFailure` listing every failed check, if any failed."""
        if not self.passed:
            raise ConformanceFailure(self)

    def __str__(self) -> str:
        lines = [f"conformance of model {self.model!r}:"]
        lines += [f"  {check}" for check in self.checks]
        lines += [f"  SKIP {name}: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines)


class ConformanceFailure(MixcoreError, AssertionError):
    """A model broke its contract: the message lists every failed check with what was expected
    and what was found. An ``AssertionError``, so a test framework reports it as a failure."""

    def __init__(self, report: ConformanceReport) -> None:
        self.report = report
        failed = report.failures
        lines = [f"model {report.model!r} failed {len(failed)} conformance check(s):"]
        lines += [f"- {c.name}: {c.message}" for c in failed]
        super().__init__("\n".join(lines))


class _Failed(Exception):
    """Raised inside a check: the contract is broken; the message says how."""


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------


def check_model_conformance(
    model_name: str,
    source: str,
    *,
    options: dict[str, Any] | None = None,
    samples: Sequence[Sample],
    workdir: Path,
    plugins: Sequence[Any] | None = None,
    checks: Sequence[str] | None = None,
    atol: float = 1e-4,
) -> ConformanceReport:
    """Run the conformance checks for model ``model_name`` loaded from ``source``.

    :param model_name: the registered model name.
    :param source: the ``model_name_or_path`` to load: a preset alias or a checkpoint folder.
    :param options: the ``model_options`` to load it with (a tiny random preset, typically).
    :param samples: at least two training samples, each ending with an assistant reply
        (images allowed; the packing check packs them all into one sequence, which must fit the
        model's context, and ``generation_learns`` uses the first).
    :param workdir: a scratch folder (pytest's ``tmp_path``); checks write checkpoints there.
    :param plugins: the plugins to build the registry from, exactly these (plus the core's
        defaults): in-memory plugins from :func:`mixcore.testing.make_plugin`, ``(name,
        object)`` pairs, or plugin objects such as a :class:`mixcore.kit.model_plugin.ModelPlugin`
        instance. None: every installed plugin (entry points; ``MIXCORE_PLUGINS`` is not read).
    :param checks: names from :data:`CHECKS` to run; None runs every check the model's claimed
        capabilities allow (``packed_equals_unpacked`` needs ``packing``,
        ``lora_merge_round_trip`` ``lora``, ``generation_learns`` ``inference``). A check named
        here runs even when its capability is not claimed.
    :param atol: the tolerance of ``packed_equals_unpacked`` (per-sample summed token losses)
        and ``lora_merge_round_trip`` (logits).
    :return: a :class:`ConformanceReport`; call ``raise_for_failures()`` on it in a test.

    The checks:

    ``labels_shifted``
        Every sample's ``preprocess_sample`` features hold ``input_ids`` and ``labels`` of one
        length; ``labels[-1]`` is ``IGNORE_INDEX``; wherever ``labels[t]`` is not, it equals
        ``input_ids[t + 1]``; each sample has a trainable label. And the model does not shift
        again: given labels it returns a loss (the trainer needs one), and that is not the
        mean token loss of its logits against the labels shifted once more (a loss that is
        neither that nor the mean against the labels as they are is noted, not failed). For an
        encoder-decoder model (features with ``decoder_input_ids``) the labels are checked
        against the decoder's ids instead of ``input_ids``.
    ``sample_length``
        The ``sample_length`` hook (when implemented) gives ``len(input_ids)`` (plus
        ``len(decoder_input_ids)`` for an encoder-decoder model) of the untruncated features.
        It is asked again with the image files gone; reading them is noted in the message
        (planning packs gets slow), not failed.
    ``packed_equals_unpacked``
        The samples packed into one sequence (:func:`mixcore.kit.packing.pack_features`),
        collated by the plugin and run through the model give each sample the summed token loss
        it gets collated and run alone, within ``atol``; no trainable label sits at the end of a
        packed sample (it would target the next sample's first token).
    ``save_load_round_trip``
        ``save_model`` into a folder of ``workdir``; the registry resolves that folder to this
        model (its ``config.json`` ``model_type``); ``load_model`` of it with no options gives
        the same features, the same weights and the same logits (within 1e-6).
    ``lora_merge_round_trip``
        The model wrapped with LoRA as ``mixcore train`` wraps it
        (:func:`mixcore.train.assemble.apply_lora` with the config's defaults: rank 8, the
        plugin's default targets), its LoRA ``B`` matrices randomised, changes the logits;
        the adapter saved
        (:func:`mixcore.lora.save_lora_adapter`) and merged into the base as ``mixcore
        merge-lora`` merges it (:func:`mixcore.lora.merge_lora`) gives the LoRA model's logits
        within ``atol``.
    ``generation_learns``
        A copy of the model trained on the first sample alone (AdamW, learning rate 1e-2, up
        to 60 steps, seeded) answers that sample's prompt (its messages without the final
        reply) through the ``generate`` hook with exactly the reply (both stripped).
    ``export_round_trip``
        ``mixcore export`` of the model (loaded again from ``source`` with ``options``, at
        ``--max-length`` 128, each saved part verified through Paddle Inference against its
        layer on probe inputs) answers the first sample's prompt through
        ``infer --engine paddle-inference`` with the text ``generate`` writes (greedy, 8 new
        tokens).

    The forward contract the checks assume is the one the trainer relies on
    (``MixcoreTrainer.compute_loss`` on PaddleNLP's ``Trainer.compute_loss``): a batch from
    the plugin's ``collate_batch`` (numpy arrays, turned into tensors by
    :func:`mixcore.kit.collation.to_tensors`) goes to ``bundle.model(**batch)``, which returns
    either a PaddleNLP ``ModelOutput`` (a dict) with ``logits`` and, when the batch has
    ``labels``, ``loss``; or a tuple ``(loss, logits, ...)`` (with labels) / ``(logits, ...)``.
    The logits are ``[batch, length, vocab]``, position ``t`` scored against ``labels[t]``
    as they are (the labels come shifted; the model shifts nothing). The trainer takes the loss
    from ``outputs["loss"]`` of a dict, else ``outputs[0]``, and its per-source losses take the
    logits from ``outputs["logits"]``, else ``outputs[1]``; an object that only has a
    ``.logits`` attribute gives these checks logits but the trainer no loss, and fails
    ``labels_shifted``.

    Checks run on CPU in seconds for a tiny model. Models are copied (``copy.deepcopy``) for
    the LoRA and training checks, so use a tiny configuration.
    """
    selected = _select_checks(checks)
    if len(samples) < 2:
        raise UsageError(f"conformance checks need at least 2 samples, got {len(samples)}")
    for i, sample in enumerate(samples):
        if not sample.messages or sample.messages[-1].role != "assistant":
            raise UsageError(f"conformance sample {i} must end with an assistant reply")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    report = ConformanceReport(model=model_name)

    try:
        context = _Context.load(model_name, source, options or {}, samples, workdir, plugins, atol)
    except Exception as exc:  # the model cannot even be loaded: every check fails with why
        reason = f"not run: the model did not load: {_describe(exc)}"
        report.checks = [CheckResult(name, False, reason) for name in selected or CHECKS]
        return report

    capabilities = context.entry.capabilities
    for name in CHECKS:
        if selected is not None and name not in selected:
            continue
        needs = REQUIRES.get(name)
        if selected is None and needs and not capabilities.get(needs):
            report.skipped[name] = f"model {model_name!r} does not claim {needs!r}"
            continue
        report.checks.append(_run(name, _CHECK_FUNCTIONS[name], context))
    return report


def _select_checks(checks: Sequence[str] | None) -> list[str] | None:
    if checks is None:
        return None
    if isinstance(checks, str):
        checks = [checks]
    unknown = [c for c in checks if c not in CHECKS]
    if unknown:
        raise UsageError(
            f"unknown conformance check(s) {', '.join(map(repr, unknown))}; "
            f"the checks are: {', '.join(CHECKS)}"
        )
    return list(checks)


def _run(name: str, check: Callable[[_Context], str], context: _Context) -> CheckResult:
    started = time.perf_counter()
    try:
        message, passed = check(context), True
    except _Failed as failure:
        message, passed = str(failure), False
    except Exception as exc:
        message, passed = f"raised {_describe(exc)}", False
    seconds = round(time.perf_counter() - started, 3)
    log.debug("conformance %s %s in %.1fs", name, "passed" if passed else "FAILED", seconds)
    return CheckResult(name, passed, message, seconds)


def _describe(exc: BaseException) -> str:
    """``Type: message (file.py:line)`` of the innermost frame, for a user's exception."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" ({Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


# --------------------------------------------------------------------------------------------------
# The loaded model and what every check shares
# --------------------------------------------------------------------------------------------------


def _as_plugin(plugin: Any) -> tuple[str, Any]:
    if isinstance(plugin, tuple) and len(plugin) == 2 and isinstance(plugin[0], str):
        return plugin
    name = getattr(plugin, "__name__", None)  # a module
    if isinstance(name, str):
        return name.rsplit(".", 1)[-1], plugin
    name = getattr(plugin, "name", None)  # a ModelPlugin: its model's name
    return (name if isinstance(name, str) else type(plugin).__name__.lower()), plugin


def _registry(plugins: Sequence[Any] | None) -> Any:
    from mixcore.testing.plugins import make_registry

    if plugins is None:
        return make_registry(entry_points=True)
    return make_registry(*(_as_plugin(p) for p in plugins))


@dataclass
class _Context:
    model_name: str
    source: str
    options: dict[str, Any]
    samples: Sequence[Sample]
    workdir: Path
    atol: float
    registry: Any
    entry: Any
    bundle: ModelBundle
    _features: list[dict[str, Any]] | None = None

    @classmethod
    def load(
        cls,
        model_name: str,
        source: str,
        options: dict[str, Any],
        samples: Sequence[Sample],
        workdir: Path,
        plugins: Sequence[Any] | None,
        atol: float,
    ) -> _Context:
        import paddle

        registry = _registry(plugins)
        try:
            entry = registry.model(model_name)
        except LookupError:
            broken = [f"{p.name}: {p.reason}" for p in registry.plugins.values() if not p.ok]
            raise MixcoreError(
                f"no healthy plugin registers model {model_name!r}"
                + (f"; broken plugins: {'; '.join(broken)}" if broken else "")
            ) from None
        paddle.seed(SEED)  # a random-init preset is the same model every time
        bundle = registry.hook.load_model(model_name=entry.name, source=source, options=options)
        if bundle is None:
            raise MixcoreError(f"no plugin's load_model answered for model {entry.name!r}")
        return cls(model_name, source, options, samples, workdir, atol, registry, entry, bundle)

    # -- hooks -------------------------------------------------------------------------------

    def preprocess(self, sample: Sample, bundle: ModelBundle | None = None) -> dict[str, Any]:
        features = self.registry.hook.preprocess_sample(
            model_name=self.entry.name,
            sample=sample,
            bundle=bundle or self.bundle,
            max_length=UNLIMITED,
        )
        if features is None:
            raise _Failed(f"no plugin's preprocess_sample answered for model {self.entry.name!r}")
        for key in ("input_ids", "labels"):
            if key not in features:
                raise _Failed(f"preprocess_sample gave no {key!r} (keys: {sorted(features)})")
        return features

    @property
    def features(self) -> list[dict[str, Any]]:
        """Every sample's features, untruncated (computed once)."""
        if self._features is None:
            self._features = [self.preprocess(s) for s in self.samples]
        return self._features

    def collate(self, features: Sequence[dict[str, Any]], bundle: ModelBundle | None = None):
        """The plugin's batch as Paddle tensors."""
        from mixcore.kit.collation import to_tensors

        batch = self.registry.hook.collate_batch(
            model_name=self.entry.name, features=list(features), bundle=bundle or self.bundle
        )
        if batch is None:
            raise _Failed(f"no collate_batch answered for model {self.entry.name!r}")
        return to_tensors(batch)

    def fresh_folder(self, prefix: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=self.workdir))


# --------------------------------------------------------------------------------------------------
# Forward passes and losses, the way the trainer sees them
# --------------------------------------------------------------------------------------------------


def _outputs(out: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
    """``(loss or None, logits)`` from what ``model(**batch)`` returned (see the contract in
    :func:`check_model_conformance`), the logits checked against the labels' shape."""
    import paddle

    with_labels = "labels" in batch
    loss = logits = None
    if isinstance(out, dict):
        loss, logits = out.get("loss"), out.get("logits")
    elif hasattr(out, "logits"):  # logits readable, but the trainer finds no loss in it
        logits = out.logits
    elif isinstance(out, (tuple, list)) and out:
        first = out[0]
        if with_labels and len(out) > 1 and isinstance(first, paddle.Tensor) and first.size == 1:
            loss, logits = first, out[1]
        else:
            logits = first
    elif isinstance(out, paddle.Tensor):
        logits = out
    if not isinstance(logits, paddle.Tensor):
        raise _Failed(
            f"the model returned {type(out).__name__} without logits; expected a ModelOutput "
            "(dict) with 'logits' (and 'loss' given labels) or a tuple (loss, logits, ...)"
        )
    reference = batch.get("labels", batch.get("input_ids"))
    if reference is not None and (
        logits.ndim != 3 or list(logits.shape[:2]) != list(reference.shape[:2])
    ):
        raise _Failed(
            f"logits have shape {list(logits.shape)} for labels of shape "
            f"{list(reference.shape)}; expected [batch, length, vocab] lined up with the "
            "labels (shifted in the features, not in the model)"
        )
    return loss, logits


def _forward(model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
    """``(loss or None, logits)`` of an evaluation-mode forward pass without gradients."""
    import paddle

    was_training = model.training
    model.eval()
    try:
        with paddle.no_grad():
            return _outputs(model(**batch), batch)
    finally:
        if was_training:
            model.train()


def _token_losses(logits: Any, labels: Any) -> Any:
    """Cross-entropy of every position against its label as it is (0 where ignored), numpy
    float64 ``[batch, length]``: what the trainer's per-source losses compute."""
    import numpy as np
    import paddle.nn.functional as F

    losses = F.cross_entropy(
        logits.astype("float32"),
        labels.unsqueeze(-1),
        reduction="none",
        ignore_index=IGNORE_INDEX,
    ).squeeze(-1)
    return np.asarray(losses.numpy(), dtype=np.float64) * (labels.numpy() != IGNORE_INDEX)


# --------------------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------------------


def _check_labels_shifted(ctx: _Context) -> str:
    import numpy as np

    problems, trained = [], []
    for i, f in enumerate(ctx.features):
        # An encoder-decoder model's labels belong to its decoder's sequence.
        key = DECODER_KEY if DECODER_KEY in f else "input_ids"
        ids, labels = np.asarray(f[key]), np.asarray(f["labels"])
        if ids.ndim != 1 or ids.shape != labels.shape:
            problems.append(
                f"sample {i}: {key} {list(ids.shape)} and labels {list(labels.shape)} "
                "must be 1-D and of one length"
            )
            continue
        if len(labels) and labels[-1] != IGNORE_INDEX:
            problems.append(
                f"sample {i}: labels[-1] is {int(labels[-1])}, expected {IGNORE_INDEX} "
                "(the last position has no next token)"
            )
        live = np.nonzero(labels[:-1] != IGNORE_INDEX)[0]
        wrong = [int(t) for t in live if labels[t] != ids[t + 1]]
        if wrong:
            t = wrong[0]
            hint = (
                "; labels equal input_ids there: they are not shifted"
                if all(labels[w] == ids[w] for w in wrong)
                else ""
            )
            problems.append(
                f"sample {i}: labels[t] != input_ids[t+1] at {len(wrong)} of {len(live)} "
                f"trainable positions (first t={t}: label {int(labels[t])}, next token "
                f"{int(ids[t + 1])}){hint}; labels[t] must be the token after t"
            )
        count = int((labels != IGNORE_INDEX).sum())
        if count == 0:
            problems.append(f"sample {i}: no trainable label (every label is {IGNORE_INDEX})")
        trained.append(count)
    if problems:
        raise _Failed(_summary(problems))
    note = _loss_is_not_shifted_again(ctx)
    return f"{len(trained)} samples, {sum(trained)} trainable labels, all next-token{note}"


def _summary(problems: Sequence[str], most: int = 3) -> str:
    more = len(problems) - most
    return "; ".join(problems[:most]) + (f"; and {more} more" if more > 0 else "")


def _loss_is_not_shifted_again(ctx: _Context) -> str:
    """Fail when the model's own loss is the loss of labels shifted once more."""
    import numpy as np

    batch = ctx.collate(ctx.features)
    loss, logits = _forward(ctx.bundle.model, batch)
    if loss is None:
        raise _Failed(
            "given labels, the model returned no loss where mixcore train (PaddleNLP's "
            "Trainer.compute_loss) looks for it: outputs['loss'] of a ModelOutput (a dict), or "
            "outputs[0] of a tuple"
        )
    labels = batch["labels"]
    as_is = _token_losses(logits, labels)
    count = (labels.numpy() != IGNORE_INDEX).sum()
    expected = float(as_is.sum() / max(count, 1))
    again = _token_losses(logits[:, :-1], labels[:, 1:])
    count_again = (labels[:, 1:].numpy() != IGNORE_INDEX).sum()
    shifted = float(again.sum() / max(count_again, 1))
    found = float(np.asarray(loss.astype("float32").numpy()).reshape(-1)[0])
    tol = max(ctx.atol, 1e-5) * max(1.0, abs(expected))
    if abs(found - expected) <= tol:
        return "; the model's loss is the mean token loss of its logits and labels"
    if abs(found - shifted) <= tol:
        raise _Failed(
            f"the model's loss {found:.6f} is that of the labels shifted once more "
            f"({shifted:.6f}), not of the labels as given ({expected:.6f}): the features "
            "carry shifted labels, so the model must not shift them again"
        )
    per_position = float(as_is.sum() / max(as_is.size, 1))
    if abs(found - per_position) <= tol:
        return (
            f"; note: the model's loss {found:.6f} is the token loss averaged over every position, "
            f"ignored ones included (the mean over trained tokens is {expected:.6f}): Paddle's "
            "cross_entropy(reduction='mean', ignore_index=...) divides so"
        )
    return (
        f"; note: the model's loss {found:.6f} is not the mean token loss of its logits "
        f"({expected:.6f})"
    )


def _check_sample_length(ctx: _Context) -> str:
    problems = []
    measured = []
    for i, (sample, f) in enumerate(zip(ctx.samples, ctx.features, strict=True)):
        length = ctx.registry.hook.sample_length(
            model_name=ctx.entry.name, sample=sample, bundle=ctx.bundle
        )
        if length is None:
            return "sample_length is not implemented (the core measures by preprocessing)"
        actual = len(f["input_ids"]) + len(f.get(DECODER_KEY, ()))
        if length != actual:
            problems.append(
                f"sample {i}: sample_length gives {length}, preprocess_sample {actual} tokens"
                + (" (encoder plus decoder)" if DECODER_KEY in f else "")
            )
        measured.append(actual)
    if problems:
        raise _Failed(_summary(problems))
    message = f"lengths {measured} equal the preprocessed lengths"
    return message + _reads_images(ctx, measured)


def _reads_images(ctx: _Context, measured: Sequence[int]) -> str:
    """A note when ``sample_length`` reads image files (the hook spec says it should not, so
    that planning packs stays fast; a model whose token count depends on an image's size may
    have to, so this is not a failure)."""
    imaged = [i for i, s in enumerate(ctx.samples) if s.images]
    for i in imaged:
        sample = ctx.samples[i]
        gone = replace(
            sample, images=[ctx.workdir / f"missing-{n}.png" for n in range(len(sample.images))]
        )
        try:
            length = ctx.registry.hook.sample_length(
                model_name=ctx.entry.name, sample=gone, bundle=ctx.bundle
            )
        except Exception as exc:
            return (
                f"; note: it reads the image files (sample {i} with its images gone: "
                f"{_describe(exc)}), which makes planning packs slow"
            )
        if length != measured[i]:
            return (
                f"; note: it reads the image files (sample {i} measures {length} with its "
                "images gone)"
            )
    return ", without reading images" if imaged else ""


def _check_packed_equals_unpacked(ctx: _Context) -> str:
    import numpy as np

    from mixcore.kit.packing import pack_features

    features = ctx.features
    lengths = [len(f["input_ids"]) for f in features]
    starts = np.cumsum([0, *lengths[:-1]])
    packed = pack_features(features)
    boundary = [
        (i, int(packed["labels"][s + n - 1]))
        for i, (s, n) in enumerate(zip(starts, lengths, strict=True))
        if packed["labels"][s + n - 1] != IGNORE_INDEX
    ]
    if boundary:
        i, label = boundary[0]
        raise _Failed(
            f"in the pack, the last label of sample {i} is {label}, not {IGNORE_INDEX}: it "
            "would train that position to predict the next sample's first token (labels must "
            "be pre-shifted, ending with IGNORE_INDEX)"
        )

    alone_sums = []
    for i, f in enumerate(features):
        batch = ctx.collate([f])
        _check_label_row(batch, 0, np.asarray(f["labels"]), f"sample {i} collated alone")
        _, logits = _forward(ctx.bundle.model, batch)
        losses = _token_losses(logits, batch["labels"])[0, : lengths[i]]
        alone_sums.append(float(losses.sum()))

    batch = ctx.collate([packed])
    _check_label_row(batch, 0, np.asarray(packed["labels"]), "the pack")
    _, logits = _forward(ctx.bundle.model, batch)
    losses = _token_losses(logits, batch["labels"])[0]
    packed_sums = [float(losses[s : s + n].sum()) for s, n in zip(starts, lengths, strict=True)]

    diffs = [abs(a - p) for a, p in zip(alone_sums, packed_sums, strict=True)]
    if max(diffs) > ctx.atol:
        worst = int(np.argmax(diffs))
        per_sample = ", ".join(
            f"sample {i}: {a:.6f} alone, {p:.6f} packed"
            for i, (a, p) in enumerate(zip(alone_sums, packed_sums, strict=True))
        )
        raise _Failed(
            f"summed token losses differ packed and alone by up to {diffs[worst]:.2e} "
            f"(sample {worst}) > atol {ctx.atol:g} ({per_sample}): packed samples must attend "
            "only to themselves (block-diagonal causal mask from segment_ids) and restart "
            "their position_ids"
        )
    sums = ", ".join(f"{a:.4f}" for a in alone_sums)
    return (
        f"{len(features)} samples packed into {sum(lengths)} tokens: summed losses {sums} "
        f"agree within {max(diffs):.1e}"
    )


def _check_label_row(batch: dict[str, Any], row: int, labels: Any, what: str) -> None:
    """The contract of collate_batch: row ``row`` of ``labels`` holds the labels from column 0."""
    import numpy as np

    if "labels" not in batch:
        raise _Failed(f"collate_batch dropped 'labels' ({what})")
    got = batch["labels"].numpy()[row]
    if len(got) < len(labels) or not np.array_equal(got[: len(labels)], labels):
        raise _Failed(
            f"collate_batch's labels row for {what} does not hold the features' labels from "
            "column 0 (right padding), which per-source losses and these checks rely on"
        )


def _check_save_load_round_trip(ctx: _Context) -> str:
    import numpy as np

    folder = ctx.fresh_folder("save_load")
    saved = ctx.registry.hook.save_model(
        model_name=ctx.entry.name, bundle=ctx.bundle, folder=str(folder)
    )
    if saved is None:
        raise _Failed("no save_model answered")
    try:
        entry = ctx.registry.resolve_model(str(folder))
    except MixcoreError as exc:
        raise _Failed(
            f"the registry cannot tell which model loads the saved folder: {exc}"
        ) from None
    if entry.name != ctx.entry.name:
        raise _Failed(
            f"the saved folder resolves to model {entry.name!r}, not {ctx.entry.name!r}: its "
            f"config.json model_type must be one of {list(ctx.entry.model_types)}"
        )
    loaded = ctx.registry.hook.load_model(model_name=entry.name, source=str(folder), options={})
    if loaded is None:
        raise _Failed(f"load_model of {folder} answered nothing")

    for i, sample in enumerate(ctx.samples):
        mine, theirs = ctx.features[i], ctx.preprocess(sample, loaded)
        differ = [
            key
            for key in sorted(set(mine) | set(theirs))
            if key not in mine
            or key not in theirs
            or not np.array_equal(np.asarray(mine[key]), np.asarray(theirs[key]))
        ]
        if differ:
            raise _Failed(
                f"sample {i} preprocesses differently after the round trip ({', '.join(differ)}):"
                " save_model must save the tokenizer and processor as they are"
            )

    before = _state(ctx.bundle.model)
    after = _state(loaded.model)
    missing, extra = sorted(set(before) - set(after)), sorted(set(after) - set(before))
    changed = []
    for name in sorted(set(before) & set(after)):
        a, b = before[name], after[name]
        if a.shape != b.shape:
            changed.append(f"{name} (shape {list(a.shape)} -> {list(b.shape)})")
        elif not np.allclose(a, b, rtol=0, atol=ROUND_TRIP_ATOL):
            changed.append(f"{name} (max difference {float(np.max(np.abs(a - b))):.2e})")
    mine_batch = ctx.collate(ctx.features)
    theirs_batch = ctx.collate(ctx.features, loaded)
    _, logits_before = _forward(ctx.bundle.model, mine_batch)
    _, logits_after = _forward(loaded.model, theirs_batch)
    diff = float(np.max(np.abs(_numpy(logits_before) - _numpy(logits_after))))
    if missing or extra or changed or diff > ROUND_TRIP_ATOL:
        parts = []
        if missing:
            parts.append(f"weights missing after loading: {', '.join(missing[:5])}")
        if extra:
            parts.append(f"weights that appeared: {', '.join(extra[:5])}")
        if changed:
            parts.append(f"{len(changed)} weight(s) changed: {', '.join(changed[:5])}")
        parts.append(f"logits differ by up to {diff:.2e} (allowed {ROUND_TRIP_ATOL:g})")
        raise _Failed("after save_model and load_model, " + "; ".join(parts))
    return f"{len(before)} tensors and the logits (max difference {diff:.1e}) survive {folder.name}"


def _state(model: Any) -> dict[str, Any]:
    return {name: _numpy(tensor) for name, tensor in model.state_dict().items()}


def _numpy(tensor: Any) -> Any:
    import numpy as np

    return np.asarray(tensor.astype("float32").numpy(), dtype=np.float64)


def _check_lora_merge_round_trip(ctx: _Context) -> str:
    import numpy as np
    import paddle

    from mixcore.config.schema import apply_defaults
    from mixcore.lora import merge_lora, save_lora_adapter
    from mixcore.train.assemble import apply_lora

    base = ctx.bundle.model
    batch = ctx.collate(ctx.features)
    _, base_logits = _forward(base, batch)
    base_logits = _numpy(base_logits)

    # LoRA swaps layers inside the model it wraps: wrap a copy, and merge into another copy.
    wrapped_bundle = replace(ctx.bundle, model=copy.deepcopy(base))
    # The config a `mixcore train` run with `"lora": true` reads, its defaults filled in.
    config = apply_defaults({"lora": True, "seed": SEED})
    lora_model, targets = apply_lora(ctx.registry, ctx.entry, wrapped_bundle, config)
    # B starts at zero (the adapter changes nothing); random B makes the merge visible.
    rng = np.random.default_rng(SEED)
    randomised = 0
    for name, param in lora_model.named_parameters():
        if name.endswith("lora_B"):
            values = rng.normal(0.0, 0.05, size=param.shape).astype(np.float32)
            param.set_value(paddle.to_tensor(values).astype(param.dtype))
            randomised += 1
    if not randomised:
        raise _Failed(f"LoRA on {targets} made no lora_B weights")
    _, lora_logits = _forward(lora_model, batch)
    lora_logits = _numpy(lora_logits)
    effect = float(np.max(np.abs(lora_logits - base_logits)))
    if effect <= 10 * ctx.atol:
        raise _Failed(
            f"randomised LoRA weights on {targets} change the logits by only {effect:.2e}: "
            "the default LoRA targets are not on the model's forward path"
        )

    adapter = ctx.fresh_folder("lora_adapter")
    save_lora_adapter(lora_model, adapter)
    merged = merge_lora(copy.deepcopy(base), adapter)
    _, merged_logits = _forward(merged, batch)
    diff = float(np.max(np.abs(_numpy(merged_logits) - lora_logits)))
    if diff > ctx.atol:
        raise _Failed(
            f"the merged model's logits differ from the LoRA model's by up to {diff:.2e} > "
            f"atol {ctx.atol:g} (LoRA changed them by {effect:.2e})"
        )
    return (
        f"{randomised} LoRA layers change the logits by {effect:.2e}; merged equals LoRA "
        f"within {diff:.1e}"
    )


def _check_generation_learns(ctx: _Context) -> str:
    import paddle

    from mixcore.inference import as_prompt

    sample = ctx.samples[0]
    prompt, reply = as_prompt(sample)
    expected = (reply or "").strip()
    features = ctx.preprocess(sample)
    batch = ctx.collate([features])
    labels = batch["labels"]
    trained_tokens = int((labels.numpy() != IGNORE_INDEX).sum())

    paddle.seed(SEED)
    model = copy.deepcopy(ctx.bundle.model)
    bundle = replace(ctx.bundle, model=model)
    model.train()
    parameters = [p for p in model.parameters() if not p.stop_gradient]
    optimizer = paddle.optimizer.AdamW(learning_rate=LEARNING_RATE, parameters=parameters)
    answer, loss_value = None, float("nan")
    for step in range(1, TRAIN_STEPS + 1):
        loss, logits = _outputs(model(**batch), batch)
        if loss is None:  # the trainer would need one; the kit's token loss stands in
            token = paddle.nn.functional.cross_entropy(
                logits.astype("float32"),
                labels.unsqueeze(-1),
                reduction="sum",
                ignore_index=IGNORE_INDEX,
            )
            loss = token / max(trained_tokens, 1)
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        loss_value = float(loss)
        if step % GENERATE_EVERY == 0 or step == TRAIN_STEPS:
            model.eval()
            answers = ctx.registry.hook.generate(
                model_name=ctx.entry.name,
                bundle=bundle,
                prompts=[prompt],
                max_new_tokens=trained_tokens + 8,
                num_beams=1,
            )
            model.train()
            if answers is None:
                raise _Failed(f"no generate answered for model {ctx.entry.name!r}")
            if len(answers) != 1:
                raise _Failed(f"generate gave {len(answers)} answers for 1 prompt")
            answer = answers[0].strip()
            if answer == expected:
                return f"answered {expected!r} after {step} steps (loss {loss_value:.4f})"
    raise _Failed(
        f"after {TRAIN_STEPS} steps on one sample (loss {loss_value:.4f}) generate answered "
        f"{answer!r}, expected its reply {expected!r}"
    )


def _check_tensor_parallel_split(ctx: _Context) -> str:
    import numpy as np

    from mixcore.kit import tensor_parallel as tp
    from mixcore.models import model_parallel_plan

    model = ctx.bundle.model
    batch = ctx.collate(ctx.features)
    _, full = _forward(model, batch)
    full = _numpy(full)
    state = {name: tensor.numpy() for name, tensor in model.state_dict().items()}
    done = []
    for degree in TENSOR_PARALLEL_DEGREES:
        try:
            plan, resolved = model_parallel_plan(ctx.registry, ctx.entry, ctx.bundle, degree)
        except tp.DegreeError as exc:
            done.append(f"degree {degree} skipped ({str(exc).splitlines()[-1].strip()})")
            continue
        merged = tp.merge_state(tp.split_state(state, resolved.splits, degree), resolved.splits)
        differ = [n for n, v in state.items() if not np.array_equal(merged[n], v)]
        if differ or merged.keys() != state.keys():
            raise _Failed(f"split for {degree} ranks and merged, {differ[:3]} came back changed")
        sim = tp.simulate(model, plan, degree, lambda m: _outputs(m(**batch), batch)[1])
        diff = max(float(np.max(np.abs(_numpy(out) - full))) for out in sim.outputs)
        if diff > TENSOR_PARALLEL_ATOL:
            raise _Failed(
                f"the model split for {degree} ranks (its parallel_plan), run rank by rank, "
                f"gives logits up to {diff:.2e} off the full model's (allowed "
                f"{TENSOR_PARALLEL_ATOL:g}): a layer split the plan does not describe right"
            )
        done.append(
            f"degree {degree}: {len(resolved.splits)} tensors split, logits within {diff:.1e}"
        )
    return "; ".join(done)


def _check_export_round_trip(ctx: _Context) -> str:
    from mixcore.export import export_model
    from mixcore.inference import ModelRequest, as_prompt, load_exported, request_exported

    folder = ctx.workdir / "export_round_trip"
    request = ModelRequest(ctx.entry, ctx.source, ctx.options, SEED)
    result = export_model(ctx.registry, request, folder, max_length=EXPORT_LENGTH)
    prompt, _ = as_prompt(ctx.samples[0])
    [dynamic] = ctx.registry.hook.generate(
        model_name=ctx.entry.name,
        bundle=ctx.bundle,
        prompts=[prompt],
        max_new_tokens=EXPORT_NEW_TOKENS,
        num_beams=1,
    )
    deployed = load_exported(ctx.registry, request_exported(ctx.registry, folder))
    [exported] = deployed.answer(ctx.registry, [prompt], EXPORT_NEW_TOKENS)
    if exported != dynamic:
        raise _Failed(
            f"the export answers {exported!r} where generate answers {dynamic!r} (greedy, "
            f"{EXPORT_NEW_TOKENS} new tokens)"
        )
    parts = ", ".join(
        f"{role} {part.get('verified_max_abs_diff', 0):.1e}"
        for role, part in result.manifest["parts"].items()
    )
    return f"exported parts ({parts} from the model on probe inputs) answer {exported!r} too"


_CHECK_FUNCTIONS: dict[str, Callable[[_Context], str]] = {
    "labels_shifted": _check_labels_shifted,
    "sample_length": _check_sample_length,
    "packed_equals_unpacked": _check_packed_equals_unpacked,
    "save_load_round_trip": _check_save_load_round_trip,
    "lora_merge_round_trip": _check_lora_merge_round_trip,
    "generation_learns": _check_generation_learns,
    "tensor_parallel_split": _check_tensor_parallel_split,
    "export_round_trip": _check_export_round_trip,
}
