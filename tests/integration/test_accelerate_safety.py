"""ZImageLabAccelerate on the servers users run: options that cannot run safely are switched off before anything
is patched, foreign attention overrides are kept, newer ComfyUI call signatures pass through, and the VAE mirror
follows the running VAE.decode, and the CUDA-graph weight-address cache lets replaced models go (measured on an H100,
0.30.2 --disable-cuda-malloc: a cache holding the modules kept each Accelerate re-run's 12 GB resident copy on the
GPU until prompts ran out of memory). In-process, with the running ComfyUI's own classes (CPU)."""

import copy
import gc
import inspect
import weakref

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
def acc(comfy):
    return ci.pack_module("nodes.accelerate")


@pytest.fixture(scope="module")
def graphs(comfy):
    return ci.pack_module("nodes._internals.graphs")


def test_compiled_blocks_are_not_captured_under_cudamallocasync(graphs):
    reason = graphs.graph_conflict(True, True, backend="cudaMallocAsync")
    assert reason and "--disable-cuda-malloc" in reason and "cudaMallocAsync" in reason
    assert graphs.graph_conflict(True, True, backend="native") is None
    assert graphs.graph_conflict(False, True, backend="cudaMallocAsync") is None  # eager ops capture fine
    assert graphs.graph_conflict(True, False, backend="cudaMallocAsync") is None
    assert graphs.allocator_backend() in ("native", "cudaMallocAsync")


def test_safe_options_switch_off_before_patching(acc, graphs, comfy, monkeypatch):
    core = ci.pack_module("core.accelerate")
    model = ci.tiny_dit(comfy)
    monkeypatch.setattr(graphs, "allocator_backend", lambda: "cudaMallocAsync")  # the allocator ComfyUI picks on GPU
    options = core.AccelerateOptions(compile_blocks=True, cuda_graphs=True, sync_free_sampling=True)
    safe, notes = acc.safe_options(model, options)
    assert safe == core.AccelerateOptions(compile_blocks=True, cuda_graphs=False, sync_free_sampling=True)
    assert len(notes) == 1 and "cuda_graphs switched off" in notes[0] and "--disable-cuda-malloc" in notes[0]
    patched, runtime = acc.accelerate_model(model, options)
    assert runtime.options.cuda_graphs is False and runtime.notes == notes
    assert not patched.wrappers.get(graphs.DIFFUSION_MODEL, {}).get(acc.WRAPPER_KEY)  # no graph wrapper installed
    assert patched.wrappers.get(graphs.SAMPLER_SAMPLE, {}).get(acc.WRAPPER_KEY)


def test_a_foreign_attention_override_is_kept(acc, comfy):
    core = ci.pack_module("core.accelerate")
    ops = ci.pack_module("nodes._internals.ops")
    model = ci.tiny_dit(comfy).clone()

    def their_override(func, *args, **kwargs):  # what ModelAttentionBackend / BlockSparseAttention install
        return func(*args, **kwargs)

    ops.set_attention_override(model, their_override)
    patched, runtime = acc.accelerate_model(model, core.AccelerateOptions(attention="auto", compile_blocks=True))
    assert ops.attention_override_of(patched) is their_override
    assert ops.attention_override_of(model) is their_override
    assert runtime.options.attention == "off" and any("attention left to" in n for n in runtime.notes)
    plain, runtime = acc.accelerate_model(ci.tiny_dit(comfy), core.AccelerateOptions(attention="auto"))
    assert getattr(ops.attention_override_of(plain), "zimage_lab", False) and not runtime.notes


def test_graphed_text_model_passes_newer_keywords_through(comfy):
    llama = ci.pack_module("nodes._internals.llama")
    core = ci.pack_module("core.accelerate")
    clip = ci.tiny_clip(comfy)
    path = llama._text_model_path(clip.cond_stage_model)
    inner = clip.patcher.get_model_object(path)
    graphed = llama.GraphedTextModel(inner, core.GraphRunner())
    embeds = torch.randn(1, 7, inner.embed_tokens.weight.shape[1])
    expected = inner(None, None, embeds=embeds, intermediate_output=-2)
    # later Llama2_.forward callers (TextGenerate, 0.36+) pass these; unset they change nothing
    got = graphed(None, None, embeds=embeds, intermediate_output=-2, input_ids=None, deepstack_embeds=None,
                  visual_pos_masks=None, decode_buffers=None)
    assert all(torch.equal(a, b) for a, b in zip(got, expected) if isinstance(a, torch.Tensor))
    accepts = set(inspect.signature(type(inner).forward).parameters)
    if "deepstack_embeds" not in accepts:  # this ComfyUI's Llama has no such input: the same error as stock
        with pytest.raises(TypeError, match="deepstack_embeds"):
            graphed(None, None, embeds=embeds, deepstack_embeds=[embeds])


def test_fast_vae_output_follows_the_running_decode(comfy):
    import comfy.model_management
    import comfy.sd

    vae_mod = ci.pack_module("nodes._internals.vae")
    assert vae_mod.mirror_applies(comfy.sd.VAE)  # the running VAE.decode uses only contexts the mirror knows
    uses_context = "cuda_device_context" in inspect.getsource(comfy.sd.VAE.decode)
    assert vae_mod._decode_contexts(comfy.sd.VAE.decode) == ({"cuda_device_context"} if uses_context else set())

    class NewerVAE(comfy.sd.VAE):
        def decode(self, samples_in, vae_options={}):
            with comfy.model_management.pause_malloc_graph(self.device):  # a context the mirror does not know
                return super().decode(samples_in, vae_options)

    assert not vae_mod.mirror_applies(NewerVAE)


