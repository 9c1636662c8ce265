"""DreamSim (Fu et al. 2023): perceptual distance from local files, through the ``dreamsim`` package's own model code.

``dreamsim.dreamsim(pretrained=True, cache_dir=folder, dreamsim_type=t)`` downloads nothing when every checkpoint it
checks for is already in ``folder``: the unzipped release checkpoint (backbone ``*_pretrain.pth[.tar]`` files and the
``*_lora`` adapter folder). The one exception is DINO ViT-B/16 (the ensemble's first branch and the ``dino_vitb16``
type), which the package builds with ``torch.hub.load('facebookresearch/dino:main', 'dino_vitb16')``: a git clone of
the DINO repository plus a weight download. ``load_dreamsim`` replaces that one call, for the duration of the load,
by the same network built from the package's own copy of DINO's ``vit_base`` (identical modules and forward) and
strict-loads the weights torch.hub would have cached, ``<folder>/checkpoints/dino_vitbase16_pretrain.pth``. Every
other step (extractors, LoRA through peft, embedding normalisation, 224 px bicubic preprocessing) is the package's.

Distance of two images: 1 - cos(e_a, e_b) of the embeddings ``model.embed`` returns (the backbones' features
concatenated, LoRA-tuned, centred and unit-normalised), which is what ``PerceptualModel.forward`` computes.
Layout under a metrics root (ComfyUI: ``models/metrics``): ``dreamsim/``, files in ``DREAMSIM_FILES``.
"""

from __future__ import annotations

import contextlib
import os
import warnings

import torch

from .metric_models import MissingWeights, Scorer, import_optional, to_uint8_list

DINO_HUB_FILE = os.path.join("checkpoints", "dino_vitbase16_pretrain.pth")
DREAMSIM_FILES = {  # dreamsim_type -> files and folders expected in the dreamsim folder (as the package checks them)
    "ensemble": ("dino_vitb16_pretrain.pth", "open_clip_vitb16_pretrain.pth.tar", "clip_vitb16_pretrain.pth.tar",
                 "ensemble_lora", DINO_HUB_FILE),
    "dino_vitb16": ("dino_vitb16_pretrain.pth", "dino_vitb16_single_lora", DINO_HUB_FILE),
    "open_clip_vitb32": ("open_clip_vitb32_pretrain.pth.tar", "open_clip_vitb32_single_lora"),
    "clip_vitb32": ("clip_vitb32_pretrain.pth.tar", "clip_vitb32_single_lora"),
}
RELEASE = "https://github.com/ssundaram21/dreamsim/releases/download/v0.2.0-checkpoints/dreamsim_{}_checkpoint.zip"
DINO_URL = "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"
BATCH = 16


def lora_folder(dreamsim_type: str) -> str:
    """The adapter folder name the package reads for a type."""
    return "ensemble_lora" if dreamsim_type == "ensemble" else f"{dreamsim_type}_single_lora"


def missing_files(folder: str, dreamsim_type: str) -> list[str]:
    """The files (relative to folder) a type needs that are not there; an adapter folder needs its config and weights."""
    if dreamsim_type not in DREAMSIM_FILES:
        raise ValueError(f"dreamsim_type {dreamsim_type!r}: choose one of {', '.join(DREAMSIM_FILES)}")
    missing = []
    for name in DREAMSIM_FILES[dreamsim_type]:
        if name.endswith("_lora"):
            adapter = os.path.join(folder, name)
            if not os.path.isfile(os.path.join(adapter, "adapter_config.json")):
                missing.append(f"{name}/adapter_config.json")
            if not any(os.path.isfile(os.path.join(adapter, f))
                       for f in ("adapter_model.safetensors", "adapter_model.bin")):
                missing.append(f"{name}/adapter_model.safetensors (or .bin)")
        elif not os.path.isfile(os.path.join(folder, name)):
            missing.append(name)
    return missing


def require_dreamsim_files(folder: str, dreamsim_type: str) -> str:
    """Return folder if it holds every file of the type, else MissingWeights naming the folder and the files."""
    missing = missing_files(folder, dreamsim_type)
    if missing:
        zip_name = RELEASE.format(dreamsim_type)
        hint = f"unzip {zip_name} there"
        if DINO_HUB_FILE in DREAMSIM_FILES[dreamsim_type]:
            hint += f"; {DINO_HUB_FILE} is DINO's ViT-B/16 backbone ({DINO_URL})"
        raise MissingWeights(f"DreamSim {dreamsim_type}: expected in folder {os.path.abspath(folder)}: "
                             f"{', '.join(missing)} (not found). {hint}. Nothing is downloaded; see docs/metrics.md.")
    return folder


