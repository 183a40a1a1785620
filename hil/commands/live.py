"""``hil live BENCH``: a live camera view in a window, for aligning a bench.

Opens the bench (the camera's own frames, whatever ``camera.locate`` says, like `hil locate`) and shows
its frames (:class:`drivers.live_window.LiveWindow`): scaled linearly or logarithmically, saturated
pixels in red, a histogram, the frame rate, and the design's tile grid with each tile's focus metric.
The grid comes from the calibration's geometry stage (``--calibration``) or the design's layout
(``--optics``, else a simulated camera's optics), placed in the camera frame by a `hil locate` file
(``--grid``, else the bench's ``camera.locate``) unless the camera's frames are the design frame.
Keys show test patterns (``b`` blank, ``w`` white, ``g`` point grid, ``d`` dots, ``i`` the
``--image``), step the exposure (``+`` / ``-``, ``a`` auto), toggle the scaling (``l``), save the
frame as `hil snap` does (``s``: frame, JSON sidecar and preview in ``--save-dir``) and quit (``q``,
Esc, or close the window). The display is blanked and the window closed on any exit.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

#: Display pixels between the point grid's dots when no design names a pitch.
DEFAULT_GRID_PITCH = 8


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "live", help="live camera view for aligning a bench (saturation, histogram, tile grid, focus)",
        description="Show the camera of CONFIG live in a window with saturated pixels, a histogram, the frame "
                    "rate and the tile grid with a focus metric per tile. Keys: b blank, w white, g point grid, "
                    "d dots, i --image, + / - exposure, a auto exposure, l linear/log, s save frame, q or Esc quit.")
    p.add_argument("config", type=Path, help="bench YAML (e.g. examples/bench_sim.yaml)")
    p.add_argument("--optics", type=Path, default=None,
                   help="the design's optics YAML: its tile layout and test patterns (default: a simulated camera's)")
    p.add_argument("--grid", type=Path, default=None,
                   help="a `hil locate` file placing the design frame in the camera frame (default: camera.locate)")
    p.add_argument("--calibration", type=Path, default=None,
                   help="a calibration.h5 whose geometry stage gives the tiles' measured positions")
    p.add_argument("--image", type=Path, default=None, help="an image of the SLM's shape (e.g. a dataset sample) for key i")
    p.add_argument("--save-dir", type=Path, default=Path("."), help="where key s writes live_NNNN.png (default .)")
    p.add_argument("--scale", choices=("linear", "log"), default="linear", help="initial scaling (default linear)")
    p.add_argument("--position", type=int, nargs=2, default=(0, 0), metavar=("X", "Y"),
                   help="desktop position of the window's top-left corner (default 0 0)")
    p.add_argument("--max-size", type=int, nargs=2, default=(720, 1280), metavar=("ROWS", "COLS"),
                   help="largest size of the frame in the window, screen pixels (default 720 1280)")
    p.add_argument("--frames", type=int, default=None, help="stop after N frames (default: until q)")
    p.add_argument("--keys", default="", help="keys handled one per frame before any pressed (e.g. 'gl+s')")
    p.set_defaults(func=cmd_live)


def cmd_live(args) -> int:
    from drivers import open_bench
    from drivers.config import load_bench_config
    from drivers.images import read_image
    from drivers.live_window import LiveWindow
    from onn_core.errors import ConfigError

    if args.frames is not None and args.frames < 1:
        raise ConfigError("--frames", args.frames, "an integer >= 1")
    image = None if args.image is None else read_image(args.image)
    cfg, base_dir = load_bench_config(args.config)
    grid = args.grid if args.grid is not None else _configured_grid(cfg.camera.get("locate"), base_dir)
    with open_bench(args.config, located=False) as bench:  # the camera's own frames
        system, geometry = _design(args, bench)
        window = LiveWindow(bench, patterns=_patterns(bench.slm, system, image), save=_saver(args.save_dir),
                            tiles=_tiles(system, geometry, grid, bench.camera), scale=args.scale,
                            position=tuple(args.position), max_shape=tuple(args.max_size))
        shown = window.run(frames=args.frames, keys=args.keys)
    print(f"hil live: {shown} frames shown")
    return 0


def _configured_grid(locate, base_dir: Path) -> Path | None:
    from onn_core.files import resolve_relative

    return None if locate is None else resolve_relative(locate, base_dir)


def _design(args, bench):
    """``(system, geometry)``: the nominal optical system for the tile layout and patterns (or None)
    and the calibration's geometry stage (or None)."""
    from calibration.locate import nominal_system
    from onn_core.errors import ConfigError

    system = nominal_system(args.optics) if args.optics is not None else getattr(bench.camera, "optics", None)
    if args.calibration is None:
        return system, None
    from calibration.file import load_calibration

    calibration = load_calibration(args.calibration)
    if calibration.geometry is None:
        raise ConfigError("--calibration", str(args.calibration), "a calibration with a geometry stage")
    return system if system is not None else calibration.nominal_system(), calibration.geometry


