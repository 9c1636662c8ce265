"""Seed variance on a real ComfyUI: strength 0 is stock bit for bit, strength > 0 spreads the seeds,
the same seed and settings give the same bytes, the step window holds."""

import pytest
import torch

import caption_dit
import comfy_inprocess as ci
import harness
from core import diversity

pytestmark = pytest.mark.integration

STEPS = 2
TECHNIQUES = {  # node id suffix: (class_type, inputs at strength 0) -- strength set per test
    "caption_qwen3": ("ZImageLabCaptionNoise", {"fraction": 0.5, "steps": 1, "space": "qwen3", "seed": 3,
                                                "protect_start": 3, "protect_end": 5}),
    "caption_refined": ("ZImageLabCaptionNoise", {"fraction": 0.5, "steps": 1, "space": "refined", "seed": 3,
                                                  "protect_start": 3, "protect_end": 5}),
    "initial": ("ZImageLabInitialNoiseStructure", {"scale": 2, "seed": 3}),
    # every shift maps sigma 1 to 1: the first step never moves, so the window must reach step 2
    "shift": ("ZImageLabEarlyStepVariation", {"mode": "shift", "steps": 2, "seed": 3}),
    "guidance": ("ZImageLabEarlyStepVariation", {"mode": "guidance", "steps": 1, "seed": 3}),
}
STRENGTH = {"caption_qwen3": 2.0, "caption_refined": 2.0, "initial": 2.0, "shift": 1.5, "guidance": 3.0}


def _base(batch, unet_name=harness.TINY_FILES["unet_name"], text="a red fox sitting in fresh snow"):
    return {
        "1": {"class_type": "ZImageLabTestTinyUNETLoader", "inputs": {"unet_name": unet_name}},
        "2": {"class_type": "ZImageLabTestTinyCLIPLoader", "inputs": {"clip_name": harness.TINY_FILES["clip_name"]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["2", 0]}},
        "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": batch}},
        "6": {"class_type": "VAELoader", "inputs": {"vae_name": harness.TINY_FILES["vae_name"]}},
    }


def _sample(api, nid, model, save=True):
    api[nid] = {"class_type": "ZImageLabSampler", "inputs": {
        "model": model, "positive": ["3", 0], "latent_image": ["5", 0], "seed": 11, "steps": STEPS, "shift": 3.0,
        "sampler_name": "euler", "scheduler": "simple", "cfg": 1.0, "denoise": 1.0}}
    if save:
        api[f"s{nid}"] = {"class_type": "SaveLatent", "inputs": {"samples": [nid, 0], "filename_prefix": f"t/sv_{nid}"}}


def _technique(api, name, strength, **changes):
    cls, inputs = TECHNIQUES[name]
    api[name] = {"class_type": cls, "inputs": {"model": ["1", 0], **inputs, "strength": strength, **changes}}
    return [name, 0]


def test_strength_zero_is_stock_and_strength_changes_the_latent(lab):
    api = _base(batch=2)
    _sample(api, "stock", ["1", 0])
    for name in TECHNIQUES:
        _sample(api, f"{name}_0", _technique(api, name, 0.0))
    for name in TECHNIQUES:
        api[f"{name}_on"] = {**api[name], "inputs": {**api[name]["inputs"], "strength": STRENGTH[name]}}
        _sample(api, f"{name}_x", [f"{name}_on", 0])
    result = lab.run(api)
    (stock,) = lab.latents(result, "sstock")
    for name in TECHNIQUES:
        (zero,) = lab.latents(result, f"s{name}_0")
        (on,) = lab.latents(result, f"s{name}_x")
        assert torch.equal(zero, stock), f"{name} at strength 0 differs from stock"
        assert not torch.equal(on, stock) and torch.isfinite(on).all(), f"{name} at strength {STRENGTH[name]} did nothing"


