"""``estimate(config_or_path, out_dir) -> EstimateResult``: what ``hil estimate`` runs.

From one YAML config (``examples/estimate_fmnist.yaml``): the optical student's architecture (the
``model`` section, as ``hil train`` reads it), optionally the metasurface layout that fixes its kernel
count, the dataset, the kernel-regression settings, and an optional sweep. It

1. plans the layout (:func:`hil.estimate.layout.plan_layout`) if there is one: the kernel count ``M``
   is the layout's, else ``model.num_kernels``;
2. shows the data through the student's display (8-bit gray levels, its gamma) as relative radiance,
   exactly as training's frontend does;
3. estimates the test metric (accuracy, or mean IoU for the masking task) by kernel ridge regression
   with the architecture's NTK (:mod:`hil.estimate.kernel`) for the random bank of ``M`` kernels the
   student would start from, for infinitely many kernels, and for every point of the sweep;
4. writes ``config.yaml``, ``estimate.json`` and ``estimate.png`` (metric against kernel count, with
   bootstrap intervals), and ``layout.png`` with a layout, into the output folder.

The estimate ignores sensor noise, fabrication errors and training-time robustness draws (it is the
noiseless architecture's kernel); with such settings in ``model`` it says so in the log.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from onn_core.config import build, load_yaml, save_yaml, to_plain
from onn_core.errors import ConfigError
from onn_core.files import atomic_write

from .kernel import ArchitectureKernel, PointFeatures
from .layout import LayoutPlan, LayoutSpec, plan_layout, plot_layout
from .regression import REGULARIZATION_GRID, EvalSet, kernel_regression

log = logging.getLogger(__name__)

#: ReLU layers of :class:`hil.models.UpConvDecoder` (encode, bottleneck, up-convolution, decode).
UPCONV_RELU_LAYERS = 4
#: Default evaluation images (validation, test) per task when the data section leaves them null;
#: ``None``: the whole test split.
DEFAULT_EVAL_IMAGES = {"classification": (2000, None), "segmentation": (50, 200)}


@dataclass
class EstimateData:
    """``data:`` which dataset (``dataset``, ``root``, ``options`` as for ``hil train``, see
    :func:`hil.data.build_datasets`) and how much of it.

    ``train_size``: training points of the regression -- images (classification) or pixels drawn at
    random from the training images (segmentation). ``val_size``: images held out of the training
    split to choose the regulariser; ``test_size``: test images (their first ones). Null: 2000 and the
    whole test split (classification), 50 and 200 (segmentation, where every pixel is predicted).
    ``extrapolate_to``: training points the student will be trained on (e.g. the training split less
    the validation images): the estimate is also extrapolated there along its learning curve
    (:func:`hil.estimate.regression.extrapolate`); null: not extrapolated.
    """

    dataset: str = "fashion_mnist"
    root: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    train_size: int = 10000
    val_size: int | None = None
    test_size: int | None = None
    extrapolate_to: int | None = None

    def __post_init__(self):
        if self.train_size < 8:
            raise ConfigError("data.train_size", self.train_size, "an integer >= 8")
        if self.extrapolate_to is not None and self.extrapolate_to < self.train_size:
            raise ConfigError("data.extrapolate_to", self.extrapolate_to, f"null or at least data.train_size "
                              f"({self.train_size})")
        for name in ("val_size", "test_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"data.{name}", getattr(self, name), "null or an integer >= 1")
        if self.dataset == "captures":
            raise ConfigError("data.dataset", self.dataset, "a dataset of display images (the estimate shows "
                              "them through the student's display), not camera captures")


@dataclass
class NTKSettings:
    """``ntk:`` the kernel and the regression. ``weight_variance``, ``bias_variance``: ``sigma_w^2``,
    ``sigma_b^2`` of the backend's layers (NTK parameterisation; radiance in units of full white).
    Without a bias (``sigma_b^2 = 0``) the kernel is homogeneous in brightness, so its predictions
    cannot threshold on it: on the masking task the estimate fell from 0.72 to 0.55 mIoU (0.01 to 1
    gave 0.72; on Fashion-MNIST classification 0.1 was best by 0.1-0.7 points). ``frontend_trained``: the optical
    kernels are trained with the backend (false: frozen, e.g. a fabricated frontend). ``regularization``:
    the candidates, in units of the training kernel's mean diagonal. ``chunk_size``: kernel rows formed
    at a time (memory ~ ``8 x chunk_size x train_size`` bytes per temporary). ``bootstrap``,
    ``confidence``: the test metric's interval."""

    weight_variance: float = 2.0
    bias_variance: float = 0.1
    frontend_trained: bool = True
    regularization: list[float] = field(default_factory=lambda: list(REGULARIZATION_GRID))
    chunk_size: int = 1024
    bootstrap: int = 1000
    confidence: float = 0.95

    def __post_init__(self):
        if not self.weight_variance > 0:
            raise ConfigError("ntk.weight_variance", self.weight_variance, "a number > 0")
        if not self.bias_variance >= 0:
            raise ConfigError("ntk.bias_variance", self.bias_variance, "a number >= 0")
        if not self.regularization or not all(v > 0 for v in self.regularization):
            raise ConfigError("ntk.regularization", self.regularization, "a non-empty list of numbers > 0")
        if self.chunk_size < 1:
            raise ConfigError("ntk.chunk_size", self.chunk_size, "an integer >= 1")
        if self.bootstrap < 1:
            raise ConfigError("ntk.bootstrap", self.bootstrap, "an integer >= 1")
        if not 0 < self.confidence < 1:
            raise ConfigError("ntk.confidence", self.confidence, "a number in (0, 1)")


