"""Text-axis RoPE extension for Z-Image: linear position interpolation, NTK-aware and YaRN.

Z-Image's DiT rotates every attention head (128 dims) with three RoPE axes of 32/48/48 dims,
theta 256. Caption tokens sit at axis-0 positions ``1..L_pad`` (L_pad = caption padded to a
multiple of 32, axes 1-2 = 0); the image tokens all sit at axis-0 position ``L_pad + 1`` with
their row/column on axes 1-2. The model was trained with captions of at most 512 tokens, so
axis-0 positions above ~513 are new to it. The three methods below rescale axis 0 only, by a
factor ``s``, identically for the caption and the image tokens (so the image stays one step
after the caption on axis 0); axes 1 and 2 are never re-positioned.

With axis-0 frequencies ``w_i = theta^(-2i/d)``, i = 0..d/2-1, d = 32:

* linear (position interpolation, Chen et al. 2023): positions ``p -> p / s``.
* ntk (NTK-aware, bloc97 2023): ``theta' = theta * s^(d / (d - 2))``, positions unchanged; the
  lowest frequency is then exactly interpolated by s, the highest kept.
* yarn (Peng et al. 2023): per frequency, ``w_i' = (1 - g_i) * w_i / s + g_i * w_i``, where
  the ramp g_i = 1 keeps (extrapolates) frequencies that turn more than ``beta_fast`` times
  over the trained length, g_i = 0 interpolates those that turn fewer than ``beta_slow``
  times, linear in i between. Plus YaRN's attention temperature ``m = 0.1 ln s + 1``: q and k
  are both scaled by m (logits by m^2) by scaling the rotation (cos/sin) by m. The temperature
  goes where the longer caption is attended: the context refiner (caption only) and the main
  layers (caption + image). The noise refiner attends over the image tokens only, whose context
  does not grow with the caption, so it gets the rotation without the temperature
  (TemperatureFreeBlock).

``s`` is a fixed factor, or dynamic ("fit to this prompt"): ``s = max(1, P / trained)``
with P the largest caption position (= L_pad for a text-to-image forward), so a caption that
fits the trained length is left exactly as it is.
"""

from __future__ import annotations

import copy
import math

import torch

METHODS = ("linear", "ntk", "yarn")
YARN_ATTENTION = ("all dims", "text axis dims", "off")
"""Where YaRN's attention temperature m goes: all head dims (q.k scaled by m^2, YaRN's recipe),
only the 32 text-axis dims, or nowhere."""

TRAINED_LENGTH = 512
"""Caption length Z-Image was trained with (diffusers' max_sequence_length)."""


def validate(method: str, factor: float | None, trained_length: int, beta_fast: float = 32.0,
             beta_slow: float = 1.0, yarn_attention: str = "all dims") -> None:
    """Raise ValueError naming the input when an extension setting cannot work."""
    if method not in METHODS:
        raise ValueError(f"method is {method!r}: choose one of {', '.join(METHODS)}")
    if factor is not None and (not math.isfinite(factor) or factor <= 0):
        raise ValueError(f"factor is {factor}: the RoPE scale factor must be > 0 (1.0 = unchanged, "
                         "2.0 = fit twice the trained caption length); or use scale_mode 'fit to prompt'")
    if int(trained_length) < 1:
        raise ValueError(f"trained_length is {trained_length}: it must be >= 1 (Z-Image: 512 tokens)")
    if method == "yarn":
        if not (math.isfinite(beta_fast) and math.isfinite(beta_slow)) or beta_slow <= 0 or beta_fast <= beta_slow:
            raise ValueError(f"beta_fast {beta_fast} / beta_slow {beta_slow}: YaRN needs beta_fast > beta_slow > 0 "
                             "(defaults 32 and 1)")
        if yarn_attention not in YARN_ATTENTION:
            raise ValueError(f"yarn_attention is {yarn_attention!r}: choose one of {', '.join(YARN_ATTENTION)}")


def dynamic_factor(max_position: float, trained_length: int) -> float:
    """The factor that maps the largest caption position onto the trained length, never below 1."""
    return max(1.0, float(max_position) / float(trained_length))