def test_structured_noise_at_zero_is_random_noise(lab):
    api = _base(batch=2)
    api["m"] = {"class_type": "ModelSamplingAuraFlow", "inputs": {"model": ["1", 0], "shift": 3.0}}
    api["g"] = {"class_type": "BasicGuider", "inputs": {"model": ["m", 0], "conditioning": ["3", 0]}}
    api["k"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
    api["sig"] = {"class_type": "BasicScheduler", "inputs": {"model": ["m", 0], "scheduler": "simple", "steps": STEPS,
                                                              "denoise": 1.0}}
    api["n_stock"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": 21}}
    api["n_0"] = {"class_type": "ZImageLabStructuredNoise", "inputs": {"noise_seed": 21, "strength": 0.0, "scale": 2,
                                                                       "seed": 0}}
    api["n_1"] = {"class_type": "ZImageLabStructuredNoise", "inputs": {"noise_seed": 21, "strength": 1.0, "scale": 2,
                                                                       "seed": 0}}
    for tag in ("stock", "0", "1"):
        api[f"x{tag}"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": [f"n_{tag}", 0], "guider": ["g", 0], "sampler": ["k", 0], "sigmas": ["sig", 0],
            "latent_image": ["5", 0]}}
        api[f"sx{tag}"] = {"class_type": "SaveLatent", "inputs": {"samples": [f"x{tag}", 0], "filename_prefix": f"t/sn_{tag}"}}
    result = lab.run(api)
    (stock,), (zero,), (one,) = (lab.latents(result, f"sx{t}") for t in ("stock", "0", "1"))
    assert torch.equal(stock, zero)
    assert not torch.equal(stock, one)


SPREAD_SEEDS = 16
SPREAD = {  # technique: (strength, steps in the window, cfg) -- realistic settings, the whole short schedule
    "caption_qwen3": (4.0, 2, 1.0), "caption_refined": (4.0, 2, 1.0), "initial": (1.0, None, 1.0),
    "shift": (1.0, 2, 1.0), "guidance": (3.0, 2, 2.0)}
# Measured on the tiny random models, see docs/seed_diversity.md: what the weights cannot show
NOT_ON_RANDOM_WEIGHTS = {"caption_qwen3"}


def _spread_graph(name, strength, steps, cfg, batch=SPREAD_SEEDS, base=None, **changes):
    api = _base(batch, **(base or {}))
    _sample(api, "stock", ["1", 0])
    changes = changes if steps is None else {**changes, "steps": steps}
    _sample(api, "x", _technique(api, name, strength, **changes))
    api["neg"] = {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["3", 0]}}
    for nid in ("stock", "x"):
        api[nid]["inputs"].update(cfg=cfg, **({"negative": ["neg", 0]} if cfg != 1.0 else {}))
        api[f"d{nid}"] = {"class_type": "VAEDecode", "inputs": {"samples": [nid, 0], "vae": ["6", 0]}}
        api[f"i{nid}"] = {"class_type": "SaveImage", "inputs": {"images": [f"d{nid}", 0], "filename_prefix": f"t/sp_{name}"}}
    return api


def _images(lab, result, nid):
    return torch.stack([torch.from_numpy(a[..., :3].copy()).permute(2, 0, 1).float() / 255.0
                        for a in lab.images(result, nid)])


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=(
    "caption noise does not spread the seeds of the tiny RANDOM DiT by these measures: its output norm is set by "
    "normalised random activations, so caption noise re-orients each seed's result instead of adding variance "
    "(per-seed change RMS 0.5-0.7 vs pairwise 4.7, pairwise distance unchanged); on a DiT that reads its caption it "
    "does: test_caption_noise_spreads_the_seeds_of_a_caption_reading_dit; see docs/seed_diversity.md")))
    if n in NOT_ON_RANDOM_WEIGHTS else n for n in SPREAD])