@dataclass
class SweepSpec:
    """``sweep:`` the estimate against ``kernels`` (kernel counts) or against physical size
    (``metasurface_hw_m``: [height, width] pairs in metres, each turned into a kernel count by the
    ``layout`` section's other fields). Exactly one of the two."""

    kernels: list[int] | None = None
    metasurface_hw_m: list[tuple[float, float]] | None = None

    def __post_init__(self):
        if (self.kernels is None) == (self.metasurface_hw_m is None):
            raise ConfigError("sweep", {"kernels": self.kernels, "metasurface_hw_m": self.metasurface_hw_m},
                              "exactly one of sweep.kernels and sweep.metasurface_hw_m")
        if self.kernels is not None and (not self.kernels or min(self.kernels) < 1):
            raise ConfigError("sweep.kernels", self.kernels, "a non-empty list of kernel counts >= 1")
        if self.metasurface_hw_m is not None and not self.metasurface_hw_m:
            raise ConfigError("sweep.metasurface_hw_m", self.metasurface_hw_m, "a non-empty list of [height, width]")


@dataclass
class EstimateConfig:
    """One ``hil estimate`` job: ``task``, the optical student ``model`` (as in ``hil train``; backend
    ``fc`` for classification, ``upconv`` for segmentation), ``data``, ``layout`` (optional), ``ntk``,
    ``sweep`` (optional), ``seed`` (data subsets, bootstrap; the random banks are the student's own
    initial kernels, seeded by ``model.seed``), ``threads`` (torch intra-op threads; null: unchanged)."""

    task: Literal["classification", "segmentation"]
    model: dict[str, Any]
    seed: int = 0
    out_dir: str | None = None
    data: EstimateData = field(default_factory=EstimateData)
    layout: LayoutSpec | None = None
    ntk: NTKSettings = field(default_factory=NTKSettings)
    sweep: SweepSpec | None = None
    threads: int | None = None

    def __post_init__(self):
        if self.sweep is not None and self.sweep.metasurface_hw_m is not None and self.layout is None:
            raise ConfigError("sweep.metasurface_hw_m", self.sweep.metasurface_hw_m,
                              "a layout section too (it turns each size into a kernel count)")
        if self.threads is not None and self.threads < 1:
            raise ConfigError("threads", self.threads, "null or an integer >= 1")


def parse_estimate_config(mapping: dict, base_dir=None) -> EstimateConfig:
    """Validate a mapping into an :class:`EstimateConfig`; relative ``data.root`` and ``out_dir`` are
    resolved against ``base_dir``."""
    cfg = build(EstimateConfig, mapping)
    if base_dir is not None:
        base = Path(base_dir)
        for owner, name in ((cfg.data, "root"), (cfg, "out_dir")):
            value = getattr(owner, name)
            if value is not None and not Path(value).expanduser().is_absolute():
                setattr(owner, name, str((base / Path(value).expanduser()).resolve()))
    return cfg


