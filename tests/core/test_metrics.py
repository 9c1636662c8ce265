"""core.metrics against closed-form values worked out by hand."""

import math

import numpy as np
import pytest
import torch

from core import metrics as m


def test_sharpness_of_a_single_bright_pixel():
    image = np.zeros((5, 5, 3))
    image[2, 2] = 1.0  # luma 1.0 -> 255
    # interior 3x3 Laplacian: centre -4*255, its 4 neighbours +255, 4 corners 0
    values = np.array([-4 * 255.0] + [255.0] * 4 + [0.0] * 4)
    assert m.sharpness(image) == pytest.approx(values.var())
    assert m.sharpness(np.full((6, 6, 3), 0.3)) == 0.0
    assert m.sharpness((image * 255).astype(np.uint8)) == pytest.approx(values.var())


def test_edge_density_of_a_vertical_step():
    image = np.zeros((6, 8, 3))
    image[:, 4:] = 0.25  # step of 0.25 between columns 3 and 4 -> Sobel magnitude 4 * 0.25 = 1.0
    # interior columns 1..6: the two columns next to the step (3 and 4) see it
    assert m.edge_density(image, 0.5) == pytest.approx(2 / 6)
    assert m.edge_density(image, 1.5) == 0.0
    with pytest.raises(ValueError, match="threshold"):
        m.edge_density(image, 0.0)


def test_colourfulness_hasler_suesstrunk():
    assert m.colourfulness(np.full((4, 4, 3), 0.5)) == 0.0
    red = np.zeros((4, 4, 3))
    red[..., 0] = 1.0
    # rg = 255, yb = 127.5 everywhere: no spread, C = 0.3 * hypot(255, 127.5)
    assert m.colourfulness(red) == pytest.approx(0.3 * math.hypot(255, 127.5))
    half = np.zeros((2, 2, 3))
    half[0, :, 0] = 1.0  # top row red, bottom black: rg in {255, 0}, yb in {127.5, 0}
    expected = math.hypot(127.5, 63.75) + 0.3 * math.hypot(127.5, 63.75)
    assert m.colourfulness(half) == pytest.approx(expected)


def test_pixel_and_latent_distance():
    a = np.zeros((2, 2, 3))
    b = np.full((2, 2, 3), 0.1)
    d = m.pixel_distance(a, b)
    assert d["rmse"] == pytest.approx(0.1) and d["mae"] == pytest.approx(0.1) and d["psnr"] == pytest.approx(20.0)
    assert m.pixel_distance(a, a)["psnr"] == float("inf")
    with pytest.raises(ValueError, match="same size"):
        m.pixel_distance(a, np.zeros((3, 3, 3)))
    x = torch.tensor([1.0, 0.0])
    assert m.latent_distance(x, torch.tensor([0.0, 1.0])) == pytest.approx({"rmse": 1.0, "cosine": 0.0})
    assert m.latent_distance(x, 2 * x)["cosine"] == pytest.approx(1.0)


def test_hoyer_sparsity_extremes():
    assert m.hoyer_sparsity(np.array([0, 0, 5.0, 0])) == pytest.approx(1.0)
    assert m.hoyer_sparsity(np.ones(9)) == pytest.approx(0.0)
    assert m.hoyer_sparsity(np.zeros(3)) == 0.0


def test_effective_rank_of_known_spectra():
    assert m.effective_rank(np.eye(4)) == pytest.approx(4.0)
    rank_one = np.outer(np.arange(1, 5), np.arange(1, 7)).astype(float)
    assert m.effective_rank(rank_one) == pytest.approx(1.0)
    # singular values 3 and 1: p = (3/4, 1/4), exp(entropy)
    p = np.array([0.75, 0.25])
    assert m.effective_rank(np.diag([3.0, 1.0])) == pytest.approx(math.exp(-(p * np.log(p)).sum()))


def test_embedding_stats_and_pairwise_cosine():
    tokens = torch.tensor([[3.0, 4.0], [0.0, 0.0], [6.0, 8.0]])
    s = m.embedding_stats(tokens)
    assert s["tokens"] == 3 and s["width"] == 2
    assert s["mean_token_norm"] == pytest.approx(5.0) and s["max_token_norm"] == pytest.approx(10.0)
    assert s["norm"] == pytest.approx(math.sqrt(9 + 16 + 36 + 64))
    assert s["variance"] == pytest.approx(np.var([3, 4, 0, 0, 6, 8]))
    assert s["effective_rank"] == pytest.approx(1.0)
    a = np.array([[1.0, 0.0], [1.0, 0.0]])
    b = np.array([[0.0, 2.0]])
    c = np.array([[2.0, 2.0]])
    cos = m.pairwise_cosine([a, b, c])
    assert cos.shape == (3, 3)
    assert np.allclose(np.diag(cos), 1.0)
    assert cos[0, 1] == pytest.approx(0.0) and cos[0, 2] == pytest.approx(math.sqrt(0.5))
    with pytest.raises(ValueError, match="different widths"):
        m.pairwise_cosine([a, np.ones((2, 3))])
    with pytest.raises(ValueError, match="tokens, width"):
        m.embedding_stats(np.ones(3))


def test_images_are_read_as_float_or_uint8():
    with pytest.raises(ValueError, match="height, width, 3"):
        m.sharpness(np.zeros((4, 4, 3, 1)))
    with pytest.raises(ValueError, match="at least 3x3"):
        m.sharpness(np.zeros((2, 5, 3)))


def test_table_image_draws_the_rows():
    image = m.table_image([{"name": "a", "value": 1.5}, {"name": "b", "value": 1e-5}], "title")
    assert image.dtype == np.uint8 and image.shape[2] == 3 and image.std() > 0
    assert m.format_value(3) == "3" and m.format_value(0.5) == "0.5" and m.format_value(1e-5) == "1.000e-05"
