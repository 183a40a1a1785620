"""``hil devices``, ``hil snap`` and ``hil show``: list backends, capture a frame, display an image.

Thin shells over :mod:`drivers`: ``hil snap CONFIG -o frame.png`` opens the bench of a bench YAML,
captures one frame and writes it (PNG/TIFF through OpenCV, or ``.npy``) with a JSON sidecar holding the
frame's metadata, the device settings and the resolved config. ``hil show CONFIG IMAGE`` displays an
image on the bench's SLM until Ctrl-C (or ``--hold-s``); the bench blanks the SLM when it closes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("devices", help="list the device backends found (built-in and installed)",
                              description="List device backends: name, kind, where it comes from, and whether it loads.")
    p.set_defaults(func=cmd_devices)

    p = subparsers.add_parser("snap", help="capture one camera frame from a bench config",
                              description="Open the bench of CONFIG, capture one frame, write it and a JSON sidecar.")
    p.add_argument("config", type=Path, help="bench YAML (e.g. examples/bench_sim.yaml)")
    p.add_argument("-o", "--output", type=Path, default=Path("frame.png"), help="image file: .png, .tif or .npy (default frame.png)")
    p.add_argument("--exposure-s", type=float, default=None, help="exposure time in seconds (default: the config's)")
    p.add_argument("--image", type=Path, default=None, help="show this image first and capture the frame that sees it")
    p.set_defaults(func=cmd_snap)

    p = subparsers.add_parser("show", help="display an image on the bench's SLM",
                              description="Display IMAGE on the SLM of CONFIG until Ctrl-C (or --hold-s), then blank it.")
    p.add_argument("config", type=Path, help="bench YAML")
    p.add_argument("image", type=Path, help="image file (.png, .tif, ... or .npy) of the SLM's shape")
    p.add_argument("--hold-s", type=float, default=None, help="seconds to keep it displayed (default: until Ctrl-C)")
    p.set_defaults(func=cmd_show)


def cmd_devices(args) -> int:
    from drivers.errors import DeviceError
    from drivers.registry import ENTRY_POINT_GROUP, available_backends, load_backend

    rows = []
    for name, info in available_backends().items():
        try:
            kind, status = load_backend(name).kind, "ok"
        except DeviceError as exc:
            cause = exc.__cause__ or exc
            kind, status = "?", f"unavailable ({type(cause).__name__}: {cause})"
        rows.append((name, kind, info.source, info.target, status))
    widths = [max(len(r[i]) for r in rows + [("backend", "kind", "source", "target", "status")]) for i in range(4)]
    header = ("backend", "kind", "source", "target", "status")
    for row in (header, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + "  " + row[4])
    print(f"\nThird-party packages add backends with entry points in the group '{ENTRY_POINT_GROUP}'.")
    return 0


def read_image(path: Path):
    """An image file as a numpy array: ``.npy`` (no pickles), else OpenCV (colour as RGB)."""
    import numpy as np

    from simulator.errors import InputError

    if path.suffix.lower() == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read image {path}: {exc}") from exc
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputError(f"cannot read image {path} (missing, or not a format OpenCV reads)")
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA if image.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return image


def write_image(path: Path, image) -> None:
    """Write a frame: ``.npy`` exactly; ``.png``/``.tif`` through OpenCV (8/16-bit integers)."""
    import numpy as np

    from simulator.errors import InputError

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".npy":
        np.save(path, image, allow_pickle=False)
        return
    import cv2

    if image.dtype not in (np.uint8, np.uint16):
        raise InputError(f"{path.suffix} files hold 8/16-bit frames, got {image.dtype}; use .npy")
    if image.ndim == 3:  # frames are RGB(A); OpenCV writes BGR(A)
        image = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA if image.shape[2] == 4 else cv2.COLOR_RGB2BGR)
    try:
        ok = cv2.imwrite(str(path), image)
    except cv2.error as exc:
        raise InputError(f"cannot write {path}: {exc}") from exc
    if not ok:
        raise InputError(f"cannot write {path} (unknown extension {path.suffix!r}? use .png, .tif or .npy)")


def cmd_snap(args) -> int:
    import datetime

    from drivers import open_bench

    with open_bench(args.config) as bench:
        if args.exposure_s is not None:
            bench.camera.exposure_s = args.exposure_s
        if args.image is not None:
            frame = bench.measure(read_image(args.image)).frame
        else:
            frame = bench.camera.snap()
        write_image(args.output, frame.image)
        sidecar = args.output.with_suffix(".json")
        meta = {
            "image": args.output.name,
            "index": frame.index,
            "timestamp_s": frame.timestamp_s,
            "exposure_s": frame.exposure_s,
            "gain": frame.gain,
            "meta": frame.meta,
            "captured_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "settings": bench.settings(),
            "config": bench.config,
        }
        sidecar.write_text(json.dumps(meta, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"{args.output}: {frame.image.shape[1]}x{frame.image.shape[0]} {frame.image.dtype}, frame {frame.index}, "
          f"exposure {frame.exposure_s:g} s, min {frame.image.min()} max {frame.image.max()} (metadata: {sidecar})")
    return 0


def cmd_show(args) -> int:
    from drivers import VirtualClock, open_bench
    from simulator.validation import check_positive

    hold_s = None if args.hold_s is None else check_positive("--hold-s", args.hold_s, allow_zero=True)
    image = read_image(args.image)
    with open_bench(args.config) as bench:
        shown = bench.slm.show(image)
        bench.slm.wait_settled()
        print(f"showing {args.image} on {bench.slm.name} ({shown.shape}, {shown.dtype}); "
              + ("Ctrl-C to stop" if hold_s is None else f"for {hold_s:g} s"), file=sys.stderr)
        if hold_s is not None or isinstance(bench.clock, VirtualClock):
            bench.slm.hold(hold_s or 0.0)
        else:
            try:
                while True:
                    bench.slm.hold(0.1)  # a display window keeps servicing its GUI meanwhile
            except KeyboardInterrupt:
                pass
    return 0