def load_estimate_config(path, overrides: dict | None = None) -> EstimateConfig:
    """Read an estimate YAML file, set ``overrides`` ``{dotted path: value}`` (as ``hil estimate
    --set``), validate; relative paths are relative to the file's folder."""
    from hil.config import _set_dotted

    mapping = load_yaml(path)
    for dotted, value in (overrides or {}).items():
        _set_dotted(mapping, dotted, value)
    return parse_estimate_config(mapping, base_dir=Path(path).resolve().parent)


@dataclass
class KernelEstimate:
    """One estimate: ``kernels`` (None: infinitely many), the test ``metric`` (fraction: accuracy or
    mean IoU) with ``train_points`` points, its bootstrap ``interval``, the chosen ``regularization``
    (x mean diagonal) and its validation metric, ``seconds`` of computation; with
    ``data.extrapolate_to``, the ``learning_curve`` {points: metric} and the ``extrapolated`` metric
    (and interval) at ``extrapolate_to`` points; ``metasurface_hw_m`` for a size-sweep point."""

    kernels: int | None
    metric: float
    interval: tuple[float, float]
    regularization: float
    val_metric: float
    seconds: float
    train_points: int = 0
    learning_curve: dict[int, float] = field(default_factory=dict)
    extrapolate_to: int | None = None
    extrapolated: float | None = None
    extrapolated_interval: tuple[float, float] | None = None
    metasurface_hw_m: tuple[float, float] | None = None


@dataclass
class EstimateResult:
    """What :func:`estimate` found: the ``estimate`` for the design's kernel count, the ``infinite``
    width one, the ``sweep`` (empty without one), the ``layout`` plan (or None), the metric's name,
    total ``seconds`` and the ``files`` written."""

    task: str
    metric_name: str
    estimate: KernelEstimate
    infinite: KernelEstimate
    sweep: list[KernelEstimate]
    layout: LayoutPlan | None
    seconds: float
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"task": self.task, "metric": self.metric_name, "estimate": dataclasses.asdict(self.estimate),
                "infinite_width": dataclasses.asdict(self.infinite),
                "sweep": [dataclasses.asdict(s) for s in self.sweep],
                "layout": None if self.layout is None else self.layout.to_dict(), "seconds": self.seconds}


def resolve_config(config_or_path) -> EstimateConfig:
    """An :class:`EstimateConfig` from a config object, a plain mapping or a YAML path."""
    if isinstance(config_or_path, EstimateConfig):
        return config_or_path
    if isinstance(config_or_path, dict):
        return parse_estimate_config(config_or_path)
    return load_estimate_config(config_or_path)


def _student_spec(cfg: EstimateConfig):
    """The validated optical-student spec, checked against the task."""
    from hil.models import OpticalStudentSpec

    if cfg.model.get("name") != "optical_student":
        raise ConfigError("model.name", cfg.model.get("name"),
                          "optical_student (the estimate is of an optical student)")
    spec = build(OpticalStudentSpec, cfg.model, "model")
    if spec.frontend != "incoherent_conv":
        raise ConfigError("model.frontend", spec.frontend, "incoherent_conv (free signed kernels; the NTK "
                          "composition is for a linear convolution with independent kernel weights)")
    wanted = {"classification": "fc", "segmentation": "upconv"}[cfg.task]
    if spec.backend != wanted:
        raise ConfigError("model.backend", spec.backend, f"{wanted!r} for task {cfg.task}")
    optics = spec.optics or {}
    if spec.fabrication or (optics.get("sensor") or {}).get("noise", False):
        log.info("the estimate is of the noiseless architecture: model.fabrication and sensor noise are ignored")
    return spec


def _architecture(cfg: EstimateConfig, spec, bank: torch.Tensor | None) -> ArchitectureKernel:
    n = cfg.ntk
    if cfg.task == "classification":
        depth, pool = len(spec.hidden), spec.pool
    else:
        depth, pool = UPCONV_RELU_LAYERS, None
    return ArchitectureKernel(spec.kernel_size, depth, pool, bank=bank, frontend_trained=n.frontend_trained,
                              weight_variance=n.weight_variance, bias_variance=n.bias_variance)


