"""Projectors from another Qwen3's hidden states to the width Z-Image reads (2560 for Qwen3-4B).

A projector is a linear map or a small MLP (Linear, GELU, Linear), stored in safetensors with keys
``linear.weight``/``linear.bias`` or ``fc1.*``/``fc2.*`` and a JSON record of how it was fitted.
``fit_linear`` solves least squares (optionally ridge) on paired token embeddings;
``fit_mlp`` trains the MLP for a few epochs of MSE.
"""

from __future__ import annotations

import json

import torch

METADATA_KEY = "zimage_lab_projector"
KINDS = ("linear", "mlp")


class Projector(torch.nn.Module):
    """x [..., in_features] -> [..., out_features]: linear, or Linear-GELU-Linear."""

    def __init__(self, in_features: int, out_features: int, kind: str = "linear", hidden_features: int = 0):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"projector kind {kind!r}: choose one of {', '.join(KINDS)}")
        self.kind, self.in_features, self.out_features = kind, in_features, out_features
        self.hidden_features = hidden_features
        self.info: dict = {}
        if kind == "linear":
            self.linear = torch.nn.Linear(in_features, out_features)
        else:
            if hidden_features < 1:
                raise ValueError("an mlp projector needs hidden_features >= 1")
            self.fc1 = torch.nn.Linear(in_features, hidden_features)
            self.fc2 = torch.nn.Linear(hidden_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.weight_dtype)
        if self.kind == "linear":
            return self.linear(x)
        return self.fc2(torch.nn.functional.gelu(self.fc1(x)))

    @property
    def weight_dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def describe(self) -> str:
        middle = f" -> {self.hidden_features} (GELU)" if self.kind == "mlp" else ""
        return f"{self.kind} projector {self.in_features}{middle} -> {self.out_features}"


def from_state_dict(state_dict: dict, info: dict | None = None) -> Projector:
    """A Projector from its tensors (also plain ``weight``/``bias`` keys of a bare nn.Linear)."""
    sd = dict(state_dict)
    if "weight" in sd and "linear.weight" not in sd:
        sd = {f"linear.{k}": v for k, v in sd.items()}
    if "linear.weight" in sd:
        out_f, in_f = sd["linear.weight"].shape
        proj = Projector(in_f, out_f, "linear")
    elif "fc1.weight" in sd and "fc2.weight" in sd:
        hidden, in_f = sd["fc1.weight"].shape
        proj = Projector(in_f, sd["fc2.weight"].shape[0], "mlp", hidden)
    else:
        raise ValueError(f"not a projector: expected linear.weight (+ linear.bias) or fc1/fc2 tensors, found {sorted(sd)[:6]}")
    dtype = next(iter(sd.values())).dtype
    if not dtype.is_floating_point:
        raise ValueError(f"not a projector: its tensors are {dtype}")
    proj = proj.to(dtype)
    try:
        missing, unexpected = proj.load_state_dict(sd, strict=False)
    except RuntimeError as e:
        raise ValueError(f"projector tensors do not fit a {proj.describe()}: {str(e).splitlines()[-1].strip()}") from None
    if unexpected or missing:
        raise ValueError(f"projector tensors do not fit a {proj.describe()}: missing {missing}, unexpected {unexpected}")
    proj.info = dict(info or {})
    return proj.eval().requires_grad_(False)


def load(path) -> Projector:
    """Read a projector safetensors file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    info = json.loads(meta[METADATA_KEY]) if METADATA_KEY in meta else {}
    return from_state_dict(tensors, info)


def save(path, projector: Projector, info: dict | None = None) -> None:
    """Write a projector safetensors file with its record in the metadata."""
    from safetensors.torch import save_file

    record = {"kind": projector.kind, "in_features": projector.in_features, "out_features": projector.out_features,
              "hidden_features": projector.hidden_features, **projector.info, **(info or {})}
    tensors = {k: v.detach().contiguous().cpu() for k, v in projector.state_dict().items()}
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(record)})


def check_width(projector: Projector, width: int, source: str) -> None:
    """ValueError when the projector does not read vectors of this width."""
    if projector.in_features != width:
        raise ValueError(f"the projector reads width {projector.in_features} but {source} gives width {width}: "
                         f"fit one for this encoder with `python -m zlab fit-projector` (input width {width})")


def _pairs(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"paired embeddings differ in count: {x.shape[0]} source vs {y.shape[0]} target tokens")
    if x.shape[0] == 0:
        raise ValueError("no paired embeddings to fit a projector on")
    return x, y


def fit_linear(x: torch.Tensor, y: torch.Tensor, ridge: float = 0.0) -> Projector:
    """Least-squares affine map x -> y ([N, in] -> [N, out]), with an optional ridge penalty on the weight."""
    x, y = _pairs(x, y)
    x64, y64 = x.double(), y.double()
    design = torch.cat([x64, torch.ones(x64.shape[0], 1, dtype=torch.float64)], dim=1)
    gram = design.T @ design
    if ridge > 0:
        gram[:-1, :-1] += ridge * torch.eye(x64.shape[1], dtype=torch.float64)
    # pinv keeps the minimum-norm solution when tokens are fewer than input dimensions
    solution = torch.linalg.pinv(gram, hermitian=True) @ (design.T @ y64)
    proj = Projector(x.shape[1], y.shape[1], "linear")
    with torch.no_grad():
        proj.linear.weight.copy_(solution[:-1].T.float())
        proj.linear.bias.copy_(solution[-1].float())
    proj.info = {"fit": "least_squares", "ridge": ridge, "tokens": int(x.shape[0])}
    return proj.eval().requires_grad_(False)


def fit_mlp(x: torch.Tensor, y: torch.Tensor, hidden_features: int = 1024, epochs: int = 20, lr: float = 1e-3,
            batch_size: int = 256, seed: int = 0, progress=None) -> Projector:
    """A Linear-GELU-Linear projector trained with Adam on the MSE between projected x and y."""
    x, y = _pairs(x.float(), y.float())
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    proj = Projector(x.shape[1], y.shape[1], "mlp", hidden_features)
    optimizer = torch.optim.Adam(proj.parameters(), lr=lr)
    with torch.inference_mode(False), torch.enable_grad():
        x, y = x.clone(), y.clone()
        for epoch in range(epochs):
            order = torch.randperm(x.shape[0], generator=gen)
            for i in range(0, x.shape[0], batch_size):
                batch = order[i:i + batch_size]
                loss = torch.nn.functional.mse_loss(proj(x[batch]), y[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            if progress is not None:
                progress(epoch + 1, epochs, float(loss))
    proj.info = {"fit": "mse_adam", "epochs": epochs, "lr": lr, "tokens": int(x.shape[0]), "seed": seed}
    return proj.eval().requires_grad_(False)


@torch.no_grad()
def mse(projector: Projector, x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean squared error of the projected x against y."""
    x, y = _pairs(x, y)
    return float(torch.nn.functional.mse_loss(projector(x).float(), y.float()))
