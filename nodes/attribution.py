"""Token attribution: leave each word / token out, sample the shortened prompts in batches, map the change."""

from __future__ import annotations

import copy

import torch
from comfy_api.latest import io, ui

from ..core import attribution as core
from ..core import conditioning as core_cond
from ..core import sampler as core_sampler
from ..core import validation
from . import CATEGORY
from ._internals import quant
from ._internals.sampling import SAMPLERS, SCHEDULERS, patch_shift, previewer, schedule_of
from ._internals.server import progress_bar
from ._internals.text import hf_tokenizer
from .ensemble import sample_rows
from .sampler import check_inputs
from .trajectory import decode

SUBCATEGORY = f"{CATEGORY}/research"


def token_ids(tokens: dict) -> tuple:
    """A hashable key of a ComfyUI token dict (ids only; weights are disabled for Z-Image)."""
    return tuple((key, tuple(tuple(e[0] if isinstance(e[0], int) else repr(e[0]) for e in row) for row in rows))
                 for key, rows in sorted(tokens.items()))


def without_token(tokens: dict, index: int) -> dict:
    """A copy of a single-sequence token dict with the entry at index removed."""
    out = copy.deepcopy(tokens)
    for rows in out.values():
        del rows[0][index]
    return out


def encode(clip, tokens: dict) -> list:
    """CLIPTextEncode's encoding of a token dict."""
    return clip.encode_from_tokens_scheduled(tokens)


def batch_conditioning(conds: list[list]) -> list:
    """One conditioning whose batch rows are these single-prompt conditionings of equal token count.

    ComfyUI's Lumina2 reads num_tokens from the attention mask's total sum, which for a batch would
    count every row; the prompts are unpadded (mask all ones), so the mask is dropped and
    num_tokens becomes the true per-row length L.
    """
    tensors = [c[0][0] for c in conds]
    extras = dict(conds[0][0][1])
    extras.pop("attention_mask", None)
    pooled = [c[0][1].get("pooled_output") for c in conds]
    if all(p is not None for p in pooled):
        extras["pooled_output"] = torch.cat(pooled)
    return [[torch.cat(tensors), extras]]


def can_batch(conditioning: list) -> bool:
    """A single-entry, single-row, unpadded conditioning can share a batch with others of its length."""
    if len(conditioning) != 1 or conditioning[0][0].shape[0] != 1:
        return False
    mask = conditioning[0][1].get("attention_mask")
    return mask is None or bool(mask.all())


class PassProgress:
    """One progress bar over every sampling pass, with the latent previews of the current pass."""

    def __init__(self, model, steps: int, passes: int):
        self.steps, self.offset = steps, 0
        self.bar = progress_bar(steps * passes)
        self.previewer = previewer(model)

    def callback(self):
        offset = self.offset
        self.offset += self.steps

        def update(step, x0, x, total_steps):
            preview = self.previewer.decode_latent_to_preview_image("JPEG", x0) if self.previewer else None
            self.bar.update_absolute(offset + step + 1, None, preview)
        return update


