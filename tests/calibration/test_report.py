"""The report a lab reads, read back from what :func:`calibration.report.write_report` writes: report.md
opens with the verdicts (stage order, each with its figure, threshold and next step, then the PSFs where
the model fails), the parameter table after them; the figures are written; the registration figure has
its legend and camera-pixel axes; the PSF figure shares one colour scale per row between measured and
model."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest

from calibration.plotting import PSF_COLUMNS, REGISTRATION_LEGEND, plot_psfs, plot_registration
from calibration.report import write_report
from calibration.verdict import tile_residual_over_noise, verdicts
from tests.calibration.benches import calibrate_on_one_thread

FAST = {"stages": ["geometry", "psf", "fit"], "geometry": {"averages": 2, "phases": 2}, "psf": {"averages": 2},
        "fit": {"stages": ["geometry", "photometry"], "zernike_noll": [4, 5, 6]}}
SPEC = {"shift_std_px": 0.5, "brightness_rel_std": 0.1, "crosstalk": 0.003, "vignetting_tan_edge": 0.1}
DUSTY = 5  # the PSF given a speck of dust the fit cannot model
HELD_OUT = {"point_grid": 1.2, "images": 4.0, "all": 2.5}
PNG = b"\x89PNG\r\n\x1a\n"
UNITS_SHOWN = {"": "", "px": " px", "x noise": "x noise"}  # a verdict's unit as report.md writes it after the value


@pytest.fixture(scope="module")
def calibrated():
    """A calibration (geometry, psf, fit) of a bench with injected errors, measured once on one thread."""
    return calibrate_on_one_thread({"seed": 19, "spec": SPEC}, FAST)[0]


@pytest.fixture(scope="module")
def flawed(calibrated):
    """The same calibration with dust on one PSF's measured tile (a misfit only that PSF shows) and held-out
    frames the model mispredicts (images 4x the noise): every kind of verdict line appears."""
    psf, system = calibrated.psf, calibrated.nominal_system()
    rows, cols = system.layout.tile_slices(DUSTY)
    rate = psf.rate.copy()
    window = np.where(psf.mask[rows, cols])
    r, c = rows.start + window[0][len(window[0]) // 2], cols.start + window[1][len(window[1]) // 2]
    rate[r - 1:r + 2, c - 1:c + 2] += 60 * np.sqrt(psf.variance[r - 1:r + 2, c - 1:c + 2])
    return dataclasses.replace(calibrated, psf=dataclasses.replace(psf, rate=rate),
                               fit=dataclasses.replace(calibrated.fit, holdout_residual_over_noise=HELD_OUT))


@pytest.fixture(scope="module")
def report(flawed, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return write_report(flawed, out), flawed


def sections(text: str) -> list[tuple[str, list[str]]]:
    """report.md as (level-2 heading, its lines) in order."""
    out = []
    for line in text.splitlines():
        if line.startswith("## "):
            out.append((line[3:], []))
        elif out:
            out[-1][1].append(line)
    return out


def table_rows(lines: list[str]) -> list[list[str]]:
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines if line.startswith("|")]
    return rows[2:]  # past the header and its rule


def test_report_md_opens_with_the_verdicts_and_ends_with_the_parameter_table(report):
    files, _ = report
    text = files["markdown"].read_text()
    assert text.splitlines()[0].startswith("# Calibration ")
    order = [heading for heading, _ in sections(text)]
    assert order[0] == "Verdict"
    assert order == ["Verdict", "Geometry", "Mismatch fit", "Figures"]
    assert text.index("| parameter | value | sigma | note |") > text.index("### Where the model fails")


def test_each_stage_verdict_line_carries_its_figure_threshold_and_next_step_in_stage_order(report):
    files, calibration = report
    verdict_section = sections(files["markdown"].read_text())[0][1]
    rows = table_rows(verdict_section)
    graded = [v for v in verdicts(calibration) if not v.subject.startswith("PSF ")]
    assert [row[0] for row in rows] == [v.subject for v in graded] == ["geometry", "psf", "fit", "fit"]
    for row, verdict in zip(rows, graded):
        stage, status, figure, threshold, advice = row
        assert status == f"**{verdict.status}**" and status.strip("*") in ("ok", "check", "failed")
        assert figure.endswith(f"= {verdict.value:.4g}{UNITS_SHOWN[verdict.unit]}")
        assert threshold == verdict.threshold and threshold.startswith("ok ")
        assert advice == (verdict.advice or "nothing to do") and advice
    held_out = rows[3]
    assert held_out[1] == "**check**" and "= 2.5x noise" in held_out[2]
    assert held_out[3] == "ok <= 1.5x noise, check <= 3x noise"
    assert held_out[4].startswith("held out: point grid 1.2x, images 4x. ") and "display response" in held_out[4]
    overall = next(line for line in verdict_section if line.startswith("Overall:"))
    assert overall.startswith("Overall: **")


def test_the_psf_the_model_fails_on_is_named_with_its_figure_threshold_and_advice(report):
    files, calibration = report
    verdict_section = sections(files["markdown"].read_text())[0][1]
    psf_lines = [line for line in verdict_section if line.startswith("- **")]
    assert psf_lines and f"PSF {DUSTY} residual" in psf_lines[0]
    assert re.match(rf"- \*\*(check|failed)\*\*: PSF {DUSTY} residual [0-9.]+x the noise: dust or a missing aberration "
                    r"term, or a kernel error; refit with Zernike 7-11 \(threshold: ok <= 1\.7x, check <= 3x the median",
                    psf_lines[0])
    ratio = tile_residual_over_noise(calibration)
    assert int(np.argmax(ratio)) == DUSTY


def test_the_figures_are_written_and_referenced_and_report_json_holds_the_verdicts(report):
    files, calibration = report
    text = files["markdown"].read_text()
    for name in ("registration", "psfs"):
        assert files[name].read_bytes()[:8] == PNG and files[name].stat().st_size > 10_000
        assert f"![{name}]({files[name].name})" in text
    data = json.loads(files["json"].read_text())
    assert [v["subject"] for v in data["verdicts"]] == [v.subject for v in verdicts(calibration)]
    assert data["verdicts"][3]["figure"] == "held-out residual over noise" and data["verdicts"][3]["unit"] == "x noise"


def test_the_registration_figure_has_a_legend_of_every_mark_and_camera_pixel_axes(calibrated, tmp_path):
    fig = plot_registration(calibrated.geometry, tmp_path / "registration.png")
    assert (tmp_path / "registration.png").read_bytes()[:8] == PNG
    ax = fig.axes[0]
    legend = ax.get_legend()
    assert legend is not None
    labels = [text.get_text() for text in legend.get_texts()]
    assert labels == list(REGISTRATION_LEGEND)
    assert {"expected tile (design layout)", "measured spot (inlier)", "homography-mapped display grid"} <= set(labels)
    assert ax.get_xlabel() == "camera column (px)" and ax.get_ylabel() == "camera row (px)"
    rows, cols = calibrated.geometry.frame_shape
    assert ax.get_xlim() == (-0.5, cols - 0.5) and ax.get_ylim() == (rows - 0.5, -0.5)  # image rows downwards
    # the marks drawn: one circle per measured inlier spot, one + per mapped display dot
    lines = {line.get_marker(): line for line in ax.get_lines()}
    assert len(lines["o"].get_xdata()) == int(calibrated.geometry.inlier_mask.sum())
    assert len(lines["+"].get_xdata()) == calibrated.geometry.num_tiles * len(calibrated.geometry.display_points)


def test_the_psf_figure_shares_one_scale_per_row_for_measured_and_model(calibrated, tmp_path):
    fig = plot_psfs(calibrated, tmp_path / "psfs.png")
    assert (tmp_path / "psfs.png").read_bytes()[:8] == PNG
    panels = [ax for ax in fig.axes if ax.images]
    p = calibrated.nominal_system().num_psfs
    assert len(panels) == p * len(PSF_COLUMNS)
    assert len(fig.axes) == 2 * len(panels)  # a colour bar beside every panel
    grid = np.array(panels, dtype=object).reshape(p, len(PSF_COLUMNS))
    column = {name: j for j, name in enumerate(PSF_COLUMNS)}
    for i in range(p):
        clim = {name: grid[i, j].images[0].get_clim() for name, j in column.items()}
        measured = grid[i, column["measured"]].images[0].get_array()
        model = grid[i, column["calibrated"]].images[0].get_array()
        assert clim["measured"] == clim["calibrated"]
        assert clim["measured"][0] == 0 and clim["measured"][1] == pytest.approx(max(measured.max(), model.max()))
        low, high = clim["residual"]
        assert low == -high and high == pytest.approx(np.abs(grid[i, column["residual"]].images[0].get_array()).max())
        design = grid[i, column["designed"]].images[0].get_array()
        assert clim["designed"] == (0.0, pytest.approx(design.max()))  # its own scale
    titles = [grid[0, j].get_title() for j in range(len(PSF_COLUMNS))]
    assert all("DN/s" in t for t in titles)
    assert "own scale" in titles[column["designed"]] and "symmetric scale" in titles[column["residual"]]
    assert "shared" in titles[column["measured"]] and "shared" in titles[column["calibrated"]]
    assert grid[0, 0].get_ylabel().startswith("PSF 0\nresidual ")


def test_the_parameter_table_notes_each_shift_sampling_systematic(report):
    """Shift sigmas include the sampling systematic (calibration.sampling): the table says how much, and
    the pull to subtract for the misregistration, per shift, and the text above it says what each is; no
    other row carries one."""
    files, calibration = report
    text = files["markdown"].read_text()
    assert "Shift sigmas add the sampling systematic in quadrature" in text
    assert "the physical misregistration is the value less the pull noted beside it" in text
    rows = {row[0]: row for row in table_rows(dict(sections(text))["Mismatch fit"])}
    for p in calibration.fit.parameters:
        expected = (f"sampling systematic {p.systematic:.2g}, pull {p.sampling_pull:+.2g}"
                    if p.kind == "shift_px" and p.identifiable else None)
        assert p.systematic > 0 if p.kind == "shift_px" else p.systematic == 0.0
        if expected:
            assert rows[p.name][3] == expected
        else:
            assert "sampling" not in rows[p.name][3]


def test_after_a_residual_stage_the_table_points_from_brightness_and_crosstalk_to_throughput(calibrated, tmp_path):
    """The frames determine each tile's light, not its split into brightness, crosstalk and kernel error
    (the prior's after a residual stage): the text says so and those rows point to the throughput rows."""
    fit = calibrated.fit
    throughput = [p for p in fit.parameters if p.kind == "throughput"]
    assert len(throughput) == calibrated.nominal_system().num_psfs and all(p.sigma > 0 for p in throughput)
    before = write_report(calibrated, tmp_path / "geometry")["markdown"].read_text()
    residual = dataclasses.replace(fit, settings=dataclasses.replace(fit.settings, stages=(*fit.settings.stages, "residual")),
                                   chi2_reduced={**fit.chi2_reduced, "residual": 1.0}, dof={**fit.dof, "residual": 1e4})
    after = write_report(dataclasses.replace(calibrated, fit=residual), tmp_path / "residual")["markdown"].read_text()
    assert "Light: the frames determine how much light each tile receives" not in before
    assert "Light: the frames determine how much light each tile receives" in after
    for text, shared in ((before, False), (after, True)):
        rows = {row[0]: row for row in table_rows(dict(sections(text))["Mismatch fit"])}
        for p in fit.parameters:
            if p.kind in ("brightness", "crosstalk"):
                assert (rows[p.name][3] == "light shared with the kernel error by its prior: read throughput") == shared
            if p.kind == "throughput":
                assert rows[p.name][3] == "derived: tile light over the design's"
