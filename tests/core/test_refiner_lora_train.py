"""core.refiner_lora_train: alignment, the LoRA maths, the saved format, the objective on a toy refiner."""

import pytest
import torch

from core import refiner_lora_train as rt


def test_aligned_positions_are_the_shared_start_and_end():
    src = [1, 2, 3, 10, 11, 90, 91, 92]
    tgt = [1, 2, 3, 10, 11, 55, 56, 57, 90, 91, 92]
    a, b = rt.aligned_positions(src, tgt)
    assert a == [0, 1, 2, 3, 4, 5, 6, 7] and b == [0, 1, 2, 3, 4, 8, 9, 10]
    assert [src[i] for i in a] == [tgt[j] for j in b]
    a, b = rt.aligned_positions([1, 2, 3], [1, 2, 3])
    assert a == b == [0, 1, 2]  # start and end never overlap
    a, b = rt.aligned_positions([1, 7, 9], [1, 8, 5, 9])
    assert a == [0, 2] and b == [0, 3]


def test_prompt_lists():
    assert rt.parse_prompts(" a cat \n\n  a dog\n", "prompts") == ["a cat", "a dog"]
    assert rt.parse_prompts("", "preserve_prompts", required=False) == []
    with pytest.raises(ValueError, match="prompts is empty"):
        rt.parse_prompts(" \n ", "prompts")
    assert rt.with_style("a cat", " ink drawing ") == "a cat, ink drawing"


@pytest.mark.parametrize("kwargs, word", [({"rank": 0}, "rank"), ({"alpha": 0.0}, "alpha"), ({"learning_rate": -1.0}, "learning_rate"),
                                          ({"steps": 0}, "steps"), ({"preservation_weight": -1.0}, "preservation_weight"),
                                          ({"style": " "}, "style"), ({"modules": "mlp"}, "modules")])
def test_bad_settings_name_the_input(kwargs, word):
    args = {"rank": 4, "alpha": 4.0, "learning_rate": 1e-3, "steps": 10, "preservation_weight": 1.0, "style": "ink",
            "modules": "attention", **kwargs}
    with pytest.raises(ValueError, match=word):
        rt.validate(**args)


class ToyBlock(torch.nn.Module):
    """A refiner-shaped block: (x, mask, freqs, transformer_options) -> x, with attention-like mixing."""

    def __init__(self, dim, gen):
        super().__init__()
        self.attention = torch.nn.Module()
        self.attention.qkv = torch.nn.Linear(dim, 3 * dim, bias=False)
        self.attention.out = torch.nn.Linear(dim, dim, bias=False)
        self.feed_forward = torch.nn.Module()
        self.feed_forward.w1 = torch.nn.Linear(dim, 2 * dim, bias=False)
        self.feed_forward.w3 = torch.nn.Linear(dim, 2 * dim, bias=False)
        self.feed_forward.w2 = torch.nn.Linear(2 * dim, dim, bias=False)
        for p in self.parameters():
            p.data = 0.2 * torch.randn(p.shape, generator=gen)
            p.requires_grad_(False)

    def forward(self, x, mask, freqs, transformer_options={}):
        q, k, v = self.attention.qkv(x).chunk(3, dim=-1)
        att = torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, dim=-1) @ v
        x = x + self.attention.out(att)
        ff = self.feed_forward
        return x + ff.w2(torch.nn.functional.silu(ff.w1(x)) * ff.w3(x))


def toy_stack(dim=16, width=8):
    gen = torch.Generator().manual_seed(0)
    embed = torch.nn.Linear(width, dim)
    for p in embed.parameters():
        p.data = 0.3 * torch.randn(p.shape, generator=gen)
        p.requires_grad_(False)
    blocks = {"context_refiner.0": ToyBlock(dim, gen), "context_refiner.1": ToyBlock(dim, gen)}
    pad = torch.zeros(1, dim)
    stack = rt.RefinerStack(embed, pad, lambda ids: ids.unsqueeze(1), blocks.values(), 4)
    return stack, blocks


def test_refiner_stack_pads_to_the_multiple():
    stack, _ = toy_stack()
    assert stack.refine(torch.randn(1, 5, 8)).shape == (1, 8, 16)
    assert stack.refine(torch.randn(1, 8, 8)).shape == (1, 8, 16)