def _bank(cfg: EstimateConfig, kernels: int) -> torch.Tensor:
    """The initial signed kernels (M, C, K, K) of the student with ``kernels`` kernels."""
    from hil.models import build_model

    return build_model({**cfg.model, "num_kernels": kernels}).frontend.design.kernels.detach()


@dataclass
class _Data:
    """Radiance and targets of the regression's points and evaluation images."""

    train_radiance: torch.Tensor  # images holding the training points
    train_points: torch.Tensor | None  # (n, 2) (image, pixel) for segmentation; None: one point per image
    train_targets: torch.Tensor  # (n,)
    val: EvalSet
    test: EvalSet
    num_classes: int


def _load_data(cfg: EstimateConfig, frontend) -> _Data:
    """The data of the config shown through ``frontend``'s display (relative radiance)."""
    from hil.api import split_train_val
    from hil.data import build_datasets

    d = cfg.data
    train_split, test_split, num_classes = build_datasets(dataclasses.asdict(d), cfg.task)
    if test_split is None:
        raise ConfigError("data.dataset", d.dataset, "a dataset with a test split")
    default_val, default_test = DEFAULT_EVAL_IMAGES[cfg.task]
    val_size = default_val if d.val_size is None else d.val_size
    test_size = default_test if d.test_size is None else d.test_size
    classification = cfg.task == "classification"
    train, val = split_train_val(train_split, val_size, d.train_size if classification else None, cfg.seed)
    psf = frontend.fabricated_psfs()

    def radiance(images: torch.Tensor) -> torch.Tensor:
        return torch.cat([frontend.relative_radiance(frontend.gray_levels(images[i:i + 4096]), psf)
                          for i in range(0, len(images), 4096)])

    inputs, targets = train_split.tensors
    test_inputs, test_targets = test_split.tensors
    test_count = len(test_inputs) if test_size is None else min(test_size, len(test_inputs))
    val_set = EvalSet(radiance(inputs[val.indices]), targets[val.indices])
    test_set = EvalSet(radiance(test_inputs[:test_count]), test_targets[:test_count])
    if classification:
        if len(train.indices) < d.train_size:
            raise ConfigError("data.train_size", d.train_size, f"at most the {len(train.indices)} training images "
                              f"left after data.val_size = {val_size}")
        index = torch.as_tensor(train.indices)
        return _Data(radiance(inputs[index]), None, targets[index], val_set, test_set, num_classes)
    generator = torch.Generator().manual_seed(cfg.seed)
    pool = torch.as_tensor(train.indices)
    pixels = inputs.shape[-2] * inputs.shape[-1]
    chosen = pool[torch.randint(len(pool), (d.train_size,), generator=generator)]
    pixel = torch.randint(pixels, (d.train_size,), generator=generator)
    images, image_of_point = torch.unique(chosen, return_inverse=True)
    order = torch.argsort(image_of_point, stable=True)  # points grouped by image
    chosen, pixel, image_of_point = chosen[order], pixel[order], image_of_point[order]
    point_targets = targets[chosen].reshape(d.train_size, -1)[torch.arange(d.train_size), pixel]
    return _Data(radiance(inputs[images]), torch.stack([image_of_point, pixel], 1), point_targets, val_set, test_set, 2)


