"""XY grid axes, cell order and the labelled grid image."""

import numpy as np
import pytest

from core import xy_grid as xy


def test_parse_values_and_ranges():
    assert xy.parse_axis("shift", "2, 3.5,4", "x").values == (2.0, 3.5, 4.0)
    assert xy.parse_axis("steps", "4-12:4, 20", "x").values == (4, 8, 12, 20)
    assert xy.parse_axis("cfg", "1.0-2.0:0.5", "y").values == (1.0, 1.5, 2.0)
    assert xy.parse_axis("sampler_name", "euler,\nres_multistep", "x", {"sampler_name": ["euler", "res_multistep"]}).values \
        == ("euler", "res_multistep")
    assert xy.parse_axis("none", "", "y") is None


@pytest.mark.parametrize("name, text, words", [
    ("steps", "4, x", ["x values for steps", "'x'"]),
    ("steps", "", ["empty"]),
    ("shift", "3-1:1", ["start <= stop"]),
    ("lora_strength", "1", ["x axis 'lora_strength'", "seed", "layer"]),
    ("layer", "-2, 3", ["x values for layer", "-64..-1"]),
    ("scheduler", "simple, nope", ["['nope']", "scheduler choices"]),
])
def test_bad_axes_are_named(name, text, words):
    with pytest.raises(ValueError) as e:
        xy.parse_axis(name, text, "x", {"scheduler": ["simple", "beta"]})
    for w in words:
        assert w in str(e.value)


def test_cells_rows_outer_columns_inner():
    base = {"seed": 0, "shift": 3.0}
    x, y = xy.Axis("shift", (2.0, 4.0)), xy.Axis("seed", (5, 6))
    cells = xy.cells(base, x, y)
    assert [(c["seed"], c["shift"]) for c in cells] == [(5, 2.0), (5, 4.0), (6, 2.0), (6, 4.0)]
    assert xy.cells(base, x, None) == [{"seed": 0, "shift": 2.0}, {"seed": 0, "shift": 4.0}]
    with pytest.raises(ValueError, match="both sweep shift"):
        xy.cells(base, x, xy.Axis("shift", (1.0,)))


def test_grid_image_places_every_tile():
    tiles = np.stack([np.full((32, 40, 3), v, np.float32) for v in (0.0, 0.25, 0.5, 1.0)])
    grid = xy.grid_image(tiles, 2, ["shift=2", "shift=4"], ["seed=5", "seed=6"], gap=4)
    assert grid.dtype == np.float32 and grid.shape[0] >= 2 * 32 and grid.shape[1] >= 2 * 40
    h, w = grid.shape[:2]
    # bottom-right tile is the last image (white 1.0) and bottom-left the third (0.5)
    assert np.allclose(grid[h - 4 - 16, w - 4 - 20], 1.0)
    left = w - 2 * (40 + 4)
    assert np.allclose(grid[h - 4 - 16, left + 20], 128 / 255)
    assert (grid[:10] < 0.5).any()  # labels drawn in the top margin
