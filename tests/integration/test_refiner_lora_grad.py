"""The refiner LoRA trainer's backward pass on ComfyUI's own modules (in process, CPU): its loss and
gradients equal an independent autograd computation written from the checkpoint's tensors, and the
trainer sets ``comfy.model_management.in_training`` (ComfyUI 0.30.2 otherwise runs comfy-kitchen's fused
q/k-norm + RoPE kernel) only while it trains."""

import pytest
import torch
import torch.nn.functional as F

import comfy_inprocess as ci
import harness

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def comfy(lab):
    ci.import_comfy(harness.find_comfyui())
    return lab.base / "models"


def _rms(x, weight, eps):
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _rope(x, freqs):
    """comfy/ldm/flux/math.py's RoPE written out: pairs (x0, x1) rotated by the 2x2 matrices in freqs."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 1, 2)
    return (freqs[..., 0] * pairs[..., 0] + freqs[..., 1] * pairs[..., 1]).reshape(*x.shape)


def _reference(sd, eps, heads, kv_heads, n_blocks, states, freqs, lora):
    """The caption path from the checkpoint's tensors (cap_embedder, pad, refiner blocks) with LoRA deltas."""
    def linear(x, name):
        y = F.linear(x, sd[f"{name}.weight"], sd.get(f"{name}.bias"))
        if name in lora:
            down, up, scale = lora[name]
            y = y + F.linear(F.linear(x, down), up) * scale
        return y

    x = F.linear(_rms(states, sd["cap_embedder.0.weight"], eps["cap_embedder.0"]), sd["cap_embedder.1.weight"],
                 sd["cap_embedder.1.bias"])
    extra = (-x.shape[1]) % 32
    x = torch.cat([x, sd["cap_pad_token"].unsqueeze(0).repeat(1, extra, 1)], dim=1)
    for i in range(n_blocks):
        p = f"context_refiner.{i}"
        h = _rms(x, sd[f"{p}.attention_norm1.weight"], eps[f"{p}.attention_norm1"])
        qkv = linear(h, f"{p}.attention.qkv")
        dh = qkv.shape[-1] // (heads + 2 * kv_heads)
        q, k, v = qkv.split([heads * dh, kv_heads * dh, kv_heads * dh], dim=-1)
        q = _rms(q.view(1, -1, heads, dh), sd[f"{p}.attention.q_norm.weight"], eps[f"{p}.attention.q_norm"])
        k = _rms(k.view(1, -1, kv_heads, dh), sd[f"{p}.attention.k_norm.weight"], eps[f"{p}.attention.k_norm"])
        q, k = _rope(q, freqs), _rope(k, freqs)
        v = v.view(1, -1, kv_heads, dh)
        k, v = (t.repeat_interleave(heads // kv_heads, dim=2) for t in (k, v))
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        a = linear(a.transpose(1, 2).reshape(1, -1, heads * dh), f"{p}.attention.out")
        x = x + _rms(a, sd[f"{p}.attention_norm2.weight"], eps[f"{p}.attention_norm2"])
        h = _rms(x, sd[f"{p}.ffn_norm1.weight"], eps[f"{p}.ffn_norm1"])
        f = linear(F.silu(linear(h, f"{p}.feed_forward.w1")) * linear(h, f"{p}.feed_forward.w3"), f"{p}.feed_forward.w2")
        x = x + _rms(f, sd[f"{p}.ffn_norm2.weight"], eps[f"{p}.ffn_norm2"])
    return x


def test_trainer_gradients_match_an_independent_autograd_computation(comfy):
    import comfy.model_management as mm

    train = ci.pack_module("nodes.refiner_lora_train")
    core = ci.pack_module("core.refiner_lora_train")
    memory = ci.pack_module("nodes._internals.memory")
    model = ci.tiny_dit(comfy)
    dm = model.get_model_object("diffusion_model")
    assert mm.in_training is False
    with torch.inference_mode(False), torch.enable_grad(), memory.training_flag(mm) as flagged:
        assert flagged and mm.in_training is True
        stack, blocks = train.refiner_stack(model, torch.device("cpu"))
        loras, hooks = core.attach_loras(blocks, core.MODULE_SETS["attention + feed-forward"], 2, 3.0, 5)
        gen = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for lora in loras.values():
                lora.up.copy_(0.05 * torch.randn(lora.up.shape, generator=gen))
        states = torch.randn(1, 13, dm.cap_embedder[1].in_features, generator=gen)
        target = torch.randn(1, 32, dm.cap_embedder[1].out_features, generator=gen)
        loss = ((stack.refine(states) - target) ** 2).sum()
        loss.backward()
        ids = torch.zeros(1, 32, 3)
        ids[:, :, 0] = torch.arange(32, dtype=torch.float32) + 1.0
        freqs = dm.rope_embedder(ids).movedim(1, 2)
    assert mm.in_training is False  # restored
    for hook in hooks:
        hook.remove()

    sd = {k: v.detach().float().clone() for k, v in dm.state_dict().items()}
    eps = {name: getattr(m, "eps", None) for name, m in dm.named_modules()}
    attn = dm.context_refiner[0].attention
    params = {n: (l.down.detach().clone().requires_grad_(), l.up.detach().clone().requires_grad_(), l.scale)
              for n, l in loras.items()}
    with torch.inference_mode(False), torch.enable_grad():
        ref = _reference(sd, eps, attn.n_local_heads, attn.n_local_kv_heads, len(dm.context_refiner), states,
                         freqs.detach(), params)
        ref_loss = ((ref - target) ** 2).sum()
        grads = torch.autograd.grad(ref_loss, [t for d, u, _ in params.values() for t in (d, u)])
    assert float(loss.detach()) == pytest.approx(float(ref_loss.detach()), rel=1e-5)
    ours = [t.grad for l in loras.values() for t in (l.down, l.up)]
    assert len(ours) == len(grads) == 20
    for mine, theirs in zip(ours, grads):
        assert mine is not None and float(theirs.abs().max()) > 0
        assert float((mine - theirs).norm() / theirs.norm()) < 1e-4  # float32 rounding only