def test_lora_hook_equals_the_merged_weight_update_and_starts_at_zero():
    stack, blocks = toy_stack()
    x = torch.randn(1, 6, 8)
    before = stack.refine(x)
    loras, hooks = rt.attach_loras(blocks, rt.MODULE_SETS["attention + feed-forward"], rank=3, alpha=6.0, seed=1)
    assert torch.equal(stack.refine(x), before)  # up = 0: the LoRA starts as the identity
    gen = torch.Generator().manual_seed(2)
    for lora in loras.values():
        lora.up.data = 0.05 * torch.randn(lora.up.shape, generator=gen)
    hooked = stack.refine(x)
    for hook in hooks:
        hook.remove()
    for name, lora in loras.items():  # merge scale * up @ down into the weights instead
        block, module = name[:len("context_refiner.0")], name[len("context_refiner.0") + 1:]
        blocks[block].get_submodule(module).weight.data += (6.0 / 3) * lora.up.data @ lora.down.data
    assert torch.allclose(stack.refine(x), hooked, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(hooked, before)


def test_saved_format_splits_qkv_into_the_same_update():
    gen = torch.Generator().manual_seed(3)
    lora = rt.LoRA(16, 48, 4, 8.0, gen)
    lora.up.data = torch.randn(48, 4, generator=gen)
    out_lora = rt.LoRA(16, 16, 4, 8.0, gen)
    state = rt.lora_state_dict({"context_refiner.1.attention.qkv": lora, "context_refiner.1.attention.out": out_lora})
    base = "diffusion_model.context_refiner.1.attention"
    assert set(state) == {f"{base}.{m}.{k}" for m in ("to_q", "to_k", "to_v", "to_out.0")
                          for k in ("lora_A.weight", "lora_B.weight", "alpha")}
    fused = torch.cat([state[f"{base}.{m}.lora_B.weight"] @ state[f"{base}.{m}.lora_A.weight"] for m in ("to_q", "to_k", "to_v")])
    assert torch.allclose(fused, lora.up.data @ lora.down.data)
    assert all(state[f"{base}.{m}.alpha"].item() == 8.0 for m in ("to_q", "to_out.0"))
    assert all(t.is_contiguous() for t in state.values())


def test_training_lowers_the_loss_and_preservation_holds_other_prompts():
    stack, blocks = toy_stack()
    gen = torch.Generator().manual_seed(5)
    src = [torch.randn(1, 6, 8, generator=gen) for _ in range(3)]
    styled = [torch.cat([s, torch.randn(1, 2, 8, generator=gen)], dim=1) for s in src]  # two extra "style" tokens
    keep = [torch.randn(1, 7, 8, generator=gen) for _ in range(2)]
    with torch.no_grad():
        style_items = [(s, list(range(6)), stack.refine(t)[0, :6]) for s, t in zip(src, styled)]
        keep_items = [(q, stack.refine(q)[0]) for q in keep]
    loras, hooks = rt.attach_loras(blocks, rt.MODULE_SETS["attention"], rank=4, alpha=4.0, seed=0)
    seen = []
    history = rt.train(stack, [p for l in loras.values() for p in l.parameters()], style_items, keep_items, steps=40,
                       learning_rate=3e-3, preservation_weight=1.0, callback=lambda step, record: seen.append(step))
    assert seen == list(range(41)) and len(history) == 41
    assert history[0]["keep"] == 0.0 and history[0]["style"] > 0
    assert history[-1]["style"] < 0.5 * history[0]["style"]
    assert history[-1]["keep"] < 0.1 * history[0]["style"]
    for hook in hooks:
        hook.remove()


def test_loss_plot_is_an_rgb_image():
    history = [{"step": i, "loss": 1 / (i + 1), "style": 1 / (i + 1), "keep": 0.01 * i} for i in range(10)]
    image = rt.loss_plot(history)
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype.name == "float32"
    assert 0 <= image.min() and image.max() <= 1 and image.std() > 0


def test_detached_copy_leaves_dynamic_vram_state_with_the_model():
    """The trainer's frozen copies: a module carrying comfy-aimdo state (ctypes pointers) and patch hooks."""
    import copy
    import ctypes

    from nodes._internals.memory import detached_copy

    block = ToyBlock(8, torch.Generator().manual_seed(0))
    qkv = block.attention.qkv
    qkv._v = ctypes.pointer(ctypes.c_int(7))  # what comfy-aimdo hangs on a DynamicVRAM module
    qkv._v_signature = 0
    qkv.weight_lowvram_function = lambda w: w
    qkv.weight_function = [lambda w: w]
    qkv.comfy_cast_weights = True
    with pytest.raises(ValueError, match="ctypes"):
        copy.deepcopy(block)  # what the trainer did before
    weights = {n: p.detach().double().clone() for n, p in block.named_parameters()}
    copied = detached_copy(block, weights)
    assert qkv._v.contents.value == 7 and qkv.weight_function and qkv.comfy_cast_weights  # the model keeps its state
    cq = copied.attention.qkv
    assert not hasattr(cq, "_v") and not hasattr(cq, "_v_signature") and not hasattr(cq, "weight_lowvram_function")
    assert cq.weight_function == [] and cq.comfy_cast_weights is False
    for name, p in copied.named_parameters():
        assert p is not dict(block.named_parameters())[name] and torch.equal(p, weights[name]) and not p.requires_grad
    x = torch.randn(1, 5, 8, dtype=torch.float64)
    assert torch.equal(copied(x, None, None), block.double()(x, None, None))


def _reachable(root, skip):
    """Every object reachable from root (gc referents), not entering the objects in skip."""
    import gc
    import types

    opaque = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)
    seen, todo = {id(root): root}, [root]
    while todo:
        for ref in gc.get_referents(todo.pop()):
            if id(ref) not in seen and id(ref) not in skip and not isinstance(ref, opaque):
                seen[id(ref)] = ref
                todo.append(ref)
    return seen


