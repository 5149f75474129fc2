"""The toolkit's tensor- and pipeline-parallel services on small Paddle layers: a plan resolved
and checked against a model, state dicts split and merged, rank files as a checked set, the
lockstep simulation, pipeline stages, and a bad plan named by its plugin."""

from __future__ import annotations

import numpy as np
import paddle
import pytest
from paddle import nn

from mixcore import hookimpl
from mixcore.api import ModelBundle, ParallelPlan, PluginError, plan_problems
from mixcore.kit import tensor_parallel as tp
from mixcore.kit.weights import from_array
from mixcore.models import model_parallel_plan
from mixcore.testing import make_plugin, make_registry


class Block(nn.Layer):
    def __init__(self, width: int = 8, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)  # [all q | all k | all v]
        self.out = nn.Linear(width, width)
        self.up = nn.Linear(width, 4 * width)
        self.down = nn.Linear(4 * width, width)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = (
            t.reshape([b, n, self.heads, -1]).transpose([0, 2, 1, 3])
            for t in paddle.split(self.qkv(x), 3, axis=-1)
        )
        att = paddle.nn.functional.softmax(paddle.matmul(q, k, transpose_y=True), axis=-1)
        ctx = paddle.matmul(att, v).transpose([0, 2, 1, 3]).reshape([b, n, -1])
        x = x + self.out(ctx)
        return x + self.down(paddle.nn.functional.gelu(self.up(x)))


class Tiny(nn.Layer):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(16, 8)
        self.blocks = nn.LayerList([Block(), Block()])
        self.head = nn.Linear(8, 16, bias_attr=False)

    def forward(self, ids):
        x = self.emb(ids)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


PLAN = ParallelPlan(
    column=(r"blocks\.\d+\.(qkv|up)", "head"),
    row=(r"blocks\.\d+\.(out|down)",),
    vocab=("emb",),
    gathered=("head",),
    fused={r"blocks\.\d+\.qkv\.(weight|bias)": 3},
    heads={r"blocks\.\d+": "heads"},
    pipeline_layers=("emb", "blocks.0", "blocks.1", "head"),
    first_stage=("emb",),
)


@pytest.fixture
def tiny():
    paddle.seed(7)
    model = Tiny()
    model.eval()
    return model


def test_resolved_plan_names_each_parameters_axis(tiny):
    resolved = tp.resolve_plan(tiny, PLAN, 2)
    assert resolved.splits["blocks.0.qkv.weight"] == tp.Split(axis=1, parts=3)
    assert resolved.splits["blocks.0.qkv.bias"] == tp.Split(axis=0, parts=3)
    assert resolved.splits["blocks.1.down.weight"] == tp.Split(axis=0)
    assert "blocks.1.down.bias" not in resolved.splits  # added once, after the sum
    assert resolved.splits["emb.weight"] == tp.Split(axis=0)
    assert resolved.splits["head.weight"] == tp.Split(axis=1)


def test_fused_split_gives_each_rank_its_block_of_q_k_and_v():
    weight = np.arange(2 * 12).reshape(2, 12)  # q = columns 0-3, k = 4-7, v = 8-11
    shards = tp.split_state({"w": weight}, {"w": tp.Split(axis=1, parts=3)}, 2)
    assert shards[0]["w"][0].tolist() == [0, 1, 4, 5, 8, 9]
    assert shards[1]["w"][0].tolist() == [2, 3, 6, 7, 10, 11]
    merged = tp.merge_state(shards, {"w": tp.Split(axis=1, parts=3)})
    assert np.array_equal(merged["w"], weight)


@pytest.mark.parametrize("degree", [2, 4])
def test_simulated_split_forward_equals_the_full_forward(tiny, degree):
    ids = paddle.to_tensor([[1, 5, 9, 15, 0, 12]])
    full = tiny(ids).numpy()
    sim = tp.simulate(tiny, PLAN, degree, lambda m: m(ids))
    assert sim.collectives == [
        "emb",
        "blocks.0.out",
        "blocks.0.down",
        "blocks.1.out",
        "blocks.1.down",
        "head",
    ]
    for out in sim.outputs:
        np.testing.assert_allclose(out.numpy(), full, atol=1e-5, rtol=0)


def test_heads_left_undivided_change_the_simulated_output(tiny):
    ids = paddle.to_tensor([[1, 5, 9]])
    wrong = ParallelPlan(**{**PLAN.__dict__, "heads": {}})
    # Each rank then cuts its 2 heads' worth of q, k and v into 4 narrower heads.
    sim = tp.simulate(tiny, wrong, 2, lambda m: m(ids))
    assert np.abs(sim.outputs[0].numpy() - tiny(ids).numpy()).max() > 1e-3


def test_plan_problems_catch_malformed_plans():
    assert plan_problems({"column": []}) == ["returned dict, not a mixcore.api.ParallelPlan"]
    bad = ParallelPlan(
        column=(
            "a",
            "(",
        ),
        row=("a",),
        fused={"b": 1},
        first_stage=("x",),
    )
    problems = plan_problems(bad)
    assert any("'(' is not a regular expression" in p for p in problems)
    assert "'a' is both column and row" in problems
    assert any("1 part(s)" in p for p in problems)
    assert "first_stage must be the leading entries of pipeline_layers" in problems


