"""The progress bar of `mixcore train`, and the lines printed while it is drawn.

PaddleNLP's ``ProgressCallback`` draws its tqdm bars whatever the output is, so a log piped to a
file fills with carriage returns and bar fragments, and a line printed while a bar is on the
terminal lands in the middle of it. mixcore turns PaddleNLP's bars off (``disable_tqdm`` in the
``TrainingArguments`` it builds) and draws its own through :class:`Progress`:

* only when the bar's stream is a terminal, never with the config's ``disable_tqdm: true``,
  and only on the process that reports (local rank 0);
* every line the run reports goes through :meth:`Progress.write`, which clears the bars, writes
  the line and draws the bars again below it (what ``tqdm.write`` does for its own stream), and
  PaddleNLP's log records (and Python's root logger) take the same way while a bar is drawn;
* the bars are closed however training ends, so an error message starts on a line of its own.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from typing import Any, TextIO


class Progress:
    """The training bar (and an evaluation bar under it) on ``stream``, and the run's lines.

    :param report: where lines go (the CLI's output).
    :param stream: where the bars are drawn; ``sys.stderr`` when the bar starts, by default.
    :param enabled: False draws nothing (``disable_tqdm``); lines still go to ``report``.
    """

    def __init__(
        self,
        report: Callable[[str], None],
        *,
        stream: TextIO | None = None,
        enabled: bool = True,
    ) -> None:
        self._report = report
        self._stream = stream
        self.enabled = enabled
        self.bar: Any = None
        self.eval_bar: Any = None
        self._redirect: contextlib.ExitStack | None = None

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    def draws(self) -> bool:
        """Whether bars are drawn: enabled, and the stream is a terminal."""
        if not self.enabled:
            return False
        isatty = getattr(self.stream, "isatty", None)
        try:
            return bool(isatty and isatty())
        except ValueError:  # a closed stream
            return False

    def write(self, line: str) -> None:
        """Report ``line``; with a bar drawn, above it, and the bar drawn again below."""
        if self.bar is None and self.eval_bar is None:
            self._report(line)
            return
        from tqdm import tqdm

        with tqdm.external_write_mode(file=self.stream):
            self._report(line)
            for out in (sys.stdout, sys.stderr):
                with contextlib.suppress(OSError, ValueError, AttributeError):
                    out.flush()

    # -- the bars --------------------------------------------------------------------------------

    def start(self, total: int, done: int = 0) -> None:
        if not self.draws() or self.bar is not None:
            return
        from tqdm import tqdm

        self.bar = tqdm(
            total=total, initial=done, desc="training", unit="step", file=self.stream, leave=True
        )
        self._redirect_logging()

    def advance(self, step: int) -> None:
        if self.bar is not None and step > self.bar.n:
            self.bar.update(step - self.bar.n)

    def show_loss(self, loss: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {loss:.4f}", refresh=True)

    def eval_step(self, total: int) -> None:
        if not self.draws():
            return
        if self.eval_bar is None:
            from tqdm import tqdm

            self.eval_bar = tqdm(
                total=total, desc="evaluating", unit="batch", file=self.stream, leave=False
            )
            if self.bar is None:
                self._redirect_logging()
        self.eval_bar.update(1)

    def eval_done(self) -> None:
        if self.eval_bar is not None:
            self.eval_bar.close()
            self.eval_bar = None
        if self.bar is None:
            self._restore_logging()

    def close(self) -> None:
        """Close every bar (idempotent): at the end of training, or when it fails."""
        self.eval_done()
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self._restore_logging()

    def _redirect_logging(self) -> None:
        # Log records written to the terminal while a bar is drawn take tqdm.write's way too.
        import logging

        from tqdm.contrib.logging import logging_redirect_tqdm

        loggers = [logging.getLogger(), logging.getLogger("PaddleNLP")]
        self._redirect = contextlib.ExitStack()
        self._redirect.enter_context(logging_redirect_tqdm(loggers=loggers))

    def _restore_logging(self) -> None:
        if self._redirect is not None:
            self._redirect.close()
            self._redirect = None

    # -- PaddleNLP's callback --------------------------------------------------------------------

    def callback(self) -> Any:
        """A PaddleNLP ``TrainerCallback`` that moves the bars with the training loop."""
        from paddlenlp.trainer import TrainerCallback

        progress = self

        class ProgressBars(TrainerCallback):
            def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                if state.is_local_process_zero:
                    progress.start(state.max_steps, state.global_step)

            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                progress.advance(state.global_step)

            def on_prediction_step(
                self, args: Any, state: Any, control: Any, eval_dataloader: Any = None, **kw: Any
            ) -> None:
                if state.is_local_process_zero and eval_dataloader is not None:
                    try:
                        total = len(eval_dataloader)
                    except TypeError:  # an iterable dataset
                        total = None
                    progress.eval_step(total)

            def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                progress.eval_done()

            def on_log(
                self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any
            ) -> None:
                if logs and "loss" in logs:
                    progress.show_loss(logs["loss"])

            def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                progress.close()

        return ProgressBars()
