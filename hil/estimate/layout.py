"""How many kernels a metasurface holds, and where their images land on the sensor (docs/method.md#layout).

Square sub-optics of side ``kernel_pitch_m``, ``spacing_m`` apart (fabrication spacing), fill a
``grid_rows x grid_cols`` grid on the metasurface (:func:`simulator.layout.kernel_grid`). A signed
kernel takes two sub-optics (``k+`` and ``k-``, docs/method.md#signed-kernels-as-psf-pairs), so
``floor(rows cols / 2)`` kernels; an unsigned design one each. Every sub-optic images the scene onto its own tile of the sensor; the tiles
mirror the sub-optic grid (:class:`simulator.layout.TileLayout`, tile ``i`` under sub-optic ``i``,
row-major) and every tile must land on the sensor: the grid's frame must fit in ``sensor_shape_px``.
The tile size is the optical system's (the blurred image, ``H s + K' - 1`` pixels, see
:mod:`simulator.system`), and so is the gap between tiles, unless the layout section sets them.
"""

from __future__ import annotations

from dataclasses import dataclass

from onn_core.errors import ConfigError
from simulator.layout import TileLayout, kernel_grid


@dataclass
class LayoutSpec:
    """The ``layout:`` section of an estimate config.

    Parameters
    ----------
    metasurface_hw_m : (float, float)
        Metasurface height and width (m).
    kernel_pitch_m : float
        Side of one square sub-optic (m).
    spacing_m : float
        Fabrication spacing between neighbouring sub-optics (m).
    signed : bool
        Two sub-optics per signed kernel (``k+``, ``k-``); false: one per (non-negative) kernel.
    sensor_shape_px : (int, int)
        Sensor (rows, cols) in pixels.
    tile_shape_px : (int, int) or None
        One sub-optic's image on the sensor (rows, cols); ``None``: the optical system's tile.
    gap_px : int or None
        Dark pixels between tiles; ``None``: the optics' ``geometry.gap_px``.
    """

    metasurface_hw_m: tuple[float, float]
    kernel_pitch_m: float
    sensor_shape_px: tuple[int, int]
    spacing_m: float = 0.0
    signed: bool = True
    tile_shape_px: tuple[int, int] | None = None
    gap_px: int | None = None

    def __post_init__(self):
        for i, side in enumerate(self.metasurface_hw_m):
            if not side > 0:
                raise ConfigError(f"layout.metasurface_hw_m[{i}]", side, "a length > 0 (m)")
        if not self.kernel_pitch_m > 0:
            raise ConfigError("layout.kernel_pitch_m", self.kernel_pitch_m, "a length > 0 (m)")
        if not self.spacing_m >= 0:
            raise ConfigError("layout.spacing_m", self.spacing_m, "a length >= 0 (m)")
        for name in ("sensor_shape_px", "tile_shape_px"):
            value = getattr(self, name)
            if value is not None and min(value) < 1:
                raise ConfigError(f"layout.{name}", list(value), "two pixel counts >= 1 (rows, cols)")
        if self.gap_px is not None and self.gap_px < 0:
            raise ConfigError("layout.gap_px", self.gap_px, "null or an integer >= 0")


@dataclass(frozen=True)
class LayoutPlan:
    """The kernels a metasurface holds and their tiles on the sensor.

    ``grid`` (rows, cols) of sub-optics; ``kernels`` (signed: ``floor(rows cols / 2)``);
    ``sub_optics_used`` (``2 kernels`` or ``kernels``); ``tiles``: the tile grid on the sensor
    (its ``frame_shape`` is the sensor's); ``spec``: what it was planned from."""

    spec: LayoutSpec
    grid: tuple[int, int]
    kernels: int
    sub_optics_used: int
    tiles: TileLayout

    def to_dict(self) -> dict:
        """Plain summary for results files."""
        rows, cols = self.tiles.grid_rows, self.tiles.grid_cols
        (h, w), g = self.tiles.tile_shape, self.tiles.gap_px
        return {
            "metasurface_hw_m": list(self.spec.metasurface_hw_m), "kernel_pitch_m": self.spec.kernel_pitch_m,
            "spacing_m": self.spec.spacing_m, "signed": self.spec.signed, "grid": list(self.grid),
            "sub_optics": self.grid[0] * self.grid[1], "sub_optics_used": self.sub_optics_used,
            "kernels": self.kernels, "tile_shape_px": [h, w], "gap_px": g,
            "tiles_frame_px": [rows * h + (rows - 1) * g, cols * w + (cols - 1) * g],
            "sensor_shape_px": list(self.tiles.frame_shape),
        }


