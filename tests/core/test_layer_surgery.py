"""core.layer_surgery: parsing, windows, edit composition and block swapping on a toy residual stack."""

import json

import pytest
import torch
from torch import nn

from core import layer_surgery as ls
from zlab import workflow as wf


def flow_percent_to_sigma(shift=3.0):
    """ComfyUI's flow percent_to_sigma written out: percent p is flow time t = 1 - p, shifted."""
    def fn(p):
        if p <= 0.0:
            return 1.0
        if p >= 1.0:
            return 0.0
        t = 1.0 - p
        return shift * t / (1 + (shift - 1) * t)
    return fn


# ---------------------------------------------------------------- parsing

def test_indices_and_inclusive_ranges_in_written_order():
    assert ls.parse_indices("7-12", 30, "layers") == [7, 8, 9, 10, 11, 12]
    assert ls.parse_indices(" 3, 17  20-21;0", 30, "layers") == [3, 17, 20, 21, 0]
    assert ls.parse_indices("1-0, 0", 2, "noise_blocks") == [1, 0, 0]
    assert ls.parse_indices("", 30, "layers") == []


def test_layer_set_is_sorted_and_unique():
    assert ls.parse_layer_set("12, 7-9, 8", 30) == [7, 8, 9, 12]


@pytest.mark.parametrize("text, words", [
    ("30", ["layers", "index 30 is out of range", "30 main layers", "0-29"]),
    ("7-35", ["index 30"]),
    ("-1", ["cannot read '-1'"]),
    ("seven", ["cannot read 'seven'", "7-12"]),
    ("1.5", ["cannot read '1.5'"]),
])
def test_bad_indices_name_the_input(text, words):
    with pytest.raises(ValueError) as err:
        ls.parse_indices(text, 30, "layers")
    for word in words:
        assert word in str(err.value)


def test_block_order_words():
    assert ls.parse_block_order("all", 2, "context_blocks", "context-refiner blocks") == (0, 1)
    assert ls.parse_block_order("None", 2, "context_blocks", "context-refiner blocks") == ()
    assert ls.parse_block_order("1, 1, 0", 2, "context_blocks", "context-refiner blocks") == (1, 1, 0)
    with pytest.raises(ValueError, match="context_blocks: index 2 is out of range: this model has 2 context-refiner"):
        ls.parse_block_order("2", 2, "context_blocks", "context-refiner blocks")


def test_scales_one_for_all_or_one_per_block():
    assert ls.parse_scales("0.5", 2, "noise_scales") == (0.5, 0.5)
    assert ls.parse_scales("1, -1.5", 2, "noise_scales") == (1.0, -1.5)
    with pytest.raises(ValueError, match="noise_scales: 3 factors for 2 blocks"):
        ls.parse_scales("1 2 3", 2, "noise_scales")
    with pytest.raises(ValueError, match="noise_scales: cannot read"):
        ls.parse_scales("half", 2, "noise_scales")
    with pytest.raises(ValueError, match="finite"):
        ls.parse_scales("nan", 2, "noise_scales")


def test_windows():
    ls.validate_window(0.05, 0.5)
    ls.validate_window(0.3, 0.3)
    with pytest.raises(ValueError, match=r"start_percent \(0.6\) is after end_percent \(0.5\)"):
        ls.validate_window(0.6, 0.5)
    with pytest.raises(ValueError, match="end_percent is 1.5"):
        ls.validate_window(0.0, 1.5)


def test_in_window_follows_the_shifted_schedule():
    p2s = flow_percent_to_sigma(3.0)
    # 8-step simple schedule at shift 3: t = 1, 7/8, ..., 1/8
    sigmas = [3 * t / (1 + 2 * t) for t in (1, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8)]
    inside = [ls.in_window(s, 0.05, 0.5, p2s) for s in sigmas]
    # 5% -> sigma(0.95) = 0.983: the first step (sigma 1) is before it; 50% -> sigma 0.75 (step 4) is its end
    assert inside == [False, True, True, True, True, False, False, False]
    assert all(ls.in_window(s, 0.0, 1.0, p2s) for s in sigmas + [0.0])


