import re

import pytest
import torch

from onn_core.errors import InputError
from simulator.layout import TileLayout, kernel_count


def test_frame_shape_counts_tiles_gaps_and_origin():
    layout = TileLayout(2, 3, (4, 5), gap_px=2, origin_px=(1, 3))
    assert layout.frame_shape == (1 + 2 * 4 + 1 * 2, 3 + 3 * 5 + 2 * 2)
    assert layout.capacity == 6


def test_tile_slices_are_row_major_and_exact():
    layout = TileLayout(2, 3, (4, 5), gap_px=2, origin_px=(1, 3))
    assert layout.tile_slices(0) == (slice(1, 5), slice(3, 8))
    assert layout.tile_slices(2) == (slice(1, 5), slice(17, 22))
    assert layout.tile_slices(4) == (slice(7, 11), slice(10, 15))


def test_tiles_do_not_overlap_and_stay_inside_frame():
    layout = TileLayout(3, 4, (5, 6), gap_px=1, origin_px=(2, 0), frame_shape=(30, 40))
    cover = torch.zeros(layout.frame_shape, dtype=torch.int64)
    for i in range(layout.capacity):
        rs, cs = layout.tile_slices(i)
        assert rs.stop <= 30 and cs.stop <= 40
        cover[rs, cs] += 1
    assert int(cover.max()) == 1
    assert int(cover.sum()) == layout.capacity * 5 * 6


@pytest.mark.parametrize("gap", [0, 3])
def test_assemble_places_each_tile_and_extract_inverts_it(gap):
    layout = TileLayout(2, 3, (4, 5), gap_px=gap, origin_px=(2, 1), frame_shape=(20, 30))
    images = torch.rand(2, 7, 5, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 1  # batch dims (2, 7), 5 tiles of 6
    frame = layout.assemble(images)
    assert frame.shape == (2, 7, 20, 30)
    for i in range(5):
        rs, cs = layout.tile_slices(i)
        torch.testing.assert_close(frame[..., rs, cs], images[:, :, i], rtol=0, atol=0)
    # everything outside the 5 filled tiles is dark
    assert float(frame.sum()) == pytest.approx(float(images.sum()), rel=1e-12)
    torch.testing.assert_close(layout.extract(frame, count=5), images, rtol=0, atol=0)
    assert float(layout.extract(frame)[:, :, 5].abs().max()) == 0.0


def test_assemble_is_differentiable():
    layout = TileLayout(2, 2, (3, 3), gap_px=1)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(1, 4, 3, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    weights = torch.rand(layout.frame_shape, dtype=torch.float64, generator=gen)
    (layout.assemble(images) * weights).sum().backward()
    torch.testing.assert_close(images.grad, layout.extract(weights[None]))


@pytest.mark.parametrize("count, grid", [(1, (1, 1)), (2, (1, 2)), (5, (2, 3)), (16, (4, 4)), (32, (6, 6)), (17, (4, 5))])
def test_for_count_picks_near_square_grid(count, grid):
    layout = TileLayout.for_count(count, (7, 7), gap_px=2)
    assert (layout.grid_rows, layout.grid_cols) == grid
    assert layout.capacity >= count and layout.gap_px == 2


def test_kernel_count_examples():
    # 1 mm x 2 mm, 0.1 mm kernels, no spacing: 10 x 20 (exact ratio must not floor to 9)
    assert kernel_count((1e-3, 2e-3), 1e-4, 0.0) == 200
    # n kernels need n k + (n-1) d: 0.94 mm sub-optics, 0.06 mm spacing on 3 mm x 2 mm -> 3 x 2
    assert kernel_count((3e-3, 2e-3), 0.94e-3, 0.06e-3) == 6
    # just too small for a second kernel on the height: 2 k + d = 1.94 mm > 1.93 mm
    assert kernel_count((1.93e-3, 1e-3), 0.94e-3, 0.06e-3) == 1
    assert kernel_count((0.5e-3, 1e-3), 0.94e-3, 0.0) == 0


@pytest.mark.parametrize(
    "args, name",
    [
        (((0.0, 1e-3), 1e-4, 0.0), "metasurface_hw_m[0]"),
        (((1e-3, 1e-3), -1e-4, 0.0), "kernel_pitch_m"),
        (((1e-3, 1e-3), 1e-4, -1e-6), "spacing_m"),
        ((1e-3, 1e-4, 0.0), "metasurface_hw_m"),
    ],
)
def test_kernel_count_rejects_bad_input(args, name):
    with pytest.raises(InputError, match=re.escape(name)):
        kernel_count(*args)


def test_bad_layout_input_is_named():
    with pytest.raises(InputError, match="grid_rows"):
        TileLayout(0, 2, (3, 3))
    with pytest.raises(InputError, match="gap_px"):
        TileLayout(1, 2, (3, 3), gap_px=-1)
    with pytest.raises(InputError, match="frame_shape"):
        TileLayout(2, 2, (3, 3), frame_shape=(5, 10))
    layout = TileLayout(1, 2, (3, 3))
    with pytest.raises(InputError, match="capacity"):
        layout.assemble(torch.zeros(1, 3, 3, 3))
    with pytest.raises(InputError, match="tile shape"):
        layout.assemble(torch.zeros(1, 2, 4, 3))
    with pytest.raises(InputError, match="NaN"):
        layout.assemble(torch.full((1, 2, 3, 3), float("nan")))
    with pytest.raises(InputError, match="frame"):
        layout.extract(torch.zeros(1, 4, 4))
    with pytest.raises(InputError, match="tile index"):
        layout.tile_slices(2)
