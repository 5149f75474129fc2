"""Is the installed environment able to train? The checks behind `mixcore doctor`.

The heavy commands call :func:`require_training_stack` before they import Paddle, so a missing or
broken package ends in one message that names the module and the fix instead of a traceback
from deep inside ``import paddlenlp``.
"""

from __future__ import annotations

import importlib
import sys
import time
from dataclasses import dataclass

from mixcore.api.errors import EnvironmentProblem

FIX = (
    "run `make install` in the mixcore checkout (it makes .venv equal to requirements/cpu.lock), "
    "or install the missing package at the version that file pins"
)

# What training and inference import, in the order a failure is most telling: a package that
# PaddleNLP imports without declaring it (scipy, sklearn) is named before PaddleNLP itself.
TRAINING_STACK: tuple[tuple[str, str], ...] = (
    ("numpy", "arrays"),
    ("PIL", "images (Pillow)"),
    ("paddle", "PaddlePaddle"),
    ("scipy", "imported by PaddleNLP"),
    ("sklearn", "imported by PaddleNLP (scikit-learn)"),
    ("paddlenlp", "PaddleNLP: language models, Trainer, LoRA"),
    ("safetensors", "checkpoints"),
    ("tiktoken", "Qwen tokenizer"),
    ("matplotlib", "loss curve picture"),
    ("tqdm", "progress bars"),
)


@dataclass(frozen=True)
class ModuleCheck:
    module: str
    purpose: str
    ok: bool
    version: str | None
    seconds: float
    error: str | None

    def to_json(self) -> dict[str, object]:
        return {
            "module": self.module,
            "purpose": self.purpose,
            "ok": self.ok,
            "version": self.version,
            "seconds": round(self.seconds, 3),
            "error": self.error,
        }


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        return f"No module named {exc.name!r}"
    return f"{type(exc).__name__}: {exc}".strip()


def check_module(module: str, purpose: str = "") -> ModuleCheck:
    """Import one module and report how it went; never raises for an import failure."""
    start = time.perf_counter()
    try:
        imported = importlib.import_module(module)
    except Exception as exc:  # any failure inside a package's import is what we report
        return ModuleCheck(
            module, purpose, False, None, time.perf_counter() - start, _describe(exc)
        )
    version = getattr(imported, "__version__", None)
    return ModuleCheck(
        module, purpose, True, str(version) if version else None, time.perf_counter() - start, None
    )


def check_training_stack() -> list[ModuleCheck]:
    return [check_module(module, purpose) for module, purpose in TRAINING_STACK]


def require_training_stack() -> None:
    """Raise :class:`EnvironmentProblem` naming the first module of the stack that fails."""
    for module, purpose in TRAINING_STACK:
        if module in sys.modules:
            continue
        check = check_module(module, purpose)
        if not check.ok:
            raise EnvironmentProblem(
                f"the training stack cannot be imported: {module} ({purpose}) failed with "
                f"{check.error}. Fix: {FIX}."
            )


def missing_module_message(exc: ImportError) -> str:
    """The one-line message for an import failure that reached the CLI."""
    name = getattr(exc, "name", None)
    what = f"the module {name!r} is missing" if name else f"an import failed ({exc})"
    return f"{what}. Fix: {FIX}."