@pytest.mark.parametrize("group", ["layers", "noise_refiner", "context_refiner"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_exact_block_path_is_the_running_stock_block(comfy, group, dtype):
    """core.joint_block uncompiled (the accelerator's exact path: no torch.compile, no FP8) on the real block of the
    running ComfyUI, whose k_norm has its own epsilon so that 0.18.1's module path and 0.30.2's fused rms_rope give
    other outputs: the accelerated block's output is the stock block's, bit for bit."""
    core = ci.pack_module("core.accelerate")
    blocks = ci.pack_module("nodes._accelerate_block")
    dm = ci.tiny_dit(comfy).get_model_object("diffusion_model")
    block = ci.dit_block(dm, group, dtype)
    x, freqs, adaln = ci.block_inputs(dm, block, dtype)
    torch.set_grad_enabled(False)  # inference, as ComfyUI samples (with grad the block falls back to stock)
    try:
        _check_exact_block(core, blocks, block, x, freqs, adaln, dtype)
    finally:
        torch.set_grad_enabled(True)


def _check_exact_block(core, blocks, block, x, freqs, adaln, dtype):
    stock = block(x, None, freqs, adaln, transformer_options={})
    runtime = blocks.Runtime(core.AccelerateOptions())
    assert runtime.block_fn is core.joint_block and not runtime.compiled
    fast = blocks.AcceleratedBlock(block, runtime)
    assert torch.equal(fast(x, None, freqs, adaln, transformer_options={}), stock)
    assert runtime.stats.fast_calls == 1 and runtime.stats.fallback_calls == 0
    # core's own arithmetic (the compiled path's maths) with the running version's q/k epsilon: rounding only
    weights = fast._weights(ci.pack_module("nodes._internals.ops").WeightFetcher(x), False)
    ours = core.joint_block(x, freqs, adaln, weights, fast.shape)
    assert (ours.float() - stock.float()).abs().max() <= (1e-4 if dtype == torch.float32 else 0.1)


def test_multigpu_deep_clone_accelerates_its_own_blocks(acc, comfy):
    """A multi-GPU deep clone (comfy/multigpu.py, 0.30.2) of an accelerated MODEL: its AcceleratedBlocks stand in
    for the clone's own freshly loaded blocks, not the first GPU's."""
    core = ci.pack_module("core.accelerate")
    patched, _ = acc.accelerate_model(ci.tiny_dit(comfy), core.AccelerateOptions(compile_blocks=False, fp8_matmul=True))
    if not hasattr(patched, "deepclone_multigpu"):
        pytest.skip("this ComfyUI has no multi-GPU deep clone (0.18.1)")
    clone = patched.deepclone_multigpu()
    for name in ("layers.0", "noise_refiner.1", "context_refiner.0"):
        block = clone.get_model_object(f"diffusion_model.{name}")
        group, i = name.split(".")
        own = getattr(clone.model.diffusion_model, group)[int(i)]
        assert block.original is own
        assert block.original is not getattr(patched.get_model_object("diffusion_model"), group)[int(i)]


def test_signature_is_every_parameter_address(comfy, graphs):
    dm = ci.tiny_dit(comfy).get_model_object("diffusion_model")
    expected = tuple(p.data_ptr() for m in dm.modules() for _, p in m.named_parameters(recurse=False))
    assert graphs.weights_signature(dm) == expected
    assert graphs.weights_signature(dm, torch.device("cpu")) == expected
    assert graphs.weights_signature(dm, torch.device("meta")) is None  # a weight elsewhere: no graph


def fresh_dit(models_dir):
    """A NextDiT of its own (ci.tiny_dit's is shared by the session's tests)."""
    import tiny_models

    path = models_dir / "diffusion_models" / harness.TINY_FILES["unet_name"]
    return tiny_models.load_dit(str(path)).get_model_object("diffusion_model")


def test_a_model_read_once_stays_collectable(comfy, graphs):
    dm = fresh_dit(comfy)
    assert graphs.weights_signature(dm) is not None
    model_ref, weight_ref = weakref.ref(dm), weakref.ref(dm.layers[0].attention.qkv.weight)
    del dm
    gc.collect()
    assert model_ref() is None and weight_ref() is None, "the signature cache keeps a replaced model's weights alive"


def test_a_swapped_block_and_a_moved_weight_change_the_signature(comfy, graphs):
    dm = fresh_dit(comfy)
    before = graphs.weights_signature(dm)
    old = dm.layers[0]
    replacement = type(old).__new__(type(old))
    replacement.__dict__.update(old.__dict__)
    replacement._modules = {name: copy.deepcopy(m) for name, m in old._modules.items()}
    dm.layers[0] = replacement
    del old
    gc.collect()
    after = graphs.weights_signature(dm)
    assert after != before and after == tuple(
        p.data_ptr() for m in dm.modules() for _, p in m.named_parameters(recurse=False))
    with torch.no_grad():
        dm.layers[1].attention.qkv.weight = torch.nn.Parameter(dm.layers[1].attention.qkv.weight.clone())
    assert graphs.weights_signature(dm) != after
