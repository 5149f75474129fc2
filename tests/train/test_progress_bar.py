"""The progress bar and the run's lines share the terminal without overwriting each other.

These tests drive :class:`mixcore.train.progress.Progress` with an in-memory terminal (a text
stream that says it is a tty) and read the screen a terminal would show; the end-to-end runs
under a real pseudo-terminal are in ``test_loggers.py``.
"""

from __future__ import annotations

import io

from mixcore.train.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_lines_written_while_the_bar_is_drawn_stay_whole_above_it(screen):
    term = Terminal()
    progress = Progress(lambda line: print(line, file=term), stream=term)
    progress.write("before the bar")
    progress.start(total=4)
    for step in (1, 2):
        progress.advance(step)
    progress.write("step 2/4: loss 6.7093")
    progress.show_loss(6.7093)
    progress.eval_step(total=2)
    progress.eval_step(total=2)
    progress.write("step 2: eval loss 6.7168")
    progress.eval_done()
    for step in (3, 4):
        progress.advance(step)
    progress.write("step 4/4: loss 6.6629")
    progress.close()
    progress.write("after the bar")

    shown = screen(term.getvalue())
    assert shown[:4] == [
        "before the bar",
        "step 2/4: loss 6.7093",
        "step 2: eval loss 6.7168",
        "step 4/4: loss 6.6629",
    ]
    assert shown[4].startswith("training: 100%") and "4/4" in shown[4]
    assert shown[5:] == ["after the bar"]  # the evaluation bar is gone


def test_without_a_terminal_nothing_but_the_lines_is_written():
    out, err = io.StringIO(), io.StringIO()
    progress = Progress(lambda line: print(line, file=out), stream=err)
    progress.start(total=3)
    progress.advance(1)
    progress.eval_step(total=1)
    progress.eval_done()
    progress.write("step 1/3: loss 1.0000")
    progress.close()
    assert out.getvalue() == "step 1/3: loss 1.0000\n"
    assert err.getvalue() == ""


def test_disable_tqdm_draws_no_bar_even_on_a_terminal():
    term = Terminal()
    progress = Progress(lambda line: print(line, file=term), stream=term, enabled=False)
    progress.start(total=3)
    progress.advance(3)
    progress.write("step 3/3: loss 1.0000")
    progress.close()
    assert term.getvalue() == "step 3/3: loss 1.0000\n"


def test_close_ends_the_bar_line_so_an_error_starts_on_its_own_line(screen):
    term = Terminal()
    progress = Progress(lambda line: print(line, file=term), stream=term)
    progress.start(total=10)
    progress.advance(3)
    progress.close()  # what run_training does when training raises
    print("error: the disk is full", file=term)
    shown = screen(term.getvalue())
    assert shown[-1] == "error: the disk is full"
    assert shown[-2].startswith("training:  30%")
