"""Design an 8-kernel meta-optic, fabricate it with errors, and image a Fashion-MNIST sample through it.

    python examples/simulator_demo.py --out out/demo        (``make demo``)

Steps:
1. 8 seeded signed 7x7 kernels (the reference design of ``examples/optics.yaml``) -> 16 non-negative
   target PSFs ``[k1+, k1-, ...]``.
2. Design one phase mask per target with :func:`simulator.metaoptic.design_psf` (all 16 in one batched
   Adam run) on a small grid so that it runs in about a minute on 2 CPU cores (the paper's 1600 px
   aperture is far larger; see ``--aperture-px``).
3. Build the :class:`simulator.system.OpticalSystem` of ``examples/optics.yaml`` with the designed PSFs
   (scaled to each target's energy) and its reference fabrication errors.
4. Render the camera frame of a Fashion-MNIST test image (``/usr/share/datasets/fashion-mnist``), or
   of a synthetic test pattern when the dataset is missing (logged warning).
5. Save ``psfs_target_vs_designed.png``, ``psfs_design_vs_fabricated.png``, ``camera_frame.png``,
   ``summary.json`` (nrmse per PSF and kernel, efficiencies, settings) and ``optics_resolved.yaml``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import struct
import sys
import time
from pathlib import Path

import numpy as np
import torch

from onn_core.config import load_yaml, save_yaml
from simulator.design import random_signed_kernels, signed_kernels_to_psfs
from simulator.system import OpticalSystem
from simulator.metaoptic import design_psf

logger = logging.getLogger("simulator_demo")
HERE = Path(__file__).resolve().parent
DATASET_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped) as a numpy array: magic 0x0000 0x08 (ubyte) ndim, then big-endian
    uint32 sizes, then the data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        zero, dtype_code, ndim = struct.unpack(">HBB", fh.read(4))
        if zero != 0 or dtype_code != 0x08:
            raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {zero:#x} {dtype_code:#x})")
        shape = struct.unpack(f">{ndim}I", fh.read(4 * ndim))
        data = np.frombuffer(fh.read(), dtype=np.uint8)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: expected {int(np.prod(shape))} values for shape {shape}, found {data.size}")
    return data.reshape(shape)


def sample_image(index: int) -> tuple[np.ndarray, str]:
    """A 28x28 uint8 Fashion-MNIST test image and its description, or a synthetic pattern."""
    images, labels = DATASET_DIR / "t10k-images-idx3-ubyte.gz", DATASET_DIR / "t10k-labels-idx1-ubyte.gz"
    try:
        image = read_idx(images)[index]
        label = int(read_idx(labels)[index])
        return image, f"Fashion-MNIST test image {index} ({CLASSES[label]})"
    except (OSError, ValueError, IndexError) as exc:
        logger.warning("Fashion-MNIST not available (%s); using a synthetic test pattern", exc)
        y, x = np.mgrid[0:28, 0:28]
        pattern = ((x // 4 + y // 4) % 2) * 180 + 40 * (np.hypot(x - 13.5, y - 13.5) < 8)
        return pattern.astype(np.uint8), "synthetic checkerboard + disc"


def montage(ax_row, stack: np.ndarray, title: str, *, signed: bool = False) -> None:
    limit = float(np.abs(stack).max()) or 1.0
    for i, ax in enumerate(ax_row):
        if signed:
            ax.imshow(stack[i], cmap="RdBu_r", vmin=-limit, vmax=limit)
        else:
            ax.imshow(stack[i], cmap="magma", vmin=0, vmax=limit)
        ax.set_xticks([])
        ax.set_yticks([])
        if i == 0:
            ax.set_ylabel(title, fontsize=8)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--config", type=Path, default=HERE / "optics.yaml", help="optics YAML")
    parser.add_argument("--steps", type=int, default=500, help="Adam steps of the design")
    parser.add_argument("--lr", type=float, default=5e-3, help="Adam learning rate")
    parser.add_argument("--aperture-px", type=int, default=48, help="sub-optic aperture, cells")
    parser.add_argument("--magnification-px", type=int, default=6, help="simulation cells per kernel pixel")
    parser.add_argument("--spacing-m", type=float, default=586e-9, help="meta-atom (grid) spacing, m")
    parser.add_argument("--distance-m", type=float, default=150e-6, help="metasurface-to-sensor distance, m")
    parser.add_argument("--wavelength-m", type=float, default=532e-9, help="design wavelength, m")
    parser.add_argument("--image-index", type=int, default=0, help="Fashion-MNIST test image index")
    parser.add_argument("--seed", type=int, default=0, help="design seed")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice; 1 is faster on a busy machine)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from onn_core.progress import progress_bar

    args.out.mkdir(parents=True, exist_ok=True)
    config = load_yaml(args.config)
    design_cfg = config["design"]
    kernels = random_signed_kernels(design_cfg["num_kernels"], design_cfg["kernel_size"],
                                    design_cfg.get("channels", 1), design_cfg.get("seed", 0))
    if kernels.shape[1] != 1:
        raise SystemExit("this demo designs monochrome kernels (design.channels: 1)")
    targets = signed_kernels_to_psfs(kernels)[:, 0]  # (16, 7, 7)
    started = time.perf_counter()
    with progress_bar(total=args.steps, desc="designing 16 PSFs", unit="step") as bar:
        def progress(step, loss):
            bar.set_postfix(loss=f"{loss:.3g}", refresh=False)
            bar.update(1)

        result = design_psf(targets.float(), [args.wavelength_m], aperture_px=args.aperture_px,
                            spacing_m=args.spacing_m, distance_m=args.distance_m,
                            magnification_px=args.magnification_px, steps=args.steps, lr=args.lr, seed=args.seed,
                            progress=progress)
    design_s = time.perf_counter() - started
    designed = result.psf[:, :1].double() * targets.sum(dim=(-2, -1))[:, None, None, None]  # (16, 1, 7, 7)

    optics_cfg = {**config, "design": {"generator": "inline", "signed": False, "psfs": designed.tolist()}}
    system = OpticalSystem.from_config(optics_cfg, base_dir=args.config.parent).eval()
    image, description = sample_image(args.image_index)
    frame = system.render(image)
    with torch.no_grad():
        fabricated = system.fabricated_psfs().double()[:, 0].numpy()
    margin = system.geometry.psf_margin_px  # the fabricated PSFs sit on a window widened by this margin
    design_window = np.pad(designed[:, 0].numpy(), ((0, 0), (margin, margin), (margin, margin)))

    fig, axes = plt.subplots(2, 16, figsize=(16, 2.6))
    montage(axes[0], targets.numpy(), "target")
    montage(axes[1], designed[:, 0].numpy(), "designed")
    fig.suptitle("Target vs designed PSFs [k1+, k1-, k2+, ...]", fontsize=9)
    fig.savefig(args.out / "psfs_target_vs_designed.png", dpi=120)
    plt.close(fig)
    fig, axes = plt.subplots(3, 16, figsize=(16, 3.8))
    montage(axes[0], design_window, "design")
    montage(axes[1], fabricated, "fabricated")
    montage(axes[2], fabricated - design_window, "difference", signed=True)
    fig.suptitle("Design vs fabricated PSFs (reference errors of optics.yaml)", fontsize=9)
    fig.savefig(args.out / "psfs_design_vs_fabricated.png", dpi=120)
    plt.close(fig)
    fig, (ax_in, ax_frame) = plt.subplots(1, 2, figsize=(10, 5), gridspec_kw={"width_ratios": [1, 2.5]})
    ax_in.imshow(image, cmap="gray")
    ax_in.set_title(description, fontsize=8)
    shown = ax_frame.imshow(frame, cmap="gray")
    ax_frame.set_title(f"camera frame {frame.shape} uint16, 16 tiles", fontsize=8)
    fig.colorbar(shown, ax=ax_frame, label="DN")
    fig.savefig(args.out / "camera_frame.png", dpi=120)
    plt.close(fig)
    np.save(args.out / "camera_frame.npy", frame)
    save_yaml(system.to_config(), args.out / "optics_resolved.yaml")

    # the signed kernel realised by the designed PSF pair vs the target kernel
    realised = designed[0::2, 0] - designed[1::2, 0]
    kernel_nrmse = ((realised - kernels[:, 0]).flatten(1).norm(dim=1) / kernels[:, 0].flatten(1).norm(dim=1))
    summary = {
        "input": description,
        "design": {"steps": args.steps, "lr": args.lr, "aperture_px": args.aperture_px,
                   "magnification_px": args.magnification_px, "spacing_m": args.spacing_m,
                   "distance_m": args.distance_m, "wavelength_m": args.wavelength_m, "seed": args.seed,
                   "seconds": round(design_s, 2), "loss_first": result.loss_history[0],
                   "loss_last": result.loss_history[-1]},
        "nrmse_per_psf": [float(v) for v in result.nrmse[:, 0]],
        "nrmse_per_kernel": [float(v) for v in kernel_nrmse],
        "window_efficiency_per_psf": [float(v) for v in result.window_efficiency[:, 0]],
        "frame": {"shape": list(frame.shape), "min_dn": int(frame.min()), "max_dn": int(frame.max()),
                  "mean_dn": float(frame.mean())},
        "nrmse_definition": "||psf - target||_2 / ||target||_2, both normalised to sum 1 (per PSF); per kernel: "
                            "||(k+ - k-) - k||_2 / ||k||_2 with the designed PSFs scaled to the targets' energy",
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"designed 16 PSFs in {design_s:.1f} s: median nrmse {float(result.nrmse.median()):.3g}; "
          f"outputs in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
