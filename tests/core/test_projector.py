"""core.projector: least-squares and MSE fits, safetensors round trip, width checks."""

import pytest
import torch

from core import projector


def paired(n=400, d_in=12, d_out=7, noise=0.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a, b = torch.randn(d_in, d_out, generator=gen), torch.randn(d_out, generator=gen)
    x = torch.randn(n, d_in, generator=gen)
    return x, x @ a + b + noise * torch.randn(n, d_out, generator=gen), a, b


def test_least_squares_recovers_an_affine_map():
    x, y, a, b = paired()
    proj = projector.fit_linear(x.reshape(4, 100, 12), y.reshape(4, 100, 7))  # token batches are flattened
    assert torch.allclose(proj.linear.weight.T, a, atol=1e-4) and torch.allclose(proj.linear.bias, b, atol=1e-4)
    assert projector.mse(proj, x, y) < 1e-8
    assert proj.info["fit"] == "least_squares" and proj.info["tokens"] == 400


def test_ridge_shrinks_the_weight():
    x, y, _, _ = paired(n=30, noise=0.5)
    plain, ridged = projector.fit_linear(x, y), projector.fit_linear(x, y, ridge=100.0)
    assert ridged.linear.weight.norm() < 0.8 * plain.linear.weight.norm()


def test_mlp_fit_reduces_the_error():
    x, y, _, _ = paired(n=256, d_in=8, d_out=4)
    y = torch.tanh(y)
    baseline = float(((y - y.mean(0)) ** 2).mean())
    proj = projector.fit_mlp(x, y, hidden_features=32, epochs=60, lr=3e-3, batch_size=64)
    assert proj.kind == "mlp" and proj.hidden_features == 32
    assert projector.mse(proj, x, y) < 0.2 * baseline


def test_save_and_load_round_trip(tmp_path):
    x, y, _, _ = paired(n=50)
    for proj in (projector.fit_linear(x, y), projector.fit_mlp(x, y, hidden_features=5, epochs=1)):
        path = tmp_path / f"{proj.kind}.safetensors"
        projector.save(path, proj, {"source": "test"})
        back = projector.load(path)
        assert back.describe() == proj.describe()
        assert torch.equal(back(x), proj(x))
        assert back.info["source"] == "test" and back.info["kind"] == proj.kind


def test_plain_linear_keys_and_bad_files(tmp_path):
    from safetensors.torch import save_file

    lin = torch.nn.Linear(3, 2)
    proj = projector.from_state_dict(lin.state_dict())
    x = torch.randn(5, 3)
    assert torch.allclose(proj(x), lin(x))
    with pytest.raises(ValueError, match="not a projector"):
        projector.from_state_dict({"something.weight": torch.zeros(2, 3)})
    save_file({"linear.weight": torch.zeros(4, 3), "linear.bias": torch.zeros(5)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="do not fit"):
        projector.load(tmp_path / "bad.safetensors")


def test_wrong_width_is_named():
    proj = projector.Projector(64, 128)
    projector.check_width(proj, 64, "enc")
    with pytest.raises(ValueError, match="reads width 64 but enc gives width 32.*fit-projector"):
        projector.check_width(proj, 32, "enc")


def test_fit_rejects_unpaired_data():
    with pytest.raises(ValueError, match="differ in count"):
        projector.fit_linear(torch.zeros(5, 3), torch.zeros(4, 2))