class TokenAttribution(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabTokenAttribution",
            display_name="Z-Image Token Attribution",
            category=SUBCATEGORY,
            description=(
                "Leave-one-out attribution: encodes the prompt with each word (or token) left out, samples every "
                "shortened prompt with the same seed (prompts of equal token count as one batch), and measures the "
                "per-pixel change against the full prompt's image. Outputs a labelled heatmap overlay per unit, a "
                "ranked list, the raw change maps and the images. Words you list that the prompt lacks score exactly 0."
            ),
            search_aliases=["attribution", "leave one out", "word importance", "token heatmap", "interpretability"],
            inputs=[
                io.Model.Input("model", tooltip="The Z-Image diffusion model."),
                io.Clip.Input("clip", tooltip="The text encoder (CLIPLoader qwen_3_4b, type lumina2); prompts are encoded as CLIPTextEncode does."),
                io.Vae.Input("vae", tooltip="Decodes the images whose pixels are compared."),
                io.String.Input("prompt", multiline=True, default="a red fox sitting in fresh snow at golden hour",
                                tooltip="The full prompt."),
                io.Latent.Input("latent_image", tooltip="A latent of batch 1 (EmptySD3LatentImage batch_size 1)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed shared by the full prompt and every shortened prompt."),
                io.Int.Input("steps", default=8, min=1, max=10000, tooltip="Sampling steps (8 for Turbo)."),
                io.Float.Input("shift", default=3.0, min=0.01, max=100.0, step=0.01, round=0.001, tooltip="Flow time shift (3.0 for Turbo)."),
                io.Combo.Input("sampler_name", options=SAMPLERS, default="res_multistep", tooltip="Any ComfyUI sampler."),
                io.Combo.Input("scheduler", options=SCHEDULERS, default="simple", tooltip="Sigma scheduler."),
                io.Float.Input("cfg", default=1.0, min=0.0, max=100.0, step=0.1, round=0.01, tooltip="Classifier-free guidance (1.0 for Turbo)."),
                io.Combo.Input("unit", options=list(core.UNITS), default="word",
                               tooltip="word: leave out each word (re-encoding the shortened text). token: leave out each of the prompt's tokens."),
                io.String.Input("extra_words", default="",
                                tooltip="Comma-separated words to attribute as well (every occurrence left out at once); a word the prompt lacks scores exactly 0."),
                io.Int.Input("batch_size", default=4, min=1, max=64,
                             tooltip="Shortened prompts sampled per pass (prompts of equal token count share a pass)."),
                io.Conditioning.Input("negative", optional=True, tooltip="Only used when cfg != 1.0."),
            ],
            outputs=[
                io.Image.Output("overlays", tooltip="One heatmap per unit over the full prompt's image (prompt order, one colour scale for all), titled with the unit, rank and score."),
                io.String.Output("ranking", tooltip="JSON: units ranked by mean pixel change, with scores and the shortened prompts."),
                io.Mask.Output("maps", tooltip="The raw change maps (mean |difference| over channels, 0..1), prompt order."),
                io.Image.Output("images", tooltip="The full prompt's image, then each shortened prompt's image (prompt order)."),
                io.Latent.Output("latents", tooltip="The full prompt's latent (equal to the Z-Image Sampler's with this seed), "
                                                    "then each shortened prompt's latent, in the order of images."),
            ],
        )

    @classmethod
    def execute(cls, model, clip, vae, prompt, latent_image, seed, steps, shift, sampler_name, scheduler, cfg, unit,
                extra_words, batch_size, negative=None) -> io.NodeOutput:
        quant.check_patchable(model, "Z-Image Token Attribution")
        validation.noise_seed(seed, "seed", model)
        check_inputs(latent_image, steps, shift, cfg, 1.0, negative)
        if latent_image["samples"].shape[0] != 1:
            raise ValueError(f"latent_image has batch {latent_image['samples'].shape[0]}: attribution compares one image; set batch_size 1")
        if unit not in core.UNITS:
            raise ValueError(f"unit is {unit!r}: choose one of {', '.join(core.UNITS)}")
        if not prompt.strip():
            raise ValueError("prompt is empty: attribution needs a prompt with words to leave out")
        if batch_size < 1:
            raise ValueError(f"batch_size is {batch_size}: sample at least 1 prompt per pass")

        base_tokens = clip.tokenize(prompt)
        extra = core.parse_words(extra_words)
        start, end = core_cond.content_span({}, len(next(iter(base_tokens.values()))[0]))
        core.check_work(prompt, unit, end - start, extra)  # before any shortened prompt is made
        variants, variant_tokens = cls.variants(clip, prompt, base_tokens, unit, extra)
        if not variants:
            raise ValueError(f"the prompt {prompt!r} has no {unit}s to leave out")

        # one encode and one sample per distinct token sequence; sequences equal to the prompt's reuse its image
        base_key = token_ids(base_tokens)
        unique: dict[tuple, dict] = {}
        for tokens in variant_tokens:
            key = token_ids(tokens)
            if key != base_key:
                unique.setdefault(key, tokens)
        conds = {key: encode(clip, tokens) for key, tokens in unique.items()}
        groups: dict[tuple, list] = {}
        for key, c in conds.items():
            groups.setdefault((c[0][0].shape[1], 0) if can_batch(c) else (c[0][0].shape[1], len(groups) + 1), []).append(key)
        passes = core.batches(groups, batch_size)

        progress = PassProgress(patch_shift(model, shift), steps, 1 + len(passes))
        settings = (steps, shift, sampler_name, scheduler, cfg, 1.0)
        base_out, _ = sample_rows(model, encode(clip, base_tokens), negative, latent_image, [seed], *settings,
                                  callback=progress.callback())
        base_image = decode(vae, base_out["samples"])[0]
        images = {base_key: base_image}
        latents = {base_key: base_out["samples"][0]}
        for keys in passes:
            positive = batch_conditioning([conds[k] for k in keys]) if len(keys) > 1 else conds[keys[0]]
            out, _ = sample_rows(model, positive, negative, latent_image, [seed] * len(keys), *settings,
                                 callback=progress.callback())
            for key, image, sample in zip(keys, decode(vae, out["samples"]), out["samples"]):
                images[key] = image
                latents[key] = sample

        variant_keys = [token_ids(t) for t in variant_tokens]
        variant_images = torch.stack([images[k] for k in variant_keys])
        all_latents = {"samples": torch.stack([latents[base_key]] + [latents[k] for k in variant_keys]).cpu()}
        maps = torch.stack([core.change_map(image, base_image) for image in variant_images])
        rows = core.ranking(variants, maps)
        rank_of = {r["order"]: r for r in rows}
        titles = [f"#{rank_of[i]['rank']} {v.label!r}  change {rank_of[i]['score']:.4f}" + ("" if v.present else " (absent)")
                  for i, v in enumerate(variants)]
        overlays = torch.from_numpy(core.overlays(base_image.float().cpu().numpy(), maps.cpu().numpy(), titles)).float() / 255.0

        sigmas = schedule_of(patch_shift(model, shift), steps, sampler_name, scheduler, 1.0)
        record = core_sampler.SamplingRecord("ZImageLabTokenAttribution", seed, steps, shift, sampler_name, scheduler, cfg,
                                             1.0, [float(s) for s in sigmas])
        info = {**{k: v for k, v in record.__dict__.items() if k != "extra"}, "prompt": prompt, "unit": unit,
                "sampling_passes": 1 + len(passes), "batch_size": batch_size}
        return io.NodeOutput(overlays, core.to_json(info, rows), maps.cpu(),
                             torch.cat([base_image[None], variant_images]).cpu(), all_latents,
                             ui={**ui.PreviewImage(overlays, cls=cls).as_dict(), "text": [core.describe(rows)],
                                 "ranking": rows})

    @staticmethod
    def variants(clip, prompt: str, base_tokens: dict, unit: str, extra_words: list[str]):
        """(variants, token dict of each variant's prompt)."""
        if unit == "word":
            variants = core.word_variants(prompt, extra_words)
            return variants, [clip.tokenize(v.text) for v in variants]
        ids = next(iter(base_tokens.values()))[0]
        tokenizer = hf_tokenizer(clip)
        labels = [tokenizer.decode([e[0]]) if tokenizer is not None and isinstance(e[0], int) else str(e[0]) for e in ids]
        start, end = core_cond.content_span({}, len(ids))
        variants = core.token_variants(labels, (start, end))
        tokens = [without_token(base_tokens, v.token_index) for v in variants]
        requested = core.requested_variants(prompt, extra_words)
        return variants + requested, tokens + [clip.tokenize(v.text) for v in requested]


NODES = [TokenAttribution]