def test_plan_that_does_not_fit_lists_every_problem(tiny):
    plan = ParallelPlan(column=("nothing_here", r"blocks\.0\.up"), heads={"blocks.0": "heads"})
    with pytest.raises(tp.PlanError, match="column: 'nothing_here' matches no layer"):
        tp.resolve_plan(tiny, plan, 3)
    # A right plan at a degree the sizes do not divide is the user's choice, not the plugin's.
    plan = ParallelPlan(column=(r"blocks\.0\.up",), heads={"blocks.0": "heads"})
    with pytest.raises(tp.DegreeError) as err:
        tp.resolve_plan(tiny, plan, 3)
    text = str(err.value)
    assert "cannot be split over 3 ranks" in text
    assert "blocks.0.up.weight: size 32 along axis 1 is not divisible by 3" in text
    assert "blocks.0.heads = 4 is not divisible by 3" in text


def test_bad_plan_from_a_plugin_names_the_plugin(tiny):
    @hookimpl
    def register_models(register):
        register(name="m", description="m", capabilities={"tensor_parallel": True})

    @hookimpl
    def load_model(model_name, source, options):
        return None

    @hookimpl
    def parallel_plan(model_name, bundle):
        return ParallelPlan(row=("no_such_layer",)) if model_name == "m" else None

    registry = make_registry(make_plugin("planner", register_models, load_model, parallel_plan))
    bundle = ModelBundle(name="m", model=tiny, tokenizer=None)
    with pytest.raises(PluginError, match="plugin 'planner' gave model 'm' a bad parallel plan"):
        model_parallel_plan(registry, registry.model("m"), bundle, 2)


def test_rank_files_round_trip_and_incomplete_sets_are_refused(tiny, tmp_path):
    resolved = tp.resolve_plan(tiny, PLAN, 4)
    state = {n: from_array(t.numpy()) for n, t in tiny.state_dict().items()}
    layouts = {
        n: tp.StoredSplit.of(s, state[n].shape[s.axis], 4) for n, s in resolved.splits.items()
    }
    files = tp.write_rank_shards(tmp_path, tp.split_state(state, layouts, 4), layouts)
    assert [f.name for f in files] == [f"model.tp0{r}-of-04.safetensors" for r in range(4)]
    shards, splits = tp.read_rank_shards(tmp_path)
    merged = tp.merge_state(shards, splits)
    assert all(np.array_equal(merged[n].data, state[n].data) for n in state)
    files[2].unlink()
    with pytest.raises(tp.RankShardError, match=r"missing model\.tp02-of-04\.safetensors"):
        tp.read_rank_shards(tmp_path)


def test_stages_balance_parameters_and_keep_the_first_stage_together():
    names = ["vision", "adapter", "emb", "h0", "h1", "h2", "h3", "head"]
    counts = [50, 10, 20, 30, 30, 30, 30, 20]
    stages = tp.assign_stages(names, counts, 3, first_stage=("vision", "adapter"))
    assert stages[0][:2] == ["vision", "adapter"]
    assert [n for s in stages for n in s] == names
    sizes = [sum(counts[names.index(n)] for n in s) for s in stages]
    assert max(sizes) == 80  # [vision adapter emb] [h0 h1] [h2 h3 head]
    assert tp.assign_stages(names, counts, 1) == [names]
    with pytest.raises(tp.PlanError, match="cannot fill"):
        tp.assign_stages(names, counts, 8, first_stage=("vision", "adapter"))


def test_parameter_counts_of_pipeline_layers(tiny):
    counts = tp.parameter_counts(tiny, PLAN.pipeline_layers)
    assert counts[0] == 16 * 8 and counts[-1] == 8 * 16
    assert sum(counts) == sum(int(np.prod(p.shape)) for p in tiny.parameters())


def test_owner_maps_find_the_split_in_a_transposed_renamed_layout(tiny):
    # A plugin may store Linear weights transposed and under other names (Hugging Face's
    # layout); the saved owner maps say where each rank's part lies there.
    resolved = tp.resolve_plan(tiny, PLAN, 2)
    state = {n: t.numpy() for n, t in tiny.state_dict().items()}

    def save(values):
        return {f"hf.{n}": (v.T if v.ndim == 2 else v) for n, v in values.items()}

    stored = save(state)
    tp.mark_owners(tiny, resolved)
    layouts = tp.stored_splits(save({n: t.numpy() for n, t in tiny.state_dict().items()}), 2)
    assert layouts.keys() == {f"hf.{n}" for n in resolved.splits}
    qkv = layouts["hf.blocks.0.qkv.weight"]  # [3 * 8, 8] stored: rows of q, k, v blocks
    assert qkv.axis == 0 and qkv.runs == ((0, 4), (1, 4)) * 3
    shards = tp.split_state(stored, layouts, 2)
    in_model = tp.split_state(state, resolved.splits, 2)
    for rank in range(2):
        assert np.array_equal(
            shards[rank]["hf.blocks.0.qkv.weight"], in_model[rank]["blocks.0.qkv.weight"].T
        )
    merged = tp.merge_state(shards, layouts)
    assert all(np.array_equal(merged[n], v) for n, v in stored.items())


class Bypassing(Tiny):
    """Uses the head's weight directly: no collective could surround that layer on a rank."""

    def forward(self, ids):
        x = self.emb(ids)
        for block in self.blocks:
            x = block(x)
        return paddle.matmul(x, self.head.weight)


def test_a_split_layer_whose_forward_never_runs_is_refused():
    paddle.seed(7)
    model = Bypassing()
    with pytest.raises(tp.PlanError, match=r"forward never ran.*: head"):
        tp.simulate(model, PLAN, 2, lambda m: m(paddle.to_tensor([[1, 2]])))
