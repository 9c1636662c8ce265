"""Train a context-refiner LoRA from text alone (context distillation in embedding space).

Z-Image's two context-refiner blocks turn the Qwen3 caption states into the caption the DiT
reads. This trains a LoRA on those blocks so that a prompt *without* some style words is refined
the way the same prompt *with* them is refined by the unchanged model:

    style loss  = sum_p |R_lora(p)[a] - R_0(p + style)[b]|^2 / sum_p |R_0(p + style)[b]|^2
    keep loss   = sum_q |R_lora(q) - R_0(q)|^2 / sum_q |R_0(q)|^2
    loss        = style loss + preservation_weight * keep loss

R_0 is the refiner as given, R_lora the refiner with the LoRA, p the training prompts, q prompts
that must not change. Qwen3 is causal, so the caption of ``p`` is token for token the start of
the caption of ``p + style``; the aligned tokens ``a``/``b`` are that shared start (template
prefix and prompt) plus the shared end (the chat-template suffix). What the style tokens do to
the *other* tokens through the refiner's bidirectional attention is what the LoRA learns to
produce without them. No image is generated, no DiT layer is run.

The losses are relative squared errors (0 = perfect match; the style loss starts at the
relative distance between the refined captions with and without the style words).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MODULE_SETS = {
    "attention": ("attention.qkv", "attention.out"),
    "attention + feed-forward": ("attention.qkv", "attention.out", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3"),
}
DIFFUSERS_NAMES = {"attention.out": "attention.to_out.0"}

DEFAULT_PRESERVE = (
    "a photo of a cat sitting on a windowsill",
    "a city street at night with neon signs",
    "a bowl of fresh fruit on a wooden table",
    "a mountain lake at sunrise",
    "portrait of an old man with a grey beard",
    "a red sports car parked by the sea",
)


def parse_prompts(text: str, name: str, required: bool = True) -> list[str]:
    """Non-empty lines of a multi-line input; ValueError naming the input if it has none and must."""
    prompts = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if required and not prompts:
        raise ValueError(f"{name} is empty: give at least one prompt, one per line")
    return prompts


def with_style(prompt: str, style: str) -> str:
    """The prompt with the style words appended, as the target the LoRA learns to reproduce."""
    return f"{prompt}, {style.strip()}"


def validate(rank: int, alpha: float, learning_rate: float, steps: int, preservation_weight: float, style: str,
             modules: str) -> None:
    """Raise ValueError naming the input when training cannot run."""
    if int(rank) < 1:
        raise ValueError(f"rank is {rank}: the LoRA rank must be >= 1 (typical 4-32)")
    if not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha is {alpha}: it must be > 0 (the LoRA is scaled by alpha / rank; alpha = rank -> 1)")
    if not math.isfinite(learning_rate) or learning_rate <= 0:
        raise ValueError(f"learning_rate is {learning_rate}: it must be > 0 (typical 1e-4 to 1e-3)")
    if int(steps) < 1:
        raise ValueError(f"steps is {steps}: train for at least 1 step")
    if not math.isfinite(preservation_weight) or preservation_weight < 0:
        raise ValueError(f"preservation_weight is {preservation_weight}: it must be >= 0 (0 = no preservation loss)")
    if not style.strip():
        raise ValueError("style is empty: give the words the LoRA should learn to imply (e.g. 'watercolor painting')")
    if modules not in MODULE_SETS:
        raise ValueError(f"modules is {modules!r}: choose one of {', '.join(MODULE_SETS)}")


def aligned_positions(source: list[int], target: list[int]) -> tuple[list[int], list[int]]:
    """Token positions shared by a prompt's ids and its styled ids: common start, then common end."""
    start = 0
    while start < min(len(source), len(target)) and source[start] == target[start]:
        start += 1
    end = 0
    while end < min(len(source), len(target)) - start and source[-1 - end] == target[-1 - end]:
        end += 1
    src = list(range(start)) + list(range(len(source) - end, len(source)))
    tgt = list(range(start)) + list(range(len(target) - end, len(target)))
    return src, tgt