def base_frequencies(dim: int, theta: float) -> torch.Tensor:
    """RoPE angular frequencies theta^(-2i/dim) in float64, as ComfyUI's flux ``rope`` makes them."""
    exponent = torch.linspace(0, (dim - 2) / dim, steps=dim // 2, dtype=torch.float64)
    return 1.0 / (theta ** exponent)


def ntk_theta(theta: float, factor: float, dim: int) -> float:
    """NTK-aware base: theta * s^(d / (d - 2))."""
    return theta * factor ** (dim / (dim - 2))


def yarn_correction_index(rotations: float, dim: int, theta: float, trained_length: int) -> float:
    """Index i whose frequency turns ``rotations`` times over the trained length (YaRN's find_correction_dim)."""
    return dim * math.log(trained_length / (rotations * 2 * math.pi)) / (2 * math.log(theta))


def yarn_ramp(dim: int, theta: float, trained_length: int, beta_fast: float, beta_slow: float) -> torch.Tensor:
    """Per-frequency extrapolation weight g_i: 1 keeps the frequency, 0 interpolates it by s."""
    low = max(math.floor(yarn_correction_index(beta_fast, dim, theta, trained_length)), 0)
    high = min(math.ceil(yarn_correction_index(beta_slow, dim, theta, trained_length)), dim - 1)
    if high == low:
        high += 0.001  # YaRN's guard against a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    return 1.0 - ramp


def yarn_frequencies(dim: int, theta: float, factor: float, trained_length: int, beta_fast: float,
                     beta_slow: float) -> torch.Tensor:
    """YaRN's blend of interpolated (w/s) and original (w) frequencies."""
    base = base_frequencies(dim, theta)
    keep = yarn_ramp(dim, theta, trained_length, beta_fast, beta_slow)
    return base / factor * (1.0 - keep) + base * keep


def yarn_temperature(factor: float) -> float:
    """YaRN's q/k scale m = 0.1 ln s + 1 (attention logits scale by m^2); 1 when s <= 1."""
    return 1.0 if factor <= 1.0 else 0.1 * math.log(factor) + 1.0


def axis_frequencies(method: str, dim: int, theta: float, factor: float, trained_length: int,
                     beta_fast: float = 32.0, beta_slow: float = 1.0) -> torch.Tensor:
    """Frequencies of the text axis for a method (linear keeps them: it moves the positions)."""
    if method == "ntk":
        return base_frequencies(dim, ntk_theta(theta, factor, dim))
    if method == "yarn":
        return yarn_frequencies(dim, theta, factor, trained_length, beta_fast, beta_slow)
    return base_frequencies(dim, theta)


def rotation(positions: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [..., n, d/2, 2, 2] for positions and frequencies (layout of ComfyUI's rope)."""
    compute = torch.device("cpu") if positions.device.type in ("mps", "xpu") else positions.device
    angle = positions.to(device=compute, dtype=torch.float64).unsqueeze(-1) * omega.to(compute)
    cos, sin = torch.cos(angle), torch.sin(angle)
    out = torch.stack([cos, -sin, sin, cos], dim=-1).unflatten(-1, (2, 2))
    return out.to(device=positions.device, dtype=torch.float32)


def is_caption_call(ids: torch.Tensor) -> bool:
    """A caption call has axes 1-2 all zero and consecutive axis-0 positions; any other is the image's."""
    axis0 = ids[0, :, 0]
    consecutive = axis0.numel() > 1 and bool(torch.all(axis0[1:] - axis0[:-1] == 1))
    return consecutive and not bool(torch.any(ids[0, :, 1:] != 0))


def largest_caption_position(ids: torch.Tensor) -> float:
    """Largest caption position P of the forward that makes this id call (see module notes).

    A caption call's last position is P; any other call (the image tokens at P + 1, their
    padding rows at 0) gives P = max - 1.
    """
    axis0 = ids[0, :, 0]
    return float(axis0[-1]) if is_caption_call(ids) else float(axis0.max()) - 1.0


class ExtendedRoPE(torch.nn.Module):
    """A drop-in for the DiT's rope embedder that rescales the text axis (axis 0) only.

    ``inner`` is the embedder it replaces (ComfyUI's EmbedND: ids [B, N, axes] ->
    [B, 1, N, head_dim/2, 2, 2]); axes 1-2 of its output are kept as they are, the axis-0 block
    is recomputed. At factor 1 (or a dynamic factor that comes out as 1) it returns the inner
    embedder's output untouched, so the model is bit-identical to the unpatched one.
    """

    def __init__(self, inner, axes_dim, theta: float, method: str, factor: float | None,
                 trained_length: int = TRAINED_LENGTH, beta_fast: float = 32.0, beta_slow: float = 1.0,
                 yarn_attention: str = "all dims"):
        super().__init__()
        validate(method, factor, trained_length, beta_fast, beta_slow, yarn_attention)
        self.inner = inner
        self.axes_dim = list(axes_dim)
        self.dim = sum(self.axes_dim)
        self.theta = theta
        self.method, self.factor, self.trained_length = method, factor, int(trained_length)
        self.beta_fast, self.beta_slow, self.yarn_attention = beta_fast, beta_slow, yarn_attention
        self.last_factor = None  # the factor of the latest call, for reports and tests
        self.image_rotation = None  # (with temperature, without) of the latest image call

    def factor_for(self, ids: torch.Tensor) -> float:
        """The scale factor for this call: the fixed one, or fitted to the caption it belongs to."""
        if self.factor is not None:
            return float(self.factor)
        return dynamic_factor(largest_caption_position(ids), self.trained_length)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        factor = self.factor_for(ids)
        self.last_factor = factor
        out = self.inner(ids)
        if factor == 1.0:
            return out
        d0 = self.axes_dim[0]
        positions = ids[..., 0] / factor if self.method == "linear" else ids[..., 0]
        omega = axis_frequencies(self.method, d0, self.theta, factor, self.trained_length, self.beta_fast, self.beta_slow)
        out = out.clone()
        out[:, :, :, : d0 // 2] = rotation(positions, omega).unsqueeze(1).to(out.dtype)
        if self.method == "yarn" and self.yarn_attention != "off":
            plain = out
            m = yarn_temperature(factor)
            if self.yarn_attention == "all dims":
                out = out * m
            else:
                out = out.clone()
                out[:, :, :, : d0 // 2] *= m
            if not is_caption_call(ids):
                self.image_rotation = (out, plain)
        return out

    def without_temperature(self, freqs: torch.Tensor) -> torch.Tensor:
        """The image rotation a block received, as it was before YaRN's temperature (else unchanged).

        ``freqs`` is this embedder's latest image output as NextDiT passes it on (moved to [B, N, ...]).
        """
        if self.image_rotation is None:
            return freqs
        scaled, plain = (r.movedim(1, 2) for r in self.image_rotation)
        if scaled.shape == freqs.shape and torch.equal(scaled.to(freqs.device), freqs):
            return plain.to(device=freqs.device, dtype=freqs.dtype)
        return freqs

    def describe(self) -> str:
        """One line saying what this extender does."""
        scale = "fit to prompt: s = max(1, L_pad / %d)" % self.trained_length if self.factor is None else f"s = {self.factor:g}"
        text = f"RoPE text axis: {self.method}, {scale}, trained length {self.trained_length}"
        if self.method == "yarn":
            text += f", beta_fast {self.beta_fast:g}, beta_slow {self.beta_slow:g}, temperature on {self.yarn_attention}"
        return text


class TemperatureFreeMixin:
    """Mixed into a copy of a noise-refiner block: it attends with the image rotation without YaRN's
    temperature. Assumes NextDiT's block signature forward(x, x_mask, freqs_cis, ...)."""

    def forward(self, x, x_mask, freqs_cis, *args, **kwargs):
        return super().forward(x, x_mask, self.zimage_lab_rope.without_temperature(freqs_cis), *args, **kwargs)


_TEMPERATURE_FREE: dict[type, type] = {}


def temperature_free(block: torch.nn.Module, rope: ExtendedRoPE) -> torch.nn.Module:
    """A shallow copy of a block (same submodules and weights) that removes ``rope``'s temperature."""
    cls = type(block)
    while issubclass(cls, TemperatureFreeMixin):  # re-extending: wrap the original class once
        cls = cls.__mro__[2]
    if cls not in _TEMPERATURE_FREE:
        _TEMPERATURE_FREE[cls] = type(f"ZImageLabTemperatureFree{cls.__name__}", (TemperatureFreeMixin, cls), {})
    patched = copy.copy(block)
    patched.__class__ = _TEMPERATURE_FREE[cls]
    patched.__dict__["zimage_lab_rope"] = rope  # not a submodule: the embedder is patched on its own
    return patched
