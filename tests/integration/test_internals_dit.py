"""nodes/_internals/dit.py against the running ComfyUI's own NextDiT modules (CPU, in-process).

The pack's q/k norm + RoPE and attention call must be what the running ComfyUI's ``JointAttention.forward``
computes: 0.18.1 runs ``q_norm`` / ``k_norm`` + ``apply_rope`` (each norm its own epsilon), 0.30.2 runs
comfy-kitchen's fused ``rms_rope`` with ``q_norm.eps`` (or float32's) for q AND k. On the CPU (eager kernels,
torch's RMSNorm epsilon None = float32's for bf16 too) the two agree for Z-Image's weights, so the blocks here
give ``k_norm`` an epsilon of its own (ci.K_EPS): the two paths then give another k, and these comparisons with the
real module fail if the running ComfyUI's path changes under the mirror.
"""

import pytest
import torch

import comfy_inprocess as ci
import harness

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def comfy(lab):
    ci.import_comfy(harness.find_comfyui())
    return lab.base / "models"


@pytest.fixture(scope="module")
def dit(comfy):
    return ci.pack_module("nodes._internals.dit")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_qk_norm_rope_and_attention_are_the_running_joint_attentions(comfy, dit, dtype):
    dm = ci.tiny_dit(comfy).get_model_object("diffusion_model")
    block = ci.dit_block(dm, dtype=dtype)
    x, freqs, _ = ci.block_inputs(dm, block, dtype)
    calls = []
    options = {ci.ATTENTION_OVERRIDE: ci.capture_attention(calls)}
    expected = block.attention(x, None, freqs, transformer_options=options)
    (q_stock, k_stock, _), = calls
    q, k, v = dit.project_qkv(block.attention, x)
    q, k = dit.stock_qk_norm_rope(block.attention, q, k, freqs)
    assert torch.equal(q.movedim(1, 2), q_stock) and torch.equal(k.movedim(1, 2), k_stock)
    z = dit.attend(block.attention, *dit.project_qkv(block.attention, x), freqs, None, {})
    assert torch.equal(block.attention.out(z), expected)


def test_the_two_stock_paths_differ_on_these_blocks(comfy, dit):
    """The module path (k_norm's own epsilon) and the fused path (q_norm's / float32's epsilon for k) give another
    k here, so the tests above would see a switch; the mirror follows the path the running version takes."""
    dm = ci.tiny_dit(comfy).get_model_object("diffusion_model")
    block = ci.dit_block(dm)
    att = block.attention
    x, freqs, _ = ci.block_inputs(dm, block, torch.bfloat16)
    _, k, _ = dit.project_qkv(att, x)
    module_path = att.k_norm(k)
    fused_path = torch.nn.functional.rms_norm(k, (k.shape[-1],), att.k_norm.weight, torch.finfo(torch.float32).eps)
    assert not torch.equal(module_path, fused_path)
    fused = dit.fused_qk_norm_rope(att)
    assert fused == hasattr(att, "qk_norm")  # 0.30.2 stores qk_norm and fuses; 0.18.1 does neither
    float32_eps = torch.finfo(torch.float32).eps
    assert dit.stock_qk_eps(att) == ((float32_eps, float32_eps) if fused else (att.q_norm.eps, ci.K_EPS))
    calls = []
    block.attention(x, None, freqs, transformer_options={ci.ATTENTION_OVERRIDE: ci.capture_attention(calls)})
    (_, k_stock, _), = calls
    normed = fused_path if fused else module_path  # then RoPE, as both paths do
    expected = dit.apply_rope(normed, normed, freqs)[1]
    assert torch.equal(expected.movedim(1, 2), k_stock)


def _variant(model, change):
    """A clone of the real tiny MODEL whose diffusion_model is a shallow copy changed the way a newer NextDiT-based
    model differs (the shared model and its modules are untouched)."""
    import copy

    dm = copy.copy(model.get_model_object("diffusion_model"))
    dm._buffers = dict(dm._buffers)
    change(dm)
    clone = model.clone()
    clone.add_object_patch("diffusion_model", dm)
    return clone


VARIANTS = {
    "Ming-Image": lambda dm: dm.register_buffer("__ming_image__", torch.empty(0)),
    "masked caption padding": lambda dm: setattr(dm, "masked_pad_multiple", 64),
    "pooled CLIP text": lambda dm: setattr(dm, "clip_text_pooled_proj", torch.nn.Identity()),
    "3-channel inputs": lambda dm: setattr(dm, "in_channels", 3),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_other_nextdit_models_are_refused_before_patching(comfy, variant):
    """NAG and the accelerator refuse NextDiT variants (Ming-Image, masked padding, Lumina 2 pooled text, pixel-space)
    with a sentence naming the model input, and patch nothing."""
    nag = ci.pack_module("nodes.nag")
    acc = ci.pack_module("nodes.accelerate")
    core = ci.pack_module("core.accelerate")
    model, clip = ci.tiny_dit(comfy), ci.tiny_clip(comfy)
    other = _variant(model, VARIANTS[variant])
    patches = dict(other.object_patches)
    with pytest.raises(ValueError, match="^model is .*Z-Image \\(Turbo / Base\\) only"):
        nag.patch_nag(other, ci.encode(clip, "blurry"), 5.0, 2.5, 0.25, 0.0)
    with pytest.raises(ValueError, match="^model is .*Z-Image \\(Turbo / Base\\) only"):
        acc.accelerate_model(other, core.AccelerateOptions(compile_blocks=True))
    assert other.object_patches == patches
    ci.pack_module("nodes._internals.models").check_zimage_model(model)  # the real Z-Image passes


@pytest.mark.parametrize("name", ["direct_context", "ref_frames", "ref_latents"])
def test_nag_refuses_calls_with_reference_inputs(comfy, name):
    """Calls carrying reference / edit inputs (0.36+ direct_context, Ming-Image ref_frames, Omni ref_latents)."""
    nag = ci.pack_module("nodes.nag")
    wrapper = nag.make_wrapper(torch.zeros(1, 4, 128), {"scale": 5.0, "tau": 2.5, "alpha": 0.25, "end_sigma": 0.0})
    with pytest.raises(ValueError, match=f"text-to-image only \\(this call has {name}\\)"):
        wrapper(None, torch.zeros(1, 16, 8, 8), torch.zeros(1), torch.zeros(1, 4, 128), 4, None,
                **{name: [torch.zeros(1, 16, 8, 8)]}, transformer_options={})
