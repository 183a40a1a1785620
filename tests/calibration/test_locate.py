"""Finding the design's tile grid in a full camera frame (calibration.locate, `hil locate`) on the lab-like
simulated camera (simulator.placement), over seeded random placements: the grid is found, the mirror
reported, the tile corners land where the placement puts them; frames without the grid are refused
saying what was seen, with an annotated picture."""

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from calibration.locate import (GridLocation, LocateError, design_tile_corners, locate_grid, nominal_system,
                                patterns)
from hil.cli import main
from onn_core.errors import ConfigError
from simulator.placement import LabRenderer, Placement, SensorDefects
from simulator.system import OpticalSystem

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SENSOR = (1024, 1280)
DEFECTS = SensorDefects(prnu_rel_std=0.01, dsnu_e_per_s_std=20.0, hot_pixel_fraction=1e-4,
                        hot_pixel_dark_current_e_per_s=2e4, defect_seed=7)


@pytest.fixture(scope="module")
def nominal():
    return nominal_system(EXAMPLES / "optics.yaml")


@pytest.fixture(scope="module")
def fabricated():
    return OpticalSystem.from_yaml(EXAMPLES / "optics.yaml").eval()


def random_placement(seed: int, *, distortion: bool = True) -> Placement:
    """Offset anywhere the grid fits, rotation within +-15 deg, magnification 0.5-3, mirror 50 %."""
    return Placement.random(seed, (164, 164), SENSOR, max_radial_k1=0.02 if distortion else 0.0)


def frames_of(system, placement, exposure_s=None):
    lab = LabRenderer(system, placement, DEFECTS)
    exposure_s = 0.008 * placement.magnification**2 if exposure_s is None else exposure_s
    return {name: lab.render(image, exposure_s) for name, image in patterns(system.image_shape, 7).items()}


