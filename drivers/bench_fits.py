"""Does a bench fit an optical system? One check, :func:`check_bench_fits`, and one error,
:class:`BenchMismatch`.

The display must show the optics' images (``image_shape``, colour channels, ``display.bit_depth``,
``geometry.display_pixel_pitch_m``) and the camera's frame must hold the optics' tile layout
(``frame_shape``). The system is duck-typed (anything with those attributes, normally a
:class:`simulator.system.OpticalSystem`), so the drivers need not import the simulator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from onn_core.errors import ConfigError, HilError


@dataclass(frozen=True)
class Mismatch:
    """One contradiction between the bench and the optics.

    Attributes
    ----------
    bench_field, optics_field : str
        The bench's setting (``"slm.shape"``) and the optics' (``"image_shape"``, relative to the
        optics mapping) that disagree.
    bench_value, optics_value
        Their values.
    text : str
        The contradiction in words (naming the optics' field with its path).
    """

    bench_field: str
    bench_value: object
    optics_field: str
    optics_value: object
    text: str


class BenchMismatch(ConfigError):
    """The bench and the optical system describe different hardware.

    A :class:`~onn_core.errors.ConfigError` whose ``path``, ``value`` and ``expected`` are those of the
    first contradiction's bench field; ``mismatches`` lists every one (:class:`Mismatch`).
    """

    def __init__(self, mismatches, optics_path: str = "optics"):
        self.mismatches = tuple(mismatches)
        first = self.mismatches[0]
        self.path, self.value = first.bench_field, first.bench_value
        self.expected = f"{optics_path}.{first.optics_field} = {first.optics_value!r}"
        HilError.__init__(self, "the bench does not fit the optics: "
                          + "; ".join(f"{m.bench_field}: {m.text}" for m in self.mismatches))


def _slm_mismatches(slm, system, optics_path: str) -> list[Mismatch]:
    found = []
    shape, image_shape = tuple(slm.shape[:2]), tuple(system.image_shape)
    if shape != image_shape:
        found.append(Mismatch("slm.shape", list(shape), "image_shape", image_shape,
                              f"the SLM shows {shape} pixels but {optics_path}.image_shape is {image_shape} "
                              f"(the SLM and the optics describe one display)"))
    channels, psf_channels = (slm.shape[2] if len(slm.shape) == 3 else 1), int(system.design.psfs().shape[1])
    if channels != psf_channels:
        found.append(Mismatch("slm.shape", list(slm.shape), "design", psf_channels,
                              f"the SLM has {channels} colour channel(s) but the PSFs of {optics_path}.design "
                              f"have {psf_channels}"))
    bits = system.display.bit_depth
    if slm.bit_depth != bits:
        found.append(Mismatch("slm.bit_depth", slm.bit_depth, "display.bit_depth", bits,
                              f"the SLM has {slm.bit_depth} bits but {optics_path}.display.bit_depth = {bits!r}"))
    pitch = system.geometry.display_pixel_pitch_m
    if not math.isclose(slm.pixel_pitch_m, pitch, rel_tol=1e-9):
        found.append(Mismatch("slm.pixel_pitch_m", slm.pixel_pitch_m, "geometry.display_pixel_pitch_m", pitch,
                              f"the SLM's pixel pitch is {slm.pixel_pitch_m!r} m but "
                              f"{optics_path}.geometry.display_pixel_pitch_m = {pitch!r}"))
    return found


def _camera_mismatches(camera, system, optics_path: str) -> list[Mismatch]:
    shape, frame_shape = tuple(camera.shape), tuple(system.frame_shape)
    if shape == frame_shape:
        return []
    return [Mismatch("camera.shape", list(shape), "frame_shape", frame_shape,
                     f"the camera delivers {shape} frames but the optics' {system.num_psfs} tiles need a "
                     f"{frame_shape} frame (check camera.roi, camera.locate (a location found for another "
                     f"design?) and {optics_path}.geometry: gap_px, psf_margin_px, magnification)")]


def check_slm_fits(slm, system, *, optics_path: str = "optics") -> None:
    """Refuse an SLM that does not show the optics' images (shape, channels, bit depth, pixel pitch).

    Parameters
    ----------
    slm : drivers.slm.SLM
    system : simulator.system.OpticalSystem (duck-typed)
    optics_path : str
        Where the optics are in the config (``"camera.optics"``), to name their fields.

    Raises
    ------
    BenchMismatch
        Naming every contradiction.
    """
    found = _slm_mismatches(slm, system, optics_path)
    if found:
        raise BenchMismatch(found, optics_path)


def check_bench_fits(bench, system, *, optics_path: str = "optics") -> None:
    """Refuse a bench whose SLM does not show the optics' images or whose camera frame does not hold
    their tile layout (module docstring); call it before anything is shown.

    Parameters
    ----------
    bench : drivers.bench.Bench
        Anything with ``slm`` and ``camera``.
    system : simulator.system.OpticalSystem (duck-typed)
    optics_path : str
        Where the optics are in the config, to name their fields.

    Raises
    ------
    BenchMismatch
        Naming every contradiction.
    """
    found = _slm_mismatches(bench.slm, system, optics_path) + _camera_mismatches(bench.camera, system, optics_path)
    if found:
        raise BenchMismatch(found, optics_path)


__all__ = ["BenchMismatch", "Mismatch", "check_bench_fits", "check_slm_fits"]