def _saver(directory: Path):
    """``save(bench, frame) -> path``: writes the frame as `hil snap` does (frame, JSON sidecar, preview)
    to the first free ``directory/live_NNNN.png``."""
    from drivers.images import write_frame
    from hil.commands.devices import frame_metadata, write_preview

    def save(bench, frame) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        number = 1
        while (directory / f"live_{number:04d}.png").exists():
            number += 1
        path = directory / f"live_{number:04d}.png"
        write_frame(path, frame.image, frame_metadata(bench, frame, path.name))
        write_preview(path, frame.image)
        return path

    return save


def _patterns(slm, system, image) -> dict:
    """Key -> (name, image) of the test patterns, in the SLM's shape and dtype: blank, white, the point
    grid (the geometry stage's first dot pattern), the dots of `hil locate` and ``image``."""
    import numpy as np

    from calibration.result import GeometrySettings
    from calibration.geometry.patterns import dot_patterns, minimum_pitch
    from calibration.locate import patterns

    shape, top = slm.shape, slm.max_level

    def fit(pattern):  # a (rows, cols) pattern on every channel
        return np.broadcast_to(pattern.reshape(pattern.shape + (1,) * (len(shape) - 2)), shape).astype(slm.dtype)

    pitch = minimum_pitch(system) if system is not None else DEFAULT_GRID_PITCH
    grid = dot_patterns(shape[:2], pitch, GeometrySettings.phases).image(0, top, shape, slm.dtype)
    chosen = {"b": ("blank", np.zeros(shape, slm.dtype)), "w": ("white", np.full(shape, top, slm.dtype)),
              "g": (f"point grid, pitch {pitch}", grid)}
    if system is not None:
        chosen["d"] = ("dots", fit(patterns(shape[:2], system.design.psfs().shape[-1], top + 1)["dots"]))
    if image is not None:
        chosen["i"] = ("image", slm.to_frame(image))
    return chosen


def _tiles(system, geometry, grid, camera):
    """The tile outlines (n, 4, 2) in the camera's frames, or None where nothing places them."""
    import numpy as np

    from calibration.locate import GridLocation, design_tile_corners

    if geometry is not None:
        (h, w), origins = geometry.tile_shape, geometry.tile_origins_px() - 0.5
        design = np.stack([origins, origins + [0, w], origins + [h, w], origins + [h, 0]], axis=1)
    elif system is not None:
        design = design_tile_corners(system.layout, system.num_psfs)
    else:
        return None
    if grid is None:
        if system is not None and tuple(system.frame_shape) != tuple(camera.shape):
            log.warning("no tile grid: the design frame %s is not the camera's %s and no `hil locate` file places "
                        "it (--grid or camera.locate)", tuple(system.frame_shape), tuple(camera.shape))
            return None
        return design
    location = GridLocation.load(grid)
    frame = location.to_frame(design)
    if location.frame_shape != tuple(camera.shape):  # located on the full sensor, viewed through a ROI
        frame = frame - np.asarray(camera.roi[:2], dtype=np.float64)
    return frame
