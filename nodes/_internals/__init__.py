"""The one home of everything the pack takes from ComfyUI below its public node API.

Node modules import only ``comfy_api``, ``folder_paths``, ``node_helpers`` and this package; what
reaches into ``comfy.*``, ``comfy_extras``, ``latent_preview``, ``nodes``, ``server`` or ``execution``
(functions called, block code mirrored, wrapper and option keys) lives in one submodule here, each
item with a docstring naming the ComfyUI file and function it mirrors and the versions it was
checked against. Where ComfyUI changed between those versions the code detects the feature
(``hasattr``, signature inspection), never the version string.

Submodules (owner in brackets): ``dit`` NextDiT blocks and attention pieces, ``sampling``
KSampler / model_sampling / previews, ``text`` tokenizers and text-encoder internals, ``server``
PromptServer routes and progress bars, ``models`` model management and model checks,
``patching`` ModelPatcher wrapper kinds and option keys [internals]; ``ops``, ``graphs``, ``vae``,
``llama``, ``memory``, ``save`` [gpu]; ``lora``, ``quant`` [models]; ``noise`` [seeds]; ``xy``
[metrics]; ``validation`` [robustness].

Versions checked: ComfyUI 0.18.1 and 0.30.2 (diffed file by file); later upstream sources
(Comfy-Org/ComfyUI, 0.36-0.38 era) were read where a docstring says so.
"""

CHECKED_VERSIONS = ("0.18.1", "0.30.2")