class LoRA(torch.nn.Module):
    """Low-rank update ``scale * up @ down`` of one Linear, scale = alpha / rank; starts at zero (up = 0)."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, generator: torch.Generator,
                 device=None):
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)  # kaiming-uniform(a=sqrt(5)), PyTorch's Linear init, as PEFT uses
        down = (torch.rand(rank, in_features, generator=generator, dtype=torch.float32) * 2 - 1) * bound
        self.down = torch.nn.Parameter(down.to(device))
        self.up = torch.nn.Parameter(torch.zeros(out_features, rank, dtype=torch.float32, device=device))
        self.rank, self.alpha = rank, float(alpha)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x.float(), self.down), self.up) * self.scale


def attach_loras(blocks: dict, module_names, rank: int, alpha: float, seed: int, device=None):
    """LoRAs on the named Linears of each block, added to their outputs by forward hooks.

    blocks: {"context_refiner.0": module, ...}. Returns ({"context_refiner.0.attention.qkv": LoRA}, hooks).
    """
    generator = torch.Generator().manual_seed(int(seed))
    loras, hooks = {}, []
    for block_name, block in blocks.items():
        for name in module_names:
            linear = block.get_submodule(name)
            out_features, in_features = linear.weight.shape
            lora = LoRA(in_features, out_features, rank, alpha, generator, device)
            hooks.append(linear.register_forward_hook(lambda mod, args, out, lora=lora: out + lora(args[0]).to(out.dtype)))
            loras[f"{block_name}.{name}"] = lora
    return loras, hooks


class RefinerStack:
    """The caption path of Z-Image's DiT as plain modules: cap_embedder -> pad -> context refiner.

    Mirrors NextDiT.embed_cap + the context-refiner loop for one caption: the caption states go
    through cap_embedder, are padded with cap_pad_token to a multiple of pad_tokens_multiple,
    get axis-0 positions 1..L_pad, and pass every refiner block with no mask.
    """

    def __init__(self, cap_embedder, pad_token, rope_embedder, blocks, pad_multiple, transformer_options=None):
        self.cap_embedder, self.pad_token, self.rope = cap_embedder, pad_token, rope_embedder
        self.blocks, self.pad_multiple = list(blocks), pad_multiple
        self.transformer_options = transformer_options or {}

    def refine(self, states: torch.Tensor) -> torch.Tensor:
        """[1, L, W] caption states -> [1, L_pad, D] refined caption."""
        x = self.cap_embedder(states)
        if self.pad_multiple:
            extra = (-x.shape[1]) % self.pad_multiple
            x = torch.cat([x, self.pad_token.to(x.dtype).unsqueeze(0).repeat(x.shape[0], extra, 1)], dim=1)
        ids = torch.zeros(x.shape[0], x.shape[1], 3, dtype=torch.float32, device=x.device)
        ids[:, :, 0] = torch.arange(x.shape[1], dtype=torch.float32, device=x.device) + 1.0
        freqs = self.rope(ids).movedim(1, 2)
        for block in self.blocks:
            x = block(x, None, freqs, transformer_options=self.transformer_options)
        return x


def relative_error(pairs) -> torch.Tensor:
    """sum |a - b|^2 / sum |b|^2 over (a, b) pairs (b fixed)."""
    num = sum(((a.float() - b.float()) ** 2).sum() for a, b in pairs)
    den = sum((b.float() ** 2).sum() for _, b in pairs)
    return num / den.clamp_min(1e-12)


def train(stack: RefinerStack, params, style_items, keep_items, steps: int, learning_rate: float,
          preservation_weight: float, callback=None) -> list[dict]:
    """Adam on the LoRA parameters; returns the loss of every step (before its update) plus the final one.

    style_items: [(states [1,L,W], source positions, target states [n, D])]; keep_items:
    [(states, target refined [L_pad, D])]. callback(step, record) after each step.
    """
    params = list(params)
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    style_den = sum(float((t.float() ** 2).sum()) for _, _, t in style_items)
    keep_den = sum(float((t.float() ** 2).sum()) for _, t in keep_items) if keep_items else 1.0
    history = []
    for step in range(steps + 1):
        optimizer.zero_grad(set_to_none=True)
        style = keep = 0.0
        for states, positions, target in style_items:  # one prompt at a time keeps memory flat
            refined = stack.refine(states)[0, positions]
            loss = ((refined.float() - target.float()) ** 2).sum() / style_den
            if step < steps:
                loss.backward()
            style += float(loss.detach())
        if preservation_weight > 0:
            for states, target in keep_items:
                refined = stack.refine(states)[0]
                loss = ((refined.float() - target.float()) ** 2).sum() / keep_den
                if step < steps:
                    (preservation_weight * loss).backward()
                keep += float(loss.detach())
        record = {"step": step, "loss": style + preservation_weight * keep, "style": style, "keep": keep}
        history.append(record)
        if step < steps:
            optimizer.step()
        if callback is not None:
            callback(step, record)
    return history


def lora_state_dict(loras: dict, prefix: str = "diffusion_model.") -> dict:
    """The trained LoRAs as a safetensors-ready dict ComfyUI's LoRA loaders read.

    Diffusers module names with PEFT lora_A (down) / lora_B (up) and an alpha per module; a fused
    qkv LoRA is written as to_q / to_k / to_v sharing lora_A (exactly the same update).
    """
    out = {}
    for name, lora in loras.items():
        down = lora.down.detach().float().cpu().contiguous()
        up = lora.up.detach().float().cpu()
        alpha = torch.tensor(lora.alpha, dtype=torch.float32)
        if name.endswith("attention.qkv") and up.shape[0] == 3 * down.shape[1]:
            base = name[: -len("qkv")]
            for i, part in enumerate(("to_q", "to_k", "to_v")):
                rows = up.shape[0] // 3
                out[f"{prefix}{base}{part}.lora_A.weight"] = down.clone()
                out[f"{prefix}{base}{part}.lora_B.weight"] = up[i * rows:(i + 1) * rows].contiguous()
                out[f"{prefix}{base}{part}.alpha"] = alpha.clone()
            continue
        for native, diffusers in DIFFUSERS_NAMES.items():
            if name.endswith(native):
                name = name[: -len(native)] + diffusers
        out[f"{prefix}{name}.lora_A.weight"] = down
        out[f"{prefix}{name}.lora_B.weight"] = up.contiguous()
        out[f"{prefix}{name}.alpha"] = alpha
    return out


def loss_plot(history: list[dict], title: str = "refiner LoRA training"):
    """The loss curves as an RGB float array [H, W, 3] in [0, 1] (matplotlib's Agg canvas, no pyplot state)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = [r["step"] for r in history]
    fig = Figure(figsize=(6.4, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(steps, [r["loss"] for r in history], label="total", color="black", linewidth=2)
    ax.plot(steps, [r["style"] for r in history], label="style (to prompt + style)", color="tab:blue")
    if any(r["keep"] for r in history):
        ax.plot(steps, [r["keep"] for r in history], label="keep (preserve prompts)", color="tab:orange")
    ax.set_xlabel("step")
    ax.set_ylabel("relative squared error")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(np.float32) / 255.0
    return image
