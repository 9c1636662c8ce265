"""core.accelerate: the block maths, RoPE, FP8 quantization, the sync-free sampler, padding and the encode cache.

Each check computes the expected result independently (complex-number RoPE, an explicit float64
transformer block, a hand-written multistep solver), never by calling the code under test twice.
"""

import gc
import math

import pytest
import torch

from core import accelerate as core


def _pairs_to_matrices(angles: torch.Tensor) -> torch.Tensor:
    """ComfyUI's rotation layout [..., D/2, 2, 2] = [[cos, -sin], [sin, cos]] from angles [..., D/2]."""
    cos, sin = angles.cos(), angles.sin()
    return torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)


def test_rope_equals_multiplying_complex_pairs():
    gen = torch.Generator().manual_seed(0)
    b, seqlen, heads, dim = 2, 7, 3, 16
    x = torch.randn(b, seqlen, heads, dim, generator=gen, dtype=torch.float64)
    angles = torch.randn(1, seqlen, 1, dim // 2, generator=gen, dtype=torch.float64)
    out = core.rope(x, _pairs_to_matrices(angles))
    z = torch.view_as_complex(x.reshape(b, seqlen, heads, dim // 2, 2).contiguous())
    expected = torch.view_as_real(z * torch.polar(torch.ones_like(angles), angles)).reshape(x.shape)
    assert torch.allclose(out, expected, atol=1e-12)
    assert not torch.allclose(out, x)


def test_rope_keeps_bf16_inputs_in_bf16_and_rounds_once():
    x = torch.randn(1, 5, 2, 8).to(torch.bfloat16)
    angles = torch.rand(1, 5, 1, 4) * 3
    out = core.rope(x, _pairs_to_matrices(angles).float())
    exact = core.rope(x.double(), _pairs_to_matrices(angles).double())
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.double(), exact, rtol=1e-2, atol=1e-2)


def _reference_block(x, freqs, adaln, w, s):
    """A Z-Image transformer block written out in float64 with explicit softmax attention."""
    d = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in w._asdict().items()}
    x, freqs, adaln = x.double(), freqs.double(), adaln.double() if adaln is not None else None

    def rms(t, weight, eps):
        eps = torch.finfo(torch.float64).eps if eps is None else eps
        return t / torch.sqrt(t.pow(2).mean(-1, keepdim=True) + eps) * weight

    def attend(h):
        bsz, n, _ = h.shape
        qkv = h @ d["qkv"].T
        q, k, v = qkv.split([s.n_heads * s.head_dim] * 3, dim=-1)
        q, k, v = (t.reshape(bsz, n, s.n_heads, s.head_dim) for t in (q, k, v))
        q, k = rms(q, d["q_norm"], s.qk_eps), rms(k, d["k_norm"], s.qk_eps)
        angles = torch.atan2(freqs[..., 1, 0], freqs[..., 0, 0])
        rot = torch.polar(torch.ones_like(angles), angles)
        q = torch.view_as_real(torch.view_as_complex(q.reshape(bsz, n, s.n_heads, -1, 2).contiguous()) * rot).reshape(q.shape)
        k = torch.view_as_real(torch.view_as_complex(k.reshape(bsz, n, s.n_heads, -1, 2).contiguous()) * rot).reshape(k.shape)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(s.head_dim)
        out = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(bsz, n, -1)
        return out @ d["out"].T

    def ffn(h):
        return (torch.nn.functional.silu(h @ d["w1"].T) * (h @ d["w3"].T)) @ d["w2"].T

    if s.modulation:
        scale_msa, gate_msa, scale_mlp, gate_mlp = (adaln @ d["adaln"].T + d["adaln_bias"]).chunk(4, dim=1)
        x = x + gate_msa.tanh()[:, None] * rms(attend(rms(x, d["attention_norm1"], s.norm_eps) * (1 + scale_msa[:, None])),
                                                d["attention_norm2"], s.norm_eps)
        return x + gate_mlp.tanh()[:, None] * rms(ffn(rms(x, d["ffn_norm1"], s.norm_eps) * (1 + scale_mlp[:, None])),
                                                  d["ffn_norm2"], s.norm_eps)
    x = x + rms(attend(rms(x, d["attention_norm1"], s.norm_eps)), d["attention_norm2"], s.norm_eps)
    return x + rms(ffn(rms(x, d["ffn_norm1"], s.norm_eps)), d["ffn_norm2"], s.norm_eps)


def _random_block(dim=64, heads=2, hidden=96, adaln_in=32, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.1):
        return torch.randn(*shape, generator=gen) * scale

    def norm(n):
        return 1 + r(n)

    head_dim = dim // heads
    w = core.BlockWeights(qkv=r(3 * dim, dim), out=r(dim, dim), out_bias=None, q_norm=norm(head_dim),
                          k_norm=norm(head_dim), w1=r(hidden, dim), w2=r(dim, hidden), w3=r(hidden, dim),
                          attention_norm1=norm(dim), attention_norm2=norm(dim), ffn_norm1=norm(dim), ffn_norm2=norm(dim),
                          adaln=r(4 * dim, adaln_in), adaln_bias=r(4 * dim))
    return w, head_dim


@pytest.mark.parametrize("modulation", [True, False])
def test_joint_block_matches_an_explicit_float64_block(modulation):
    w, head_dim = _random_block()
    s = core.BlockShape(n_heads=2, n_kv_heads=2, head_dim=head_dim, norm_eps=1e-5, qk_eps=None,
                        modulation=modulation, adaln_silu=False)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 12, 64, generator=gen)
    adaln = torch.randn(2, 32, generator=gen) if modulation else None
    freqs = _pairs_to_matrices(torch.rand(1, 12, 1, head_dim // 2, generator=gen) * 6)
    out = core.joint_block(x, freqs, adaln, w, s, backend="auto")
    expected = _reference_block(x, freqs, adaln, w, s)
    assert out.dtype == torch.float32
    assert torch.allclose(out.double(), expected, atol=2e-5, rtol=1e-5), (out.double() - expected).abs().max()


def test_each_sdpa_backend_that_runs_on_cpu_gives_the_same_attention():
    q, k, v = (torch.randn(1, 2, 9, 16) for _ in range(3))
    expected = ((q @ k.transpose(-1, -2)) / 4).softmax(-1) @ v
    for backend in ("auto", "math", "flash"):
        assert torch.allclose(core.sdpa(q, k, v, backend), expected, atol=1e-5), backend


def test_row_quantization_scales_each_row_to_the_e4m3_range():
    gen = torch.Generator().manual_seed(2)
    t = torch.randn(6, 32, generator=gen) * torch.tensor([0.01, 0.1, 1, 10, 100, 1000])[:, None]
    q, scale = core.quantize_rows(t)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (6, 1)
    assert torch.allclose(q.float().abs().amax(-1), torch.full((6,), core.FP8_MAX))
    back = q.float() * scale
    # e4m3 keeps 3 mantissa bits: relative error per element at most 2^-4 (for values in the normal range)
    big = t.abs() > t.abs().amax(-1, keepdim=True) / 64
    assert ((back - t).abs()[big] <= t.abs()[big] * 2**-4 + 1e-12).all()


def test_fp8_linear_is_the_product_of_the_dequantized_operands():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 5, 32, generator=gen)
    weight = torch.randn(48, 32, generator=gen)
    bias = torch.randn(48, generator=gen)
    fp8 = core.quantize_weight(weight)
    out = core.linear(x, fp8, bias)
    xq, xs = core.quantize_rows(x.reshape(-1, 32))
    expected = ((xq.double() * xs.double()) @ (fp8.data.double() * fp8.scale.double()).T + bias.double()).reshape(4, 5, 48)
    assert out.shape == (4, 5, 48)
    assert torch.allclose(out.double(), expected, atol=1e-4)
    exact = x @ weight.T + bias
    rel = (out - exact).norm() / exact.norm()
    assert 1e-4 < rel < 0.1, rel  # FP8 is not exact, but close


def test_linear_with_a_plain_weight_is_f_linear():
    x, weight = torch.randn(3, 8), torch.randn(5, 8)
    assert torch.equal(core.linear(x, weight), torch.nn.functional.linear(x, weight))


def test_padding_at_the_end_leaves_causal_hidden_states_unchanged():
    gen = torch.Generator().manual_seed(4)
    layer = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True).eval()
    embeds = torch.randn(1, 11, 16, generator=gen)
    mask = torch.ones(1, 11, dtype=torch.long)
    padded, padded_mask = core.pad_tokens(embeds, mask, 8)
    assert padded.shape == (1, 16, 16) and padded_mask.tolist() == [[1] * 11 + [0] * 5]
    causal = torch.nn.Transformer.generate_square_subsequent_mask
    with torch.no_grad():
        plain = layer(embeds, src_mask=causal(11), is_causal=True)
        from_padded = layer(padded, src_mask=causal(16), is_causal=True)[:, :11]
    assert torch.allclose(plain, from_padded, atol=1e-6)
    same, same_mask = core.pad_tokens(padded, padded_mask, 8)
    assert same is padded and same_mask is padded_mask