# ---------------------------------------------------------------- plans

def test_stock_plan_is_none():
    p2s = flow_percent_to_sigma()
    assert ls.plan_group([], "layers", 30, 0.5, p2s) is None
    identity = ls.Edit("layers", scales=((3, 1.0),))
    assert identity.is_identity() and ls.plan_group([identity], "layers", 30, 0.5, p2s) is None
    assert ls.plan_group([ls.Edit("context_refiner", order=(0, 1))], "context_refiner", 2, 0.5, p2s) is None


def test_plans_compose_factors_and_the_last_order_wins():
    p2s = flow_percent_to_sigma()
    edits = [ls.Edit("noise_refiner", order=(1,)), ls.Edit("noise_refiner", order=(0, 0), scales=((0, 0.5),)),
             ls.Edit("noise_refiner", scales=((0, 3.0),)), ls.Edit("layers", scales=((2, 0.0),))]
    plan = ls.plan_group(edits, "noise_refiner", 2, 0.9, p2s)
    assert plan.steps == ((0, 1.5), (0, 1.5))
    assert ls.plan_group(edits, "context_refiner", 2, 0.9, p2s) is None
    assert [p.group for p in ls.plan_all(edits, {"context_refiner": 2, "noise_refiner": 2, "layers": 4}, 0.9, p2s)] \
        == ["noise_refiner", "layers"]


def test_edits_outside_their_window_are_inactive():
    p2s = flow_percent_to_sigma()
    edit = ls.Edit("layers", scales=((5, 0.0),), start_percent=0.3, end_percent=0.7)
    assert ls.plan_group([edit], "layers", 30, 1.0, p2s) is None
    assert ls.plan_group([edit], "layers", 30, 0.75, p2s).steps[5] == (5, 0.0)
    assert ls.plan_group([edit], "layers", 30, 0.3, p2s) is None


def test_unknown_group_is_refused():
    with pytest.raises(ValueError, match="unknown block group"):
        ls.Edit("single_blocks")


def test_with_edits_does_not_mutate():
    options = {"other": 1}
    out = ls.with_edits(options, [ls.Edit("layers")])
    out2 = ls.with_edits(out, [ls.Edit("noise_refiner")])
    assert options == {"other": 1}
    assert len(out[ls.OPTIONS_KEY]) == 1 and len(out2[ls.OPTIONS_KEY]) == 2 and out2["other"] == 1


# ---------------------------------------------------------------- swapping blocks on a toy DiT

class Block(nn.Module):
    """x -> x + tanh(W x) with a call log, like a residual transformer block."""

    def __init__(self, name, log, seed):
        super().__init__()
        self.name, self.log = name, log
        self.lin = nn.Linear(4, 4)
        with torch.no_grad():
            g = torch.Generator().manual_seed(seed)
            self.lin.weight.copy_(torch.randn(4, 4, generator=g))
            self.lin.bias.copy_(torch.randn(4, generator=g))

    def forward(self, x, *args, **kwargs):
        self.log.append(self.name)
        return x + torch.tanh(self.lin(x))


class ToyDiT(nn.Module):
    def __init__(self):
        super().__init__()
        self.log = []
        self.context_refiner = nn.ModuleList([Block(f"c{i}", self.log, i) for i in range(2)])
        self.layers = nn.ModuleList([Block(f"l{i}", self.log, 10 + i) for i in range(4)])

    def forward(self, x):
        for group in (self.context_refiner, self.layers):
            for block in group:
                x = block(x, None, transformer_options={})
        return x


def test_swapped_runs_the_plan_and_restores_the_stock_lists():
    dit = ToyDiT()
    x = torch.randn(2, 4)
    stock_ctx, stock_layers = dit.context_refiner, dit.layers
    expected_stock = dit(x)
    dit.log.clear()
    plans = [ls.Plan("context_refiner", ((1, 1.0), (1, 1.0))), ls.Plan("layers", ((0, 1.0), (1, 0.0), (2, 0.5), (3, 1.0)))]
    with ls.swapped(dit, plans):
        out = dit(x)
    assert dit.log == ["c1", "c1", "l0", "l2", "l3"]
    assert dit.context_refiner is stock_ctx and dit.layers is stock_layers
    # the same maths written out by hand
    c1, (l0, _, l2, l3) = dit.context_refiner[1], dit.layers
    h = c1(c1(x))
    h = l0(h)
    h = h + 0.5 * (l2(h) - h)
    assert torch.allclose(out, l3(h), atol=1e-6)
    assert torch.equal(dit(x), expected_stock)