@contextlib.contextmanager
def offline_dino_hub(folder: str):
    """While loading: torch.hub.load of DINO ViT-B/16 builds it from the package's vit_base and the local weights;
    any other hub call is refused (no network); torch.hub's directory is restored afterwards."""
    from dreamsim.feature_extraction.vision_transformer import vit_base

    original_load, original_dir = torch.hub.load, torch.hub.get_dir()

    def load(repo, model, *args, **kwargs):
        if repo.split(":")[0] != "facebookresearch/dino" or model != "dino_vitb16":
            raise MissingWeights(f"DreamSim asked torch.hub for {repo} {model}: not available offline")
        net = vit_base(patch_size=16, num_classes=0)  # what DINO's hubconf.dino_vitb16 builds
        state = torch.load(os.path.join(folder, DINO_HUB_FILE), map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
        return net

    torch.hub.load = load
    try:
        yield
    finally:
        torch.hub.load = original_load
        torch.hub.set_dir(original_dir)


class DreamSimScorer(Scorer):
    """A loaded DreamSim model (peft-wrapped PerceptualModel) and the package's preprocessing."""

    @property
    def perceptual(self):
        """The PerceptualModel inside the peft wrapper (LoRA layers are injected in place)."""
        return self.model.base_model.model

    def to(self, device) -> "DreamSimScorer":
        device = torch.device(device)
        self.model.to(device)
        perceptual = self.perceptual
        perceptual.device = device
        for extractor in perceptual.extractor_list:  # the package keeps a device string and a plain-tensor projection
            extractor.device = device
            if isinstance(getattr(extractor, "proj", None), torch.Tensor):
                extractor.proj = extractor.proj.to(device)
        return self


def check_adapter_loaded(model, folder: str) -> None:
    """peft only warns on unmatched adapter keys: refuse a model whose LoRA up-projections all stayed at zero."""
    ups = [p for n, p in model.named_parameters() if "lora_B" in n]
    if not ups or all(float(p.abs().max()) == 0.0 for p in ups):
        raise MissingWeights(f"DreamSim: the LoRA adapter in {folder} did not load (no matching weights): use the "
                             "adapter folder of the release zip for this dreamsim_type")


def load_dreamsim(folder: str, dreamsim_type: str = "ensemble") -> DreamSimScorer:
    """DreamSim of a type from local files in folder (the package's model code; nothing is downloaded)."""
    require_dreamsim_files(folder, dreamsim_type)
    import_optional("peft", "peft", "DreamSim")
    package = import_optional("dreamsim", "dreamsim", "DreamSim")
    with offline_dino_hub(folder), contextlib.redirect_stdout(None), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*peft_config.*")  # the package wraps its model in peft twice
        warnings.filterwarnings("ignore", message=".*weight_norm.*")  # DINO's head (unused by the distance)
        model, preprocess = package.dreamsim(pretrained=True, device="cpu", cache_dir=folder, normalize_embeds=True,
                                             dreamsim_type=dreamsim_type)
    check_adapter_loaded(model, folder)
    return DreamSimScorer(f"dreamsim_{dreamsim_type}", model.eval(), preprocess)


def dreamsim_pixels(scorer: Scorer, images) -> torch.Tensor:
    """[N, 3, 224, 224] in [0, 1]: the uint8 pixels ComfyUI would save, through the package's preprocess."""
    from PIL import Image

    return torch.cat([scorer.preprocess(Image.fromarray(a)) for a in to_uint8_list(images)])


@torch.no_grad()
def dreamsim_embeddings(scorer: DreamSimScorer, images) -> torch.Tensor:
    """[N, D] DreamSim embeddings (centred, unit norm) of an IMAGE batch or list of arrays."""
    pixels = dreamsim_pixels(scorer, images)
    out = [scorer.perceptual.embed(pixels[i:i + BATCH].to(scorer.device)).float().cpu()
           for i in range(0, len(pixels), BATCH)]
    return torch.cat(out)


def cosine_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[N, M] matrix of 1 - cos between the rows of a and of b."""
    a = torch.nn.functional.normalize(a.double(), dim=-1)
    b = torch.nn.functional.normalize(b.double(), dim=-1)
    return (1.0 - a @ b.T).float()


def dreamsim_pairwise(scorer: DreamSimScorer, images) -> torch.Tensor:
    """Symmetric [N, N] DreamSim distance matrix (zero diagonal) of one batch."""
    embeddings = dreamsim_embeddings(scorer, images)
    matrix = cosine_distances(embeddings, embeddings)
    matrix = (matrix + matrix.T) / 2
    matrix.fill_diagonal_(0.0)
    return matrix


def dreamsim_paired(scorer: DreamSimScorer, images, images_b) -> torch.Tensor:
    """[N] DreamSim distance of image i to image i of images_b."""
    a, b = dreamsim_embeddings(scorer, images), dreamsim_embeddings(scorer, images_b)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"images_b holds {b.shape[0]} images, images {a.shape[0]}: give the same number")
    return torch.diagonal(cosine_distances(a, b)).clone()


def dreamsim_diversity(scorer: DreamSimScorer, images) -> float:
    """Mean pairwise DreamSim distance of a batch (diversity); nan for fewer than two images."""
    from .metric_models import mean_pairwise

    return mean_pairwise(dreamsim_pairwise(scorer, images))



def perceptual_measure(folder: str, dreamsim_type: str = "ensemble"):
    """(column, fn(IMAGE batch) -> mean pairwise DreamSim): the ``perceptual`` argument of diversity.sweep_diversity."""
    scorer = load_dreamsim(folder, dreamsim_type)
    return f"dreamsim_{dreamsim_type}", lambda images: dreamsim_diversity(scorer, images)