def test_sync_free_res_multistep_follows_the_two_step_formula():
    """Toy denoiser D(x, s) = 0.5 x: Euler for the first step and before sigma 0, the 2nd-order update between."""
    sigmas = torch.tensor([1.0, 0.75, 0.4, 0.0])
    x0 = torch.tensor([[2.0, -1.0]])

    def model(x, sigma, **_):
        return 0.5 * x

    noise_calls = []

    def noise(a, b):
        noise_calls.append((float(a), float(b)))
        return torch.ones_like(x0)

    out = core.res_multistep_sync_free(model, x0.clone(), sigmas, {}, None, 1.0, noise)
    # reference, in float64
    s = sigmas.double().tolist()
    x = x0.double()
    d0 = model(x, None)
    x = x + (x - d0) / s[0] * (s[1] - s[0])                      # step 0: Euler
    d1 = model(x, None)
    t, t_old, t_next, t_prev = -math.log(s[1]), -math.log(s[1]), -math.log(s[2]), -math.log(s[0])
    h = t_next - t
    c2 = (t_prev - t_old) / h
    phi1 = math.expm1(-h) / -h
    phi2 = (phi1 - 1.0) / -h
    x = math.exp(-h) * x + h * ((phi1 - phi2 / c2) * d1 + (phi2 / c2) * d0)   # step 1: multistep
    d2 = model(x, None)
    x = x + (x - d2) / s[2] * (s[3] - s[2])                      # step 2: Euler into sigma 0
    assert torch.allclose(out.double(), x, atol=1e-6)
    assert [(a, round(b, 6)) for a, b in noise_calls] == [(1.0, 0.75), (0.75, 0.4)]  # drawn (times 0) while sigma_next > 0


