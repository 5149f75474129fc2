"""mixcore: a plugin-registry framework for fine-tuning multimodal models on PaddlePaddle.

Importing this package is cheap: it never imports Paddle, PaddleNLP or Pillow.
"""

from mixcore.hooks.markers import hookimpl

__version__ = "0.1.0"

__all__ = ["__version__", "hookimpl"]
