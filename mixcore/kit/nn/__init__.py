"""Paddle layers that more than one model plugin builds on.

Unlike the rest of :mod:`mixcore.kit`, these modules import Paddle when they are imported (they
define ``paddle.nn.Layer`` subclasses): a plugin imports them inside its hooks, never from its
entry module.

* :mod:`mixcore.kit.nn.vision_transformer`: the BLIP-2 / EVA-CLIP vision transformer (pre-norm
  ViT with a class token, learned positions, a fused q/k/v projection whose key has no bias).
* :mod:`mixcore.kit.nn.qformer`: the BLIP-2 querying transformer (a BERT encoder whose learned
  query tokens cross-attend to image features every few layers, with an optional text side for
  stage-1 pretraining), in BLIP-2's LayerNorm arrangement or VisualGLM's.
* :mod:`mixcore.kit.nn.losses`: the mean token loss over pre-shifted labels.
* :mod:`mixcore.kit.nn.segment_attention`: attention per packed segment (cost: the sum of the
  samples' squared lengths), and the instance-level swap a model uses to route its language
  model's attention core through it.
* :mod:`mixcore.kit.nn.export`: layers around a model's pieces for ``paddle.jit.to_static``
  (``mixcore export``): logits kept at the asked positions only, rotary caches filled before
  tracing.
"""
