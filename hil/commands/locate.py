"""``hil locate BENCH --optics OPTICS [-o grid.yaml]``: find the design's tile grid in the camera frame.

Opens the bench, shows the patterns of :func:`calibration.locate.patterns` (blank, white, left half,
dots; the exposure first chosen on the white one), finds where the design frame lies in the camera
frame (:func:`calibration.locate.locate_grid`) and writes it (ROI, affine maps both ways, rotation,
magnification, mirror) as YAML, atomically, with an annotated PNG of the frame next to it
(``grid.png``: bright regions in yellow, tile outlines in green, the ROI in blue). A frame in which the
grid cannot be found (blank, saturated, partly outside, another design) is reported in one line that
says what was seen, the PNG shows it, and the exit status is 2.
"""

from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "locate", help="find the design's tile grid in the camera frame (ROI and frame -> design transform)",
        description="Show test patterns on the bench of CONFIG, find the design's tiles in the camera frame "
                    "(any offset, rotation within +-15 deg, magnification 0.5-3x, mirror images reported) and "
                    "write the region of interest and the transform as YAML, with an annotated PNG next to it.")
    p.add_argument("config", type=Path, help="bench YAML (e.g. examples/bench_lab_sim.yaml)")
    p.add_argument("--optics", type=Path, required=True,
                   help="the design's optics YAML (e.g. examples/optics.yaml; its fabrication errors are ignored)")
    p.add_argument("-o", "--output", type=Path, default=Path("grid.yaml"),
                   help="where to write the location (default grid.yaml; the annotated frame goes to OUTPUT.png)")
    p.add_argument("--averages", type=int, default=2, help="frames averaged per pattern (default 2)")
    p.add_argument("--no-auto-exposure", action="store_true", help="keep the camera's exposure as configured")
    p.set_defaults(func=cmd_locate)


def cmd_locate(args) -> int:
    import math

    from calibration.locate import locate_into, nominal_system
    from drivers import open_bench

    png = args.output.with_suffix(".png")
    system = nominal_system(args.optics)
    with open_bench(args.config, located=False) as bench:  # the camera's own frames, whatever camera.locate says
        location = locate_into(bench, system, args.output, averages=args.averages,
                               auto_exposure=not args.no_auto_exposure)
    r0, c0, rows, cols = location.roi
    print(f"{args.output}: design frame {system.frame_shape[0]}x{system.frame_shape[1]} found in the "
          f"{location.frame_shape[0]}x{location.frame_shape[1]} frame: ROI rows {r0}..{r0 + rows - 1}, cols "
          f"{c0}..{c0 + cols - 1}; rotation {math.degrees(location.rotation_rad):.2f} deg, magnification "
          f"{location.magnification:.4f}, {'mirrored' if location.mirror else 'not mirrored'}; {location.spots} dots, "
          f"RMS residual {location.residual_rms_px:.2f} px (annotated frame: {png})")
    return 0
