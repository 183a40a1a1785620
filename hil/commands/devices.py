"""``hil devices``, ``hil snap`` and ``hil show``: list backends, capture a frame, display an image.

Thin shells over :mod:`drivers`: ``hil snap CONFIG -o frame.png`` opens the bench of a bench YAML,
captures one frame and writes it losslessly (8/16-bit PNG or TIFF, or ``.npy``; other formats are
refused) with a JSON sidecar ``frame.png.json`` holding the frame's metadata, the device settings and
the resolved config (:func:`drivers.images.write_frame`), and beside them a preview for the eye,
``frame.png.preview.png`` (8-bit, stretched from the 0.1th to the 99.9th percentile: a 12-bit frame in
a 16-bit file looks black in an image viewer). ``hil show CONFIG IMAGE`` displays an image on
the bench's SLM until Ctrl-C or SIGTERM (exit status 130 or 143), or for ``--hold-s``; the bench blanks
the SLM when it closes.
"""

from __future__ import annotations

import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("devices", help="list the device backends found (built-in and installed)",
                              description="List device backends: name, kind, where it comes from, and whether it loads.")
    p.set_defaults(func=cmd_devices)

    p = subparsers.add_parser("snap", help="capture one camera frame from a bench config",
                              description="Open the bench of CONFIG, capture one frame, write it and a JSON sidecar.")
    p.add_argument("config", type=Path, help="bench YAML (e.g. examples/bench_sim.yaml)")
    p.add_argument("-o", "--output", type=Path, default=Path("frame.png"), help="frame file: .png, .tif (8/16-bit) or .npy (default frame.png); metadata goes to OUTPUT.json")
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


def cmd_snap(args) -> int:
    from drivers import open_bench
    from drivers.images import check_frame_path, read_image, write_frame

    check_frame_path(args.output)  # refused before anything is opened
    image = None if args.image is None else read_image(args.image)
    with open_bench(args.config) as bench:
        if args.exposure_s is not None:
            bench.camera.exposure_s = args.exposure_s
        if image is not None:
            frame = bench.measure(image).frame
        else:
            frame = bench.camera.snap()
        sidecar = write_frame(args.output, frame.image, frame_metadata(bench, frame, args.output.name))
    preview, (low, high) = write_preview(args.output, frame.image)
    print(f"{args.output}: {frame.image.shape[1]}x{frame.image.shape[0]} {frame.image.dtype}, frame {frame.index}, "
          f"exposure {frame.exposure_s:g} s, min {frame.image.min()} max {frame.image.max()} (metadata: {sidecar}; "
          f"preview {preview}: {low:g}..{high:g} -> 0..255)")
    return 0


def frame_metadata(bench, frame, name: str) -> dict:
    """The JSON sidecar of ``frame`` saved as ``name`` from ``bench``: the frame's metadata, the capture
    time (UTC), the devices' settings and the resolved bench config (`hil snap`, `hil live`)."""
    import datetime

    return {
        "image": name,
        "index": frame.index,
        "timestamp_s": frame.timestamp_s,
        "exposure_s": frame.exposure_s,
        "gain": frame.gain,
        "meta": frame.meta,
        "captured_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": bench.settings(),
        "config": bench.config,
    }


#: Percentiles of a frame mapped to 0 and 255 in its ``hil snap`` preview.
PREVIEW_PERCENTILES = (0.1, 99.9)


def preview_image(image) -> tuple:
    """An 8-bit image for viewing: ``image`` stretched linearly from its :data:`PREVIEW_PERCENTILES`
    (over all channels; its min..max where those coincide) to 0..255. Returns ``(uint8 image, (low,
    high))``. Only for the eye: measurements use the raw frame."""
    import numpy as np

    data = np.asarray(image, dtype=np.float64)
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return np.zeros(data.shape, np.uint8), (0.0, 0.0)
    low, high = (float(v) for v in np.percentile(finite, PREVIEW_PERCENTILES))
    if high <= low:
        low, high = float(finite.min()), float(finite.max())
    scale = 255.0 / (high - low) if high > low else 0.0
    out = np.clip((np.nan_to_num(data, nan=low) - low) * scale, 0, 255)
    return np.round(out).astype(np.uint8), (low, high)


def write_preview(frame_path, image) -> tuple:
    """Write :func:`preview_image` of ``image`` as ``FRAME.EXT.preview.png`` beside the frame file
    (atomically); returns ``(path, (low, high))``."""
    import cv2

    from onn_core.errors import InputError
    from onn_core.files import atomic_write

    frame_path = Path(frame_path)
    path = frame_path.with_name(frame_path.name + ".preview.png")
    preview, stretch = preview_image(image)
    if preview.ndim == 3 and preview.shape[2] == 1:
        preview = preview[..., 0]
    if preview.ndim == 3 and preview.shape[2] in (3, 4):  # frames are RGB(A); OpenCV writes BGR(A)
        preview = cv2.cvtColor(preview, cv2.COLOR_RGBA2BGRA if preview.shape[2] == 4 else cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", preview)
    if not ok:
        raise InputError(f"{path}: OpenCV cannot encode a {preview.shape} preview as PNG")
    with atomic_write(path, "wb") as f:
        f.write(encoded.tobytes())
    return path, stretch


def cmd_show(args) -> int:
    from drivers import VirtualClock, open_bench
    from drivers.images import read_image
    from onn_core.validation import check_positive

    hold_s = None if args.hold_s is None else check_positive("--hold-s", args.hold_s, allow_zero=True)
    image = read_image(args.image)
    with open_bench(args.config) as bench:  # blanks the SLM on any exit: Ctrl-C, SIGTERM (exit 130, 143)
        shown = bench.slm.show(image)
        bench.slm.wait_settled()
        print(f"showing {args.image} on {bench.slm.name} ({shown.shape}, {shown.dtype}); "
              + ("Ctrl-C to stop" if hold_s is None else f"for {hold_s:g} s"), file=sys.stderr, flush=True)
        if hold_s is not None or isinstance(bench.clock, VirtualClock):
            bench.slm.hold(hold_s or 0.0)
        else:
            while True:
                bench.slm.hold(0.1)  # a display window keeps servicing its GUI meanwhile
    return 0