def test_swapped_restores_the_lists_when_the_forward_fails():
    dit = ToyDiT()
    stock = dit.layers
    with pytest.raises(RuntimeError, match="boom"):
        with ls.swapped(dit, [ls.Plan("layers", ((0, 0.0),))]):
            assert dit.layers is not stock
            raise RuntimeError("boom")
    assert dit.layers is stock


def test_factor_one_uses_the_stock_block_itself():
    dit = ToyDiT()
    built = ls.build_blocks(dit.layers, ls.Plan("layers", ((0, 1.0), (1, 0.0), (2, 2.0))))
    assert built[0] is dit.layers[0]
    assert isinstance(built[1], ls.SkippedBlock) and isinstance(built[2], ls.ScaledBlock)
    x = torch.randn(3, 4)
    passed = built[1](x)
    assert torch.equal(passed, x) and passed is not x


def test_guide_is_guided_plus_scale_times_difference():
    g, c, s = torch.randn(3), torch.randn(3), torch.randn(3)
    assert torch.allclose(ls.guide(g, c, s, 2.5), g + 2.5 * c - 2.5 * s, atol=1e-6)
    assert torch.equal(ls.guide(g, c, s, 0.0), g)


def test_describe_lists_each_change():
    text = ls.describe([ls.Edit("context_refiner", order=()), ls.Edit("layers", scales=((3, 0.0), (5, 0.5)),
                                                                       start_percent=0.1, end_percent=0.6)])
    assert "context-refiner blocks: run nothing (skipped)" in text
    assert "main layers skipped: 3 (10%-60% of the schedule)" in text and "5 x0.5" in text
    assert ls.describe([]) == "no change (stock model)"


# ---------------------------------------------------------------- shipped files

def test_layer_sweep_spec_is_a_valid_sweep_of_every_layer(repo, node_schema):
    from zlab import sweep

    spec = sweep.load_spec(str(repo / "sweeps" / "layer_ablation.json"))
    assert spec.workflow == str(repo / "workflows" / "api" / "zimage_layer_sweep.json")
    base = sweep.validate(wf.load(spec.workflow), spec, node_schema)
    (nid,) = wf.find_nodes(base, "Layer Ablation")
    assert base[nid]["class_type"] == "ZImageLabLayerAblation" and base[nid]["inputs"]["scale"] == 0.0
    values = spec.params["Layer Ablation.layers"]
    assert values[0] == ""  # the stock baseline, which every row is compared with
    assert spec.reference == {"Layer Ablation.layers": ""}
    assert [ls.parse_layer_set(v, 30) for v in values[1:]] == [[i] for i in range(30)]
    assert len(sweep.cells(spec)) == 31 * len(spec.seeds)


def test_slg_workflow_uses_the_research_preset(repo):
    api = json.loads((repo / "workflows" / "api" / "zimage_slg.json").read_text())
    (nid,) = wf.find_nodes(api, "ZImageLabSkipLayerGuidance")
    inputs = api[nid]["inputs"]
    assert (inputs["layers"], inputs["scale"], inputs["start_percent"], inputs["end_percent"]) == ("7-12", 2.5, 0.05, 0.5)
    assert ls.SLG_PRESET == {"layers": "7-12", "scale": 2.5, "start_percent": 0.05, "end_percent": 0.5}
    for sampler in wf.find_nodes(api, "ZImageLabSampler"):
        assert api[sampler]["inputs"]["steps"] == 8 and api[sampler]["inputs"]["cfg"] == 1.0
    assert api[wf.find_nodes(api, "EmptySD3LatentImage")[0]]["inputs"]["width"] == 1024
