"""``hil capture CONFIG`` and ``hil export-design RUN_DIR --out DIR``: the capture step of the
hardware-in-the-loop job and the design export that precedes fabrication."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SelectConfig:
    """Which samples: a stratified ``fraction`` of the split (per class), drawn with ``seed``."""

    fraction: float
    seed: int = 0


@dataclass
class CaptureConfig:
    """A capture run: the bench config (path, relative to this file), the data (``dataset``, ``root``,
    ``split``: train | test), the selection, the output file, the calibration it is paired with (a
    calibration file, whose id and design are recorded, or only its ``calibration_id``) and the design
    the optics were made from (``design``: its optics YAML; default: the calibration's design, else
    the optics a simulated bench renders through)."""

    bench: str
    out: str
    select: SelectConfig
    data: dict[str, Any] = field(default_factory=lambda: {"dataset": "fashion_mnist"})
    split: str = "train"
    calibration: str = ""
    calibration_id: str = ""
    design: str = ""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "capture", help="show a stratified subset of a dataset on the bench and store the frames (HDF5)",
        description="Capture a seeded, class-balanced fraction of a dataset split through the bench of the "
                    "config into an HDF5 captures file (hil.capture). Rerunning continues after the last "
                    "complete frame; a file for other samples, or a foreign one, is refused untouched.")
    parser.add_argument("config", help="capture config YAML (see examples/capture_fmnist.yaml)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--recapture-corrupt", action="store_true",
                        help="verify the frames already in the file and capture again those failing their checksum")
    parser.add_argument("--compression", choices=("gzip", "lzf", "none"), default="gzip",
                        help="compression of the frames of a new file (default gzip, with shuffle)")
    parser.set_defaults(func=run_capture)
    export = subparsers.add_parser(
        "export-design", help="write a trained student's optics as a design file + optics.yaml",
        description="Export the optics of the optical student trained in RUN_DIR: kernels.npy (or psfs.npy) "
                    "for fabrication and an optics.yaml a bench's camera.optics loads (hil.export).")
    export.add_argument("run_dir", help="a run folder of `hil train`")
    export.add_argument("--out", required=True, help="output folder")
    export.set_defaults(func=run_export)


def run_capture(args: argparse.Namespace) -> int:
    from pathlib import Path

    from drivers import open_bench
    from hil.capture import capture, check_continuable, design_id_of, stratified_indices
    from hil.data import build_datasets
    from onn_core.config import build, load_yaml, to_plain
    from onn_core.errors import ConfigError

    path = Path(args.config)
    cfg = build(CaptureConfig, load_yaml(path), "")
    if cfg.split not in ("train", "test"):
        raise ConfigError("split", cfg.split, "'train' or 'test'")
    if not 0 < cfg.select.fraction <= 1:
        raise ConfigError("select.fraction", cfg.select.fraction, "a number in (0, 1]")
    base = path.resolve().parent
    if (base / cfg.out).exists():
        check_continuable(base / cfg.out)  # a damaged file is reported before the dataset and bench load
    train, test, _ = build_datasets(cfg.data, "classification")
    dataset = train if cfg.split == "train" else test
    if dataset is None:
        raise ConfigError("split", cfg.split, "a split the dataset has")
    indices = stratified_indices(dataset.tensors[1].numpy(), cfg.select.fraction, cfg.select.seed)
    calibration_id, design_system = _calibration_and_design(cfg, base)
    with open_bench(base / cfg.bench) as bench:
        system = design_system or getattr(bench.camera, "optics", None)
        if system is None:
            raise ConfigError("design", cfg.design, "the design's optics YAML (or a calibration file): every "
                                                    "capture records the design its frames were captured through")
        summary = capture(bench, dataset, indices, base / cfg.out, calibration_id=calibration_id,
                          design_id=design_id_of(system), config=to_plain(cfg), progress=not args.no_progress,
                          compression=None if args.compression == "none" else args.compression,
                          recapture_corrupt=args.recapture_corrupt)
    faults = ", ".join(f"{k} {v}" for k, v in sorted(summary.faults.items())) or "none"
    recaptured = f"; recaptured corrupt frames {summary.recaptured}" if summary.recaptured else ""
    print(f"{summary.count} frames in {summary.path} ({summary.added} captured now; "
          f"{summary.saturated_frames} with saturated pixels, {summary.dark_frames} dark; device faults retried: "
          f"{faults}{recaptured})")
    return 0


def _calibration_and_design(cfg: CaptureConfig, base):
    """``(calibration id, design OpticalSystem or None)`` from the config's ``calibration`` file,
    ``calibration_id`` and ``design`` optics YAML (paths relative to the config's folder)."""
    from hil.capture import design_id_of
    from onn_core.errors import ConfigError
    from onn_core.files import resolve_relative

    calibration_id, system = cfg.calibration_id, None
    if cfg.calibration:
        from calibration.file import load_calibration

        calibration = load_calibration(resolve_relative(cfg.calibration, base))
        if calibration_id and calibration_id != calibration.calibration_id:
            raise ConfigError("calibration_id", calibration_id,
                              f"the id of calibration {cfg.calibration} ({calibration.calibration_id}), or nothing")
        calibration_id, system = calibration.calibration_id, calibration.nominal_system()
    if cfg.design:
        from simulator.system import OpticalSystem

        design = OpticalSystem.from_yaml(resolve_relative(cfg.design, base))
        if system is not None and design_id_of(design) != design_id_of(system):
            raise ConfigError("design", cfg.design, f"the design calibration {cfg.calibration} was made for")
        system = design
    return calibration_id, system


def run_export(args: argparse.Namespace) -> int:
    from hil.export import export_design

    print(f"design written: {export_design(args.run_dir, args.out)}")
    return 0
