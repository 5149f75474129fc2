"""A tiny LLaVA-style model as a third-party mixcore plugin (the template to copy).

Model code: :mod:`.configuration`, :mod:`.modeling`, :mod:`.tokenization`. Glue (what mixcore
calls, written entirely with :mod:`mixcore.kit`): :mod:`.plugin`. Importing this package is cheap:
Paddle and PaddleNLP are imported by the model modules only, which the glue imports inside its
methods.
"""