def test_non_zero_strength_spreads_the_seeds_more_than_stock(lab, name):
    """Same 16 seeds, stock vs technique: the mean pairwise distance grows, its 95% bootstrap interval over seeds above 0.

    The asserted measure (weight-free): RMSE of the final latents (the last step's x0 prediction) after 4x4 average
    pooling -- the low frequencies, where the composition lives. The margin is the bootstrap interval, not a tuned
    number. Pixel RMSE of the decoded images at 16 px is printed, not asserted: the tiny TAESD is random, its images
    are its own texture (measured: stock 0.090, initial 0.092 with the interval across 0, docs/seed_diversity.md).
    """
    strength, steps, cfg = SPREAD[name]
    measured = _spread(lab, lab.run(_spread_graph(name, strength, steps, cfg)))
    print(name, measured)
    assert measured["latent_low"]["low"] > 0, (name, measured)


def _spread(lab, result):
    """Paired bootstrap of the mean pairwise distance, stock vs technique: latents (4x4-pooled) and 16-px images."""
    (stock,), (varied,) = lab.latents(result, "sstock"), lab.latents(result, "sx")
    images = {k: diversity.downscale(_images(lab, result, f"i{k}"), 16) for k in ("stock", "x")}
    measured = {
        "latent_low": diversity.paired_bootstrap(diversity.distance_matrix(stock, 4), diversity.distance_matrix(varied, 4)),
        "pixels_16": diversity.paired_bootstrap(diversity.distance_matrix(images["stock"]),
                                                diversity.distance_matrix(images["x"])),
    }
    return {k: {m: round(v, 4) for m, v in r.items()} for k, r in measured.items()}


@pytest.fixture(scope="module")
def caption_reader(lab):
    """caption_dit's trained DiT in the lab server's diffusion_models (trained once per server, ~3 min on 2 CPUs)."""
    ci.import_comfy(harness.find_comfyui())
    path = lab.base / "models" / "diffusion_models" / caption_dit.FILE
    if not path.exists():
        partial = path.with_suffix(".partial")
        losses = caption_dit.train(ci.tiny_clip(lab.base / "models"), str(partial))
        assert losses["last_100"] < 0.05 * losses["first"], f"the caption DiT did not learn: {losses}"
        partial.rename(path)
    return path


def test_the_caption_reading_dit_reads_its_caption_and_collapses_the_seeds(lab, caption_reader):
    """The premise of the next test: on this model a prompt moves the result far more than a seed does."""
    import tiny_models

    model, clip = tiny_models.load_dit(str(caption_reader)), ci.tiny_clip(lab.base / "models")
    latents = {(w, s): ci.sample(model, ci.encode(clip, caption_dit.TEMPLATE.format(w)), seed=s, steps=STEPS)
               for w in caption_dit.WORDS[:3] for s in (1, 2, 3)}
    rms = lambda a, b: float((a - b).pow(2).mean().sqrt())  # noqa: E731
    words, seeds = caption_dit.WORDS[:3], (1, 2, 3)
    across_seeds = [rms(latents[w, a], latents[w, b]) for w in words for a in seeds for b in seeds if a < b]
    across_prompts = [rms(latents[a, s], latents[b, s]) for s in seeds for a in words for b in words if a < b]
    assert min(across_prompts) > 10 * max(across_seeds), (across_prompts, across_seeds)


CAPTION_SEEDS = 48


@pytest.mark.parametrize("space", ["qwen3", "refined"])
def test_caption_noise_spreads_the_seeds_of_a_caption_reading_dit(lab, caption_reader, space):
    """Where the caption decides the composition (the case the technique is for), caption noise spreads the seeds.

    Same settings, measure and margin as the random-model test (strength 4 on half the content values over the
    whole 2-step schedule; the 95% bootstrap interval of the paired difference above 0), 48 seeds; on this model
    the 16-px decoded images' RMSE is asserted too (the stock images are nearly one image, 0.009 apart).
    """
    name = f"caption_{space}"
    graph = _spread_graph(name, *SPREAD[name], batch=CAPTION_SEEDS,
                          base={"unet_name": caption_reader.name, "text": caption_dit.PROMPT})
    measured = _spread(lab, lab.run(graph))
    print(name, "caption-reading DiT", measured)
    assert measured["latent_low"]["low"] > 0, (name, measured)
    assert measured["pixels_16"]["low"] > 0, (name, measured)  # here the decoded images spread too


