"""`hil run`, issue 21: the capture exposure chosen from the calibration and the refusal of a clipped
capture, the teacher check, and the design_ft control trained with the methods' own recipe."""

import json

import pytest
import torch

from hil.checkpoint import save_checkpoint
from hil.job import ClippedCaptureError, read_state, run_job
from hil.job.controls import teacher_check

from .test_run import SHIFTED, student_run, write_job  # noqa: F401 (student_run: the module's fixture)

BRIGHT = {"num_psfs": 4, "errors": {"brightness": [2.5, 2.5, 2.5, 2.5]}}


def test_a_bright_device_gets_a_shorter_exposure_and_no_clipped_pixels(tmp_path, student_run):
    """The same design fabricated 2.5x brighter: the exposure chosen from its calibration is shorter by
    about that factor, and neither capture holds a clipped pixel."""
    exposures = {}
    for name, errors in (("plain", None), ("bright", BRIGHT)):
        folder = tmp_path / name
        folder.mkdir()
        job = write_job(folder, student_run, errors=errors)
        run_job(job, progress=False, until="capture")
        capture = json.loads((job.run_dir / "capture.json").read_text())
        exposures[name] = capture["exposure"]["exposure_s"]
        assert capture["exposure"]["chosen"] == "auto"
        for split in ("train", "val", "test"):
            assert capture[split]["clipped_pixel_fraction"] == 0.0, (name, split, capture[split])
            assert capture[split]["clipped_frame_fraction"] == 0.0
    assert 1.8 < exposures["plain"] / exposures["bright"] < 3.5, exposures


def test_a_clipped_capture_is_refused_the_file_kept_and_a_shorter_exposure_runs_afresh(tmp_path, student_run):
    """A fixed exposure far too long: the training capture is refused naming the fields to change, the
    file stays; with the exposure chosen instead, the capture runs again (the clipped file moved into
    stale/) and passes."""
    job = write_job(tmp_path, student_run, capture={"fractions": [0.2, 0.4], "test_size": 300, "exposure_s": 0.5})
    with pytest.raises(ClippedCaptureError, match=r"captures/train.h5: .* clipped .* above "
                                                  r"capture.max_clipped_fraction = 0.001\. The file is kept.*"
                                                  r"capture.exposure_s"):
        run_job(job, progress=False)
    assert (job.run_dir / "captures" / "train.h5").is_file()
    assert "capture" not in read_state(job.run_dir)["finished"]
    job = write_job(tmp_path, student_run, capture={"fractions": [0.2, 0.4], "test_size": 300, "exposure_s": None})
    run_job(job, progress=False, until="capture")
    capture = json.loads((job.run_dir / "capture.json").read_text())
    assert capture["exposure"]["exposure_s"] < 0.5 and capture["train"]["clipped_pixel_fraction"] <= 0.001
    assert list((job.run_dir / "stale").glob("*/captures/train.h5"))


def test_teacher_check_wants_the_margin_above_the_design(tmp_path, student_run):
    """A teacher equal to the design is refused; one 10 points above it passes; 2 points is too few."""
    _, student, (_, test) = student_run
    job = write_job(tmp_path, student_run)
    images = test.tensors[0]
    same = teacher_check(job, student, student, images, test.tensors[1])
    assert same["teacher"] == same["design"] and not same["usable"] and same["margin"] == 0.03
    with torch.no_grad():
        predicted = student(images).argmax(1)

    class Predicting(torch.nn.Module):  # a teacher predicting the given labels (for one batch)
        def __init__(self, labels):
            super().__init__()
            self.logits = torch.nn.functional.one_hot(labels, 4).float()

        def forward(self, x):
            return self.logits[:len(x)]

    labels = predicted.clone()
    labels[:len(labels) // 10] = (labels[:len(labels) // 10] + 1) % 4  # the design is right on 90 % of them
    strong = teacher_check(job, student, Predicting(labels), images, labels)
    assert strong["teacher"] == 1.0 and strong["design"] == pytest.approx(0.9, abs=0.01) and strong["usable"]
    slightly = labels.clone()
    slightly[-len(labels) // 12:] = (slightly[-len(labels) // 12:] + 1) % 4  # the teacher wrong on 8 %
    check = teacher_check(job, student, Predicting(slightly), images, labels)
    assert check["teacher"] - check["design"] < 0.03 and not check["usable"], check


def test_weak_teacher_leaves_ntkd_out_and_design_ft_has_the_methods_recipe(tmp_path, student_run):
    """An untrained LeNet teacher: ntkd is not trained nor reported, the summary says why; design_ft ran
    the recipe of e2e and e2e_nominal (same images, steps, lr, batch size, seed); recovered fractions are
    against design_ft; perfect_fabrication is reported; one seed shows no ± spread."""
    from hil.models import build_model

    teacher_cfg = {"name": "lenet", "image_size": 12, "num_classes": 4}
    checkpoint = tmp_path / "teacher.pt"
    save_checkpoint(checkpoint, {"model": build_model(teacher_cfg).state_dict(), "config": {"model": teacher_cfg}})
    job = write_job(tmp_path, student_run, errors=SHIFTED, methods=("e2e", "ntkd", "e2e_nominal"), steps=30,
                    teacher={"checkpoint": str(checkpoint)})
    summary = run_job(job, progress=False).read_text()
    runs = json.loads((job.run_dir / "finetune.json").read_text())
    assert set(runs) == {"design_ft", "e2e", "e2e_nominal"}
    recipe = ("images", "steps", "lr", "batch_size", "seed", "captured", "synthetic")
    for key in ("0.2", "0.4"):
        control = runs["design_ft"][key][0]
        for method in ("e2e", "e2e_nominal"):
            assert {k: runs[method][key][0][k] for k in recipe} == {k: control[k] for k in recipe}
        assert control["best_val_accuracy"] is not None
    assert runs["design_ft"]["0.2"][0]["images"] != runs["design_ft"]["0.4"][0]["images"]
    evaluation = json.loads((job.run_dir / "evaluation.json").read_text())
    assert not evaluation["teacher"]["usable"] and set(evaluation["left_out"]) == {"ntkd"}
    assert set(evaluation["by_fraction"]) == {"e2e", "e2e_nominal"}
    for key, entry in evaluation["by_fraction"]["e2e"].items():
        control = evaluation["design_ft"][key]["mean"]
        expected = (entry["mean"] - evaluation["uncompensated"]) / (control - evaluation["uncompensated"])
        assert entry["recovered_fraction"] == pytest.approx(expected) and entry["std"] is None
    assert evaluation["perfect_fabrication"] > evaluation["uncompensated"] + 0.1, evaluation
    assert "ntkd are left out" in summary and "± 0.00" not in summary and "design_ft control" in summary