def test_encode_cache_computes_once_per_key_and_forgets_a_collected_owner():
    cache = core.EncodeCache(max_entries=3)

    class Owner:
        pass

    owner = Owner()
    calls = []
    for _ in range(3):
        value = cache.get_or_compute(owner, ("encode", "a red fox"), lambda: calls.append(1) or "tensor")
    assert value == "tensor" and len(calls) == 1
    assert cache.stats()["by_kind"]["encode"] == {"hits": 2, "misses": 1}
    other = Owner()
    cache.get_or_compute(other, ("encode", "a red fox"), lambda: "other")
    assert len(cache) == 2
    del owner
    gc.collect()
    assert len(cache) == 1  # the collected owner's entry went with it
    for i in range(5):
        cache.get_or_compute(other, ("encode", i), lambda: i)
    assert len(cache) == 3  # least recently used dropped beyond max_entries
    cache.clear()
    assert len(cache) == 0 and cache.stats()["hits"] == 0


def test_freeze_is_exact_and_hashable():
    a = {"qwen3_4b": [[(151644, 1.0), (872, 1.0)]], "t": torch.tensor([1.5, 2.0])}
    b = {"qwen3_4b": [[(151644, 1.0), (872, 1.0)]], "t": torch.tensor([1.5, 2.0])}
    c = {"qwen3_4b": [[(151644, 1.0), (873, 1.0)]], "t": torch.tensor([1.5, 2.0])}
    assert hash(core.freeze(a)) == hash(core.freeze(b)) and core.freeze(a) == core.freeze(b)
    assert core.freeze(a) != core.freeze(c)
    assert core.freeze(torch.tensor(3.0)) != core.freeze(torch.tensor(3.0, dtype=torch.float64))


def test_options_validate_and_report_what_is_on():
    assert not core.AccelerateOptions().any
    assert core.AccelerateOptions(sync_free_sampling=True).any
    with pytest.raises(ValueError, match="attention"):
        core.AccelerateOptions(attention="fastest").validate()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_graph_runner_replays_with_new_inputs():
    runner = core.GraphRunner()
    weight = torch.randn(8, 8, device="cuda")

    def fn(x):
        return (x @ weight).relu()

    for _ in range(3):
        x = torch.randn(4, 8, device="cuda")
        out, _ = runner.run(("k",), fn, x)
        assert torch.allclose(out, fn(x))
    assert len(runner) == 1
