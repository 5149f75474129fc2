"""The toolkit's Q-Former in VisualGLM's LayerNorm arrangement (``norm_layout="sat"``) computes
what PaddleNLP's port of VisualGLM's Q-Former computes, weight for weight; the BLIP-2 arrangement
is checked against Hugging Face in tests/blip2/test_parity.py."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from mixcore.kit.nn.qformer import QFormer, QFormerConfig

SIZES = {
    "hidden_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "cross_attention_frequency": 2,
    "encoder_hidden_size": 24,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}


def test_sat_layout_matches_paddlenlps_visualglm_qformer():
    from paddlenlp.transformers.visualglm.configuration import VisualGLMQFormerConfig
    from paddlenlp.transformers.visualglm.modeling import VisualGLMQFormerModel

    paddle.seed(0)
    reference = VisualGLMQFormerModel(VisualGLMQFormerConfig(**SIZES))
    ours = QFormer(QFormerConfig.from_dict(SIZES, norm_layout="sat"))
    theirs = reference.state_dict()
    mine = ours.state_dict()
    assert set(mine) == set(theirs), set(mine) ^ set(theirs)
    rng = np.random.default_rng(0)
    for name, tensor in theirs.items():
        # Random values everywhere (LayerNorms included), so a missed norm cannot hide.
        values = rng.normal(0, 0.3, tensor.shape).astype("float32")
        if name.endswith("LayerNorm.weight") or name.endswith("layernorm.weight"):
            values += 1.0
        tensor.set_value(paddle.to_tensor(values))
        mine[name].set_value(paddle.to_tensor(values))
    reference.eval()
    ours.eval()
    queries = paddle.to_tensor(rng.normal(size=(2, 8, 32)).astype("float32"))
    image = paddle.to_tensor(rng.normal(size=(2, 10, 24)).astype("float32"))
    with paddle.no_grad():
        expected = reference(
            query_embeds=queries, encoder_hidden_states=image, return_dict=True
        ).last_hidden_state.numpy()
        found = ours(queries, image).numpy()
    np.testing.assert_allclose(found, expected, atol=1e-5)
    # And the two layouts are different computations.
    bert = QFormer(QFormerConfig.from_dict(SIZES))
    assert "layernorm.weight" in bert.state_dict() and "final_layernorm.weight" in mine


def test_an_unknown_layout_is_refused():
    with pytest.raises(ValueError, match="norm_layout"):
        QFormer(QFormerConfig.from_dict(SIZES, norm_layout="pre"))