def plan_layout(spec: LayoutSpec, tile_shape_px: tuple[int, int], gap_px: int) -> LayoutPlan:
    """The layout of ``spec`` with tiles of ``tile_shape_px`` (unless ``spec`` sets one) and
    ``gap_px`` between them (unless ``spec`` sets it).

    Raises
    ------
    ConfigError
        Naming the field: no kernel fits the metasurface (``layout.kernel_pitch_m``), or the tile grid
        does not fit the sensor (``layout.sensor_shape_px``).
    """
    rows, cols = kernel_grid(spec.metasurface_hw_m, spec.kernel_pitch_m, spec.spacing_m)
    per_kernel = 2 if spec.signed else 1
    kernels = rows * cols // per_kernel
    if kernels < 1:
        h, w = (f"{v * 1e3:g} mm" for v in spec.metasurface_hw_m)
        raise ConfigError("layout.kernel_pitch_m", spec.kernel_pitch_m,
                          f"a pitch for which {per_kernel} sub-optic(s) of a "
                          f"{'signed ' if spec.signed else ''}kernel fit on the {h} x {w} metasurface with "
                          f"{spec.spacing_m * 1e3:g} mm spacing (it holds a {rows} x {cols} grid)")
    tile = tuple(spec.tile_shape_px) if spec.tile_shape_px is not None else tuple(tile_shape_px)
    gap = spec.gap_px if spec.gap_px is not None else gap_px
    needed = TileLayout(rows, cols, tile, gap).frame_shape
    sensor = tuple(spec.sensor_shape_px)
    if needed[0] > sensor[0] or needed[1] > sensor[1]:
        raise ConfigError("layout.sensor_shape_px", list(sensor),
                          f"at least {list(needed)} pixels: the {rows} x {cols} sub-optics' tiles of {list(tile)} "
                          f"pixels with {gap}-pixel gaps must all land on the sensor")
    tiles = TileLayout(rows, cols, tile, gap, frame_shape=sensor)
    return LayoutPlan(spec, (rows, cols), kernels, kernels * per_kernel, tiles)


def plot_layout(plan: LayoutPlan, path) -> None:
    """Draw the metasurface's sub-optics (``k+`` / ``k-`` pairs, unused ones hatched) and the tiles on
    the sensor side by side; save as PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    spec, (rows, cols) = plan.spec, plan.grid
    k, d = spec.kernel_pitch_m * 1e3, spec.spacing_m * 1e3
    label = rows * cols <= 64
    fig, (meta, sensor) = plt.subplots(1, 2, figsize=(11, 5))
    height_mm, width_mm = (v * 1e3 for v in spec.metasurface_hw_m)
    meta.add_patch(Rectangle((0, 0), width_mm, height_mm, fill=False, lw=1.5))
    for i in range(rows * cols):
        r, c = divmod(i, cols)
        used = i < plan.sub_optics_used
        sign = (i % 2 if spec.signed else 0) if used else None
        colour = {0: "tab:red", 1: "tab:blue", None: "lightgrey"}[sign]
        meta.add_patch(Rectangle((c * (k + d), r * (k + d)), k, k, color=colour, alpha=0.6,
                                 hatch=None if used else "//"))
        if label and used:
            name = f"k{i // 2 + 1}{'+-'[i % 2]}" if spec.signed else f"k{i + 1}"
            meta.text(c * (k + d) + k / 2, r * (k + d) + k / 2, name, ha="center", va="center", fontsize=7)
    meta.set(xlim=(0, width_mm), ylim=(height_mm, 0), aspect="equal",
             xlabel="mm", ylabel="mm",
             title=f"metasurface: {rows} x {cols} sub-optics, {plan.kernels} {'signed ' if spec.signed else ''}kernels")
    frame = plan.tiles.frame_shape
    sensor.add_patch(Rectangle((0, 0), frame[1], frame[0], fill=False, lw=1.5))
    for i in range(plan.sub_optics_used):
        rs, cs = plan.tiles.tile_slices(i)
        colour = ("tab:red", "tab:blue")[i % 2] if spec.signed else "tab:red"
        sensor.add_patch(Rectangle((cs.start, rs.start), cs.stop - cs.start, rs.stop - rs.start, color=colour,
                                   alpha=0.6))
    sensor.set(xlim=(0, frame[1]), ylim=(frame[0], 0), aspect="equal", xlabel="pixels", ylabel="pixels",
               title=f"sensor {frame[0]} x {frame[1]} px: tiles {plan.tiles.tile_shape[0]} x "
                     f"{plan.tiles.tile_shape[1]} px, gap {plan.tiles.gap_px} px")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