@pytest.fixture(scope="module")
def tiny(lab):
    ci.import_comfy(harness.find_comfyui())
    models = lab.base / "models"
    clip = ci.tiny_clip(models)
    return ci.tiny_dit(models), ci.encode(clip, "a lighthouse on a cliff at dawn")


def _batch(model, positive, seed=4, batch=2):
    import comfy.sample

    latent = torch.zeros(batch, 16, 8, 8)
    noise = comfy.sample.prepare_noise(latent, seed)
    negative = [[torch.zeros_like(t), dict(e)] for t, e in positive]
    return comfy.sample.sample(model, noise, STEPS, 1.0, "euler", "simple", positive, negative, latent,
                               disable_pbar=True, seed=seed)


def test_same_seed_and_settings_give_the_same_bytes_and_the_seeds_matter(tiny):
    sv = ci.pack_module("nodes.seed_variance")
    model, positive = tiny
    first = _batch(sv.patch_caption_noise(model, 1.0, 0.5, 1, "qwen3", 7, 3, 5), positive)
    again = _batch(sv.patch_caption_noise(model, 1.0, 0.5, 1, "qwen3", 7, 3, 5), positive)
    other_seed = _batch(sv.patch_caption_noise(model, 1.0, 0.5, 1, "qwen3", 8, 3, 5), positive)
    other_sampler_seed = _batch(sv.patch_caption_noise(model, 1.0, 0.5, 1, "qwen3", 7, 3, 5), positive, seed=5)
    assert torch.equal(first, again)
    assert not torch.equal(first, other_seed)
    stock_5 = _batch(model, positive, seed=5)
    assert not torch.equal(other_sampler_seed, stock_5)
    initial = sv.patch_initial_noise(model, 1.0, 2, 7)
    assert torch.equal(_batch(initial, positive), _batch(sv.patch_initial_noise(model, 1.0, 2, 7), positive))
    assert not model.get_wrappers("outer_sample", sv.INITIAL_KEY)  # the given model is not patched


def test_the_step_window_holds(tiny):
    """steps 0 never acts (stock); steps 1 changes only the first model call of the schedule."""
    sv = ci.pack_module("nodes.seed_variance")
    model, positive = tiny
    assert torch.equal(_batch(sv.patch_caption_noise(model, 3.0, 1.0, 0, "qwen3", 1, 3, 5), positive),
                       _batch(model, positive))
    seen = []
    patched = sv.patch_caption_noise(model, 3.0, 1.0, 1, "qwen3", 1, 3, 5)
    dm = patched.get_model_object("diffusion_model")
    handle = dm.cap_embedder.register_forward_hook(lambda m, args, out: seen.append(args[0].detach().clone()))
    try:
        _batch(patched, positive)
    finally:
        handle.remove()
    clean = positive[0][0]
    length = clean.shape[1]
    first, second = seen[0], seen[1]
    assert torch.equal(second[0], clean[0].to(second.dtype))  # step 2: the stock caption
    assert not torch.equal(first[0, 3:length - 5], clean[0, 3:length - 5].to(first.dtype))
    assert torch.equal(first[:, :3], clean[:, :3].expand(2, -1, -1).to(first.dtype))  # template tokens protected
    assert torch.equal(first[:, length - 5:], clean[:, length - 5:].expand(2, -1, -1).to(first.dtype))
    assert not torch.equal(first[0], first[1])  # every row its own noise
