"""mixcore: a plugin-registry framework for fine-tuning multimodal models on PaddlePaddle.

The public API is three packages; plugins import these and nothing else of mixcore:

* :mod:`mixcore.api`: the contract (hook specifications, ``hookimpl``, records, errors, constants);
* :mod:`mixcore.kit`: the model toolkit (images, chat templates, conversation encoding, collation,
  packing, generation, checkpoint reading and writing, the per-model plugin helper);
* :mod:`mixcore.testing`: in-memory plugins and the conformance checks a model plugin must pass.

Everything else (registry, config, train, cli) is the framework's own and may change. Importing
this package is cheap: it never imports Paddle, PaddleNLP or Pillow.
"""

from mixcore.api.markers import hookimpl

__version__ = "0.1.0"

__all__ = ["__version__", "hookimpl"]
