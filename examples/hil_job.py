"""A bench script to copy: the hardware-in-the-loop job step by step, with your own code in between.

``hil run examples/run_sim.yaml`` does all of this in one command; this script makes the same calls
(:mod:`hil.job`) one at a time, so that a lab can look at each result, swap a step (its own dataset,
its own calibration, a capture on another day) or stop after any of them. Run it as::

    python examples/hil_job.py [examples/run_sim.yaml] [--out out/hil_job]

Every step writes into the run folder and is skipped when its output is already there, so rerunning
the script continues where it stopped. Ctrl-C is safe at any point: the ``with`` block blanks the SLM
and closes the devices; a capture continues after its last complete frame.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drivers.bench_fits import check_bench_fits  # noqa: E402
from hil import job as job_steps  # noqa: E402
from hil.checkpoint import load_model  # noqa: E402
from hil.job.steps import locate_design  # noqa: E402

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", type=Path, default=HERE / "run_sim.yaml", help="job YAML")
    parser.add_argument("--out", type=Path, default=Path("out/hil_job"), help="run folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    job = job_steps.load_job(args.config, args.out)
    # To use your own data instead of config.data: job.datasets = (train_split, test_split), two
    # TensorDatasets of (image (C, H, W) in [0, 1], label).
    job.run_dir.mkdir(parents=True, exist_ok=True)
    # 0. Check the config, files, dataset, bench file and free disk space before anything runs.
    job_steps.preflight(job, job_steps.STEP_NAMES)

    # 1. The student (and the NTKD teacher): trained in simulation, or an existing `hil train` run.
    models = job_steps.train_models(job)

    # 2. Its optics as a design: design/kernels.npy (what goes to fabrication) + design/optics.yaml.
    design_file = job.run_dir / "design" / "optics.yaml"
    if not design_file.is_file():
        job_steps.export(job, models["student"])
    design, design_id = job_steps.design_identity(design_file)  # the fingerprint goes into every capture file

    # 3. Locate the design's tile grid in the camera frame (as `hil locate`): only when the bench's
    #    camera names a `locate` file that does not exist yet (a camera frame larger than the design's).
    #    It shows test patterns on the camera's own frames and writes the run folder's grid.yaml +
    #    grid.png (a grid not found raises LocateError naming grid.png, which shows what was seen);
    #    locate.json records what was done, or why nothing was (no camera.locate, or its file exists).
    if not (job.run_dir / "locate.json").is_file():
        print(locate_design(job, design_file, design))

    # 4. The bench: on a simulated one, the camera looks through the design with the config's
    #    fabrication errors; a real one is used as configured (bench.yaml records what was opened);
    #    its camera.locate is the run's grid.yaml once step 3 wrote one.
    bench_config = job_steps.bench_config(job, design_file)
    with job_steps.open_job_bench(job, bench_config) as bench:
        check_bench_fits(bench, design)  # the design's image and tiles must fit the SLM and camera

        # 5. Calibrate (calibration.h5: sensor, display, geometry, PSFs, mismatch fit). An existing
        #    file is loaded and checked against this bench instead of being measured again.
        calibration = job_steps.calibrate_bench(job, bench, design)
        print(json.dumps(calibration.summary().get("fit", {}), indent=1, default=str)[:600])

        # 6. Capture the training fractions and the held-out test set (resumable HDF5 files).
        print(job_steps.capture_sets(job, bench, calibration, design_id))

    # 7. Fine-tune the backend with every method; 8. evaluate on the captured test set; 9. report.
    student = load_model(models["student"])
    job_steps.finetune_all(job, student, calibration, design_id, models["teacher"])
    evaluation = job_steps.evaluate(job, student, calibration, design_id)
    summary = job_steps.report(job, evaluation, calibration, {"design_id": design_id, "models": models})
    print(summary.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