def test_detached_copy_owns_no_comfy_aimdo_object():
    """ComfyUI 0.30.2's DynamicVRAM state: _v = (ModelVBAR, address, size) and _pin_state = the model's dict of
    HostBuffers (also held by a LowVramPatch). Real comfy-aimdo classes (pointer None, so their __del__ frees
    nothing); the copy must reach none of them, nor any tensor or object of the original."""
    vbar_mod = pytest.importorskip("comfy_aimdo.model_vbar")
    host_mod = pytest.importorskip("comfy_aimdo.host_buffer")
    from nodes._internals.memory import detached_copy

    block = ToyBlock(8, torch.Generator().manual_seed(1))
    vbar = object.__new__(vbar_mod.ModelVBAR)
    vbar._ptr = None
    host = object.__new__(host_mod.HostBuffer)
    host._ptr = None
    pin_state = {"weights": (host, [], [-1], [0], [0], {}), "active": False}

    class LowVramPatch:
        def __init__(self):
            self._pin_state = pin_state

    for i, m in enumerate(block.modules()):
        m._v = (vbar, 512 * i, 64)
        m._pin_state = pin_state
        m.seed_key = f"m{i}"
        m.weight_lowvram_function = LowVramPatch()
    block.register_forward_hook(lambda mod, args, out: out * 0)
    weights = {n: p.detach().clone() for n, p in block.named_parameters()}
    copied = detached_copy(block, weights)
    originals = {id(o) for o in _reachable(block, set()).values() if not isinstance(o, (str, int, float, bool))}
    reach = _reachable(copied, set())
    aimdo = [o for o in reach.values() if type(o).__module__.startswith("comfy_aimdo")]
    assert not aimdo
    shared = [type(o).__name__ for i, o in reach.items() if i in originals and not callable(o) and o is not None
              and not isinstance(o, (tuple, torch.dtype, torch.device))]
    assert not shared
    assert [m.seed_key for m in copied.modules()] == [m.seed_key for m in block.modules()]  # plain settings carried
    assert all(m._v[0] is vbar and m._pin_state is pin_state for m in block.modules())  # the model keeps its state
    x = torch.randn(1, 5, 8)
    with torch.no_grad():
        assert torch.equal(copied(x, None, None), ToyBlock(8, torch.Generator().manual_seed(1))(x, None, None))
