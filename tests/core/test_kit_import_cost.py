"""The toolkit keeps its promise: importing any of its modules, but those of ``mixcore.kit.nn``
(Paddle layers by nature), imports no Paddle, PaddleNLP or Pillow."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import mixcore.kit
import mixcore.kit.nn  # its __init__ is documentation only: no Paddle


def test_kit_modules_import_without_paddle_paddlenlp_or_pillow():
    modules = [
        f"mixcore.kit.{info.name}"
        for info in pkgutil.iter_modules(mixcore.kit.__path__)
        if info.name != "nn"
    ]
    assert "mixcore.kit.generation" in modules
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "heavy = sorted(m for m in ('paddle', 'paddlenlp', 'PIL') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"imported at module level: {result.stdout.strip()}"


def test_the_nn_layers_are_the_documented_exception():
    names = {info.name for info in pkgutil.iter_modules(mixcore.kit.nn.__path__)}
    assert names == {"vision_transformer", "qformer", "losses", "segment_attention", "export"}
    assert "import it inside" in mixcore.kit.__doc__