def _train_features(kernel: ArchitectureKernel, data: _Data, chunk_size: int) -> PointFeatures:
    """Features of the training points: of every image, or of the drawn pixels (segmentation; the
    points are sorted by image, so the chunks of images give them in order)."""
    count = len(data.train_radiance)
    if data.train_points is None:
        return PointFeatures.cat([kernel.features(data.train_radiance[i:i + chunk_size])
                                  for i in range(0, count, chunk_size)])
    pixels = data.train_radiance.shape[-2] * data.train_radiance.shape[-1]
    step = max(1, chunk_size // pixels)
    image, pixel = data.train_points.unbind(1)
    parts = []
    for start in range(0, count, step):
        inside = (image >= start) & (image < start + step)
        features = kernel.features(data.train_radiance[start:start + step])
        parts.append(features.select((image[inside] - start) * pixels + pixel[inside]))
    return PointFeatures.cat(parts)


def _estimate_one(cfg: EstimateConfig, spec, data: _Data, kernels: int | None, progress: bool,
                  metasurface_hw_m=None) -> KernelEstimate:
    """Kernel regression with the NTK of ``kernels`` random kernels (None: infinitely many)."""
    start = time.perf_counter()
    kernel = _architecture(cfg, spec, None if kernels is None else _bank(cfg, kernels))
    n = cfg.ntk
    needed = 2 * 8 * len(data.train_targets) ** 2  # the float64 training kernel and its Cholesky factor
    log.info("estimating %s on %d training points (kernel and factor: %.2f GB)", kernel.describe(),
             len(data.train_targets), needed / 1e9)
    memory = _physical_memory()
    if memory is not None and needed > memory / 2:
        log.warning("the training kernel and its factor need %.1f GB of the machine's %.1f GB: lower "
                    "data.train_size in the estimate YAML (memory grows as its square)", needed / 1e9, memory / 1e9)
    train = _train_features(kernel, data, n.chunk_size)
    result = kernel_regression(kernel, train, data.train_targets, data.val, data.test, cfg.task, data.num_classes,
                               grid=n.regularization, chunk_size=n.chunk_size, bootstrap=n.bootstrap,
                               confidence=n.confidence, seed=cfg.seed, extrapolate_to=cfg.data.extrapolate_to,
                               progress=progress)
    seconds = time.perf_counter() - start
    log.info("%s kernels: %.4f [%.4f, %.4f] in %.0f s", "infinitely many" if kernels is None else kernels,
             result.metric, *result.interval, seconds)
    return KernelEstimate(kernels, result.metric, result.interval, result.regularization, result.val_metric, seconds,
                          result.train_points, result.learning_curve, cfg.data.extrapolate_to, result.extrapolated,
                          result.extrapolated_interval, None if metasurface_hw_m is None else tuple(metasurface_hw_m))


def _physical_memory() -> int | None:
    """Bytes of physical memory, where the OS says (POSIX), else None."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _layout_for(cfg: EstimateConfig, frontend, metasurface_hw_m=None) -> LayoutPlan:
    spec = cfg.layout
    if metasurface_hw_m is not None:
        spec = dataclasses.replace(spec, metasurface_hw_m=tuple(metasurface_hw_m))
    return plan_layout(spec, frontend.layout.tile_shape, frontend.geometry.gap_px)


def plot_estimates(result: EstimateResult, path) -> None:
    """The metric against kernel count (log axis) with bootstrap intervals, the infinite-width estimate
    as a band; saved as PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted({(e.kernels, e.metasurface_hw_m): e for e in [result.estimate, *result.sweep]}.values(),
                    key=lambda e: e.kernels)
    inf = result.infinite
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.axhspan(100 * inf.interval[0], 100 * inf.interval[1], color="tab:grey", alpha=0.25)
    ax.axhline(100 * inf.metric, color="tab:grey", label=f"infinitely many kernels: {100 * inf.metric:.2f} %")
    x = [e.kernels for e in points]
    y = [100 * e.metric for e in points]
    err = [[100 * (e.metric - e.interval[0]) for e in points], [100 * (e.interval[1] - e.metric) for e in points]]
    ax.errorbar(x, y, yerr=err, marker="o", capsize=3,
                label=f"random bank of M kernels, {points[0].train_points} points")
    if inf.extrapolated is not None:
        ax.axhline(100 * inf.extrapolated, color="tab:grey", ls="--",
                   label=f"infinitely many, extrapolated to {inf.extrapolate_to}: {100 * inf.extrapolated:.2f} %")
        ax.errorbar(x, [100 * e.extrapolated for e in points],
                    yerr=[[100 * (e.extrapolated - e.extrapolated_interval[0]) for e in points],
                          [100 * (e.extrapolated_interval[1] - e.extrapolated) for e in points]],
                    marker="s", capsize=3, ls="--", label=f"extrapolated to {inf.extrapolate_to} points")
    for e in points:
        if e.metasurface_hw_m is not None:
            ax.annotate(f"{e.metasurface_hw_m[0] * 1e3:g} x {e.metasurface_hw_m[1] * 1e3:g} mm",
                        (e.kernels, 100 * e.metric), textcoords="offset points", xytext=(0, -14), ha="center",
                        fontsize=7)
    ax.set_xscale("log", base=2)
    ax.set_xticks(x, [str(v) for v in x])
    ax.minorticks_off()
    ax.set(xlabel="kernels M", ylabel=f"estimated test {result.metric_name} (%)",
           title=f"NTK kernel-regression estimate ({result.task}); bars, band: bootstrap intervals")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def estimate(config_or_path, out_dir=None, *, progress: bool = True) -> EstimateResult:
    """Run one estimate job (module docstring); returns its :class:`EstimateResult`.

    ``config_or_path``: an :class:`EstimateConfig`, a plain mapping or a YAML path. ``out_dir``
    (default: the config's ``out_dir``; ``None`` in both: no files) receives ``config.yaml``,
    ``estimate.json``, ``estimate.png`` and, with a layout, ``layout.png``. ``progress``: allow progress
    bars (drawn by the rule of :mod:`onn_core.progress`: on a terminal).
    Raises :class:`~onn_core.errors.ConfigError` naming the field of a bad config.
    """
    from hil.models import build_model

    started = time.perf_counter()
    cfg = resolve_config(config_or_path)
    out = Path(out_dir) if out_dir is not None else (Path(cfg.out_dir) if cfg.out_dir else None)
    threads = torch.get_num_threads()
    try:
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        spec = _student_spec(cfg)
        frontend = build_model(cfg.model).frontend
        plan = _layout_for(cfg, frontend) if cfg.layout is not None else None
        kernels = plan.kernels if plan is not None else spec.num_kernels
        if plan is not None:
            log.info("layout: %d x %d sub-optics hold %d kernels", *plan.grid, plan.kernels)
        data = _load_data(cfg, frontend)
        done: dict[int | None, KernelEstimate] = {}

        def run(count, size=None) -> KernelEstimate:
            if count not in done:
                done[count] = _estimate_one(cfg, spec, data, count, progress, size)
            elif size is not None:
                return dataclasses.replace(done[count], metasurface_hw_m=tuple(size))
            return done[count]

        main = run(kernels, None if plan is None else plan.spec.metasurface_hw_m)
        sweep = []
        if cfg.sweep is not None and cfg.sweep.kernels is not None:
            sweep = [run(m) for m in cfg.sweep.kernels]
        elif cfg.sweep is not None:
            sweep = [run(_layout_for(cfg, frontend, size).kernels, size) for size in cfg.sweep.metasurface_hw_m]
        infinite = run(None)
    finally:
        torch.set_num_threads(threads)
    metric_name = "accuracy" if cfg.task == "classification" else "mIoU"
    result = EstimateResult(cfg.task, metric_name, main, infinite, sweep, plan, time.perf_counter() - started)
    _log_table(result)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg, out / "config.yaml")
        result.files = {"config": str(out / "config.yaml"), "results": str(out / "estimate.json"),
                        "plot": str(out / "estimate.png")}
        plot_estimates(result, out / "estimate.png")
        if plan is not None:
            plot_layout(plan, out / "layout.png")
            result.files["layout"] = str(out / "layout.png")
        with atomic_write(out / "estimate.json", "w") as f:
            json.dump({**result.to_dict(), "config": to_plain(cfg), "files": result.files}, f, indent=2)
    return result


def _log_table(result: EstimateResult) -> None:
    rows = sorted({e.kernels: e for e in [result.estimate, *result.sweep]}.values(), key=lambda e: e.kernels)
    lines = [f"{'kernels':>10} {result.metric_name + ' %':>12} {'interval %':>17} {'lambda':>8} {'extrapolated %':>15}"]
    for e in [*rows, result.infinite]:
        count = "inf" if e.kernels is None else str(e.kernels)
        extra = "" if e.extrapolated is None else f"{100 * e.extrapolated:15.2f}"
        lines.append(f"{count:>10} {100 * e.metric:12.2f} {100 * e.interval[0]:8.2f}-{100 * e.interval[1]:<8.2f} "
                     f"{e.regularization:8.0e} {extra}")
    log.info("NTK estimate (%s):\n%s", result.task, "\n".join(lines))