def corner_error_px(location, placement, system) -> float:
    """RMS distance (camera pixels) between the tiles' outer corners as located and where the placement puts them."""
    corners = design_tile_corners(system.layout, system.num_psfs)
    error = location.to_frame(corners) - placement.to_camera(corners, system.frame_shape)
    return float(np.sqrt((error**2).sum(axis=-1).mean()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_grid_is_found_exactly_without_distortion_or_fabrication_errors(nominal, seed):
    placement = random_placement(seed, distortion=False)
    location = locate_grid(frames_of(nominal, placement), nominal, saturation_dn=65520)
    assert location.mirror == placement.mirror
    assert location.magnification == pytest.approx(placement.magnification, rel=2e-3)
    assert math.degrees(location.rotation_rad - placement.rotation_rad) == pytest.approx(0, abs=0.05)
    assert corner_error_px(location, placement, nominal) < 0.05
    assert location.spots == nominal.num_psfs * 9


@pytest.mark.parametrize("seed", [3, 4, 5, 6])
def test_the_grid_is_found_on_the_lab_bench(nominal, fabricated, seed):
    # the fabricated optics (PSF shifts ~0.3 design px each) and radial distortion (|k1| <= 0.02): the
    # coarse affine map is off by those, up to about half a design pixel at the tile corners
    placement = random_placement(seed)
    location = locate_grid(frames_of(fabricated, placement), nominal, saturation_dn=65520)
    assert location.mirror == placement.mirror
    assert location.magnification == pytest.approx(placement.magnification, rel=0.01)
    assert corner_error_px(location, placement, nominal) < 0.5 * placement.magnification
    r0, c0, rows, cols = location.roi
    inside = placement.to_camera(design_tile_corners(nominal.layout, nominal.num_psfs), nominal.frame_shape)
    assert (inside.min(axis=(0, 1)) >= (r0, c0)).all() and (inside.max(axis=(0, 1)) <= (r0 + rows, c0 + cols)).all()


def test_blank_saturated_outside_and_other_designs_are_refused(nominal, fabricated):
    placement = Placement(SENSOR, (500.0, 600.0), 0.1, 1.5, False, 0.0)
    frames = frames_of(fabricated, placement)
    blank = dict(frames, white=frames["dark"], left=frames["dark"], dots=frames["dark"])
    with pytest.raises(LocateError, match="frame is blank") as caught:
        locate_grid(blank, nominal)
    assert caught.value.annotated.shape == (*SENSOR, 3) and caught.value.annotated.dtype == np.uint8
    with pytest.raises(LocateError, match="saturated"):
        locate_grid(frames_of(fabricated, placement, exposure_s=1.0), nominal, saturation_dn=64000)
    edge = Placement(SENSOR, (100.0, 600.0), 0.1, 1.5, False, 0.0)  # the top row of tiles is cut
    with pytest.raises(LocateError, match="partly outside"):
        locate_grid(frames_of(fabricated, edge), nominal)
    other = nominal_system({**yaml.safe_load((EXAMPLES / "optics.yaml").read_text()),
                            "design": {"generator": "random_signed", "num_kernels": 2, "kernel_size": 7,
                                       "channels": 1, "seed": 0}})
    with pytest.raises(LocateError, match="found 16 bright regions.*the design has 4 tiles") as caught:
        locate_grid(frames, other)
    assert (caught.value.annotated[..., 2] < caught.value.annotated[..., 0]).any()  # the regions are marked


def test_a_location_round_trips_through_its_file(nominal, tmp_path):
    placement = random_placement(0, distortion=False)
    location = locate_grid(frames_of(nominal, placement), nominal)
    location.save(tmp_path / "grid.yaml")
    again = GridLocation.load(tmp_path / "grid.yaml")
    assert np.allclose(again.design_to_frame, location.design_to_frame) and again.roi == location.roi
    assert np.allclose(again.to_design(again.to_frame([[3.0, 4.0]])), [[3.0, 4.0]])
    (tmp_path / "other.yaml").write_text("schema: something-else\nversion: 1\n")
    with pytest.raises(ConfigError, match="schema"):
        GridLocation.load(tmp_path / "other.yaml")


def _bench_file(tmp_path, **placement) -> Path:
    config = yaml.safe_load((EXAMPLES / "bench_lab_sim.yaml").read_text())
    config["clock"] = "virtual"
    config["camera"]["optics"] = str(EXAMPLES / "optics.yaml")
    config["camera"]["placement"].update(placement)
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_hil_locate_writes_the_location_and_a_picture(tmp_path, capsys):
    bench = _bench_file(tmp_path)
    out = tmp_path / "grid.yaml"
    assert main(["locate", str(bench), "--optics", str(EXAMPLES / "optics.yaml"), "-o", str(out),
                 "--averages", "1"]) == 0
    location = GridLocation.load(out)
    truth = yaml.safe_load(bench.read_text())["camera"]["placement"]
    assert location.magnification == pytest.approx(truth["magnification"], rel=0.01)
    assert location.to_frame(((np.array(location.design_shape) - 1) / 2)[None])[0] == pytest.approx(
        truth["center_px"], abs=1.0)
    assert cv2.imread(str(tmp_path / "grid.png")).shape == (*truth["sensor_shape"], 3)
    assert "found in the 1024x1280 frame" in capsys.readouterr().out


def test_hil_locate_refuses_a_frame_without_the_grid(tmp_path, capsys):
    bench = _bench_file(tmp_path, center_px=[-2000.0, -2000.0])  # the image misses the sensor
    out = tmp_path / "grid.yaml"
    assert main(["locate", str(bench), "--optics", str(EXAMPLES / "optics.yaml"), "-o", str(out),
                 "--averages", "1", "--no-auto-exposure"]) == 2
    err = capsys.readouterr().err
    assert "frame is blank" in err and "grid.png" in err
    assert not out.exists() and (tmp_path / "grid.png").exists()
