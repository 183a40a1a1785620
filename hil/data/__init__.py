"""Datasets of the toolkit; every one is a map-style dataset of ``(input, target)`` pairs, inputs float32
(C, rows, cols) in [0, 1] (or camera units for captures), targets an int64 label or a uint8 (1, rows, cols)
mask. In-memory datasets expose ``tensors = (inputs, targets)`` for batched access.

* :mod:`hil.data.idx`: Fashion-MNIST / MNIST / KMNIST from MNIST-format IDX folders.
* :mod:`hil.data.masking`: the Fashion-MNIST masking (segmentation) task and its threshold baseline.
* :mod:`hil.data.folders`: image folders with masks (Carvana layout).
* :mod:`hil.data.captures`: HDF5 capture files (schema ``onn-hil/captures``), read safely (:mod:`hil.data.h5view`);
  :mod:`hil.data.capture_writer` writes them.

:func:`build_datasets` maps the ``data:`` section of a run config to ``(train, test, num_classes)``.
"""

from __future__ import annotations

from pathlib import Path

from onn_core.errors import ConfigError

from .captures import CAPTURE_SCHEMA, CAPTURE_SCHEMA_VERSION, CaptureDataset
from .errors import CaptureFileError, CaptureWriteError, CorruptFrameError, DatasetError, TruncatedCaptureError
from .folders import ImageMaskFolder, read_image
from .idx import IdxClassification, read_idx
from .masking import MaskingDataset, MaskingOptions, ThresholdBaseline, compose_scenes, threshold_baseline

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
IDX_DATASETS = ("fashion_mnist", "mnist", "kmnist")
DATASETS = IDX_DATASETS + ("fashion_masking", "image_folder", "captures")
TASK_OF = {**{name: "classification" for name in IDX_DATASETS}, "fashion_masking": "segmentation",
           "image_folder": "segmentation", "captures": "classification"}


def build_datasets(data_cfg, task: str):
    """``(train, test or None, num_classes)`` for a data config (a mapping or an object with fields
    ``dataset``, ``root``, ``options``; see ``hil.config.DataConfig``).

    dataset: ``fashion_mnist`` | ``mnist`` | ``kmnist`` (root: the IDX folder; Fashion-MNIST defaults
    to Debian's ``/usr/share/datasets/fashion-mnist``); ``fashion_masking`` (root as fashion_mnist;
    options: :class:`MaskingOptions` fields); ``image_folder`` (root with ``images/`` and ``masks/``, or
    with ``train/`` and ``test/`` folders of that layout; options: ``image_size`` [rows, cols],
    ``grayscale``); ``captures`` (root: a captures ``.h5`` file; options: ``test_path``, ``frame_scale``,
    ``num_classes`` (default 10)). Segmentation has 2 classes (background 0, object 1).
    """
    get = data_cfg.get if isinstance(data_cfg, dict) else (lambda k, d=None: getattr(data_cfg, k, d))
    name, root, options = get("dataset", "fashion_mnist"), get("root"), dict(get("options") or {})
    if name not in DATASETS:
        raise ConfigError("data.dataset", name, f"one of {list(DATASETS)}")
    if TASK_OF[name] != task:
        raise ConfigError("data.dataset", name, f"a {task} dataset (this one is for {TASK_OF[name]})")
    try:
        return _build(name, root, options)
    except TypeError as exc:  # unknown option keyword
        raise ConfigError("data.options", options, f"options accepted by {name} ({exc})") from exc


def _build(name: str, root, options: dict):
    if name in IDX_DATASETS or name == "fashion_masking":
        if root is None and name not in ("fashion_mnist", "fashion_masking"):
            raise ConfigError("data.root", None, f"the folder holding the {name} IDX files")
        root = root or FASHION_MNIST_ROOT
        source = "fashion_mnist" if name == "fashion_masking" else name
        if name in IDX_DATASETS and options:
            raise ConfigError("data.options", options, f"no options for {name}")
        masking = MaskingOptions(**options) if name == "fashion_masking" else None  # validate before loading
        train, test = IdxClassification(root, "train", source), IdxClassification(root, "test", source)
        if masking is None:
            return train, test, 10
        return MaskingDataset(train.tensors[0], masking, 0), MaskingDataset(test.tensors[0], masking, 1), 2
    if root is None:
        raise ConfigError("data.root", None, "a folder (image_folder) or a captures .h5 file (captures)")
    if name == "image_folder":
        if "image_size" in options and options["image_size"] is not None:
            options["image_size"] = tuple(options["image_size"])
        base = Path(root)
        if (base / "train").is_dir():
            test = ImageMaskFolder(base / "test", **options) if (base / "test").is_dir() else None
            return ImageMaskFolder(base / "train", **options), test, 2
        return ImageMaskFolder(base, **options), None, 2
    num_classes = options.pop("num_classes", 10)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError("data.options.num_classes", num_classes, "an integer >= 2 (the classes of the captures)")
    test_path = options.pop("test_path", None)
    return CaptureDataset(root, **options), (CaptureDataset(test_path, **options) if test_path else None), num_classes


__all__ = [
    "build_datasets", "DatasetError", "IdxClassification", "read_idx", "MaskingDataset", "MaskingOptions",
    "ThresholdBaseline", "compose_scenes", "threshold_baseline", "ImageMaskFolder", "read_image", "CaptureDataset",
    "CAPTURE_SCHEMA", "CAPTURE_SCHEMA_VERSION", "FASHION_MNIST_ROOT", "DATASETS", "CaptureFileError", "CaptureWriteError",
    "CorruptFrameError", "TruncatedCaptureError",
]
