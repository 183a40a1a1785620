"""The ``device`` of ``hil run`` and ``hil calibrate`` (issue 18): ``auto`` | ``cpu`` | ``cuda``; CUDA asked
for where there is none refused naming the field; on a CUDA machine (``-m gpu``) fine-tuning and the
synthetic captures' rendering there give what the CPU gives."""

from pathlib import Path

import pytest
import torch
import yaml

from calibration.api import CalibrationConfig
from hil.cli import main
from hil.job import load_job
from hil.job.config import job_device, training_config
from onn_core.errors import ConfigError
from simulator.device import resolve_device
from tests.hil.test_run import MODEL

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_auto_cpu_and_cuda_resolve(monkeypatch, no_cuda):
    assert resolve_device("auto") == torch.device("cpu") == resolve_device("cpu")
    with pytest.raises(ConfigError, match=r"'device' = 'cuda': expected 'cpu' or 'auto' \(no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match=r"'calibration.device' = 'gpu': expected 'auto', 'cpu', 'cuda' or 'cuda:N'"):
        resolve_device("gpu", "calibration.device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda") == resolve_device("cuda")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ConfigError, match="a CUDA device index below 1"):
        resolve_device("cuda:1")


def _job(tmp_path, **fields):
    (tmp_path / "student.yaml").write_text(yaml.safe_dump({"task": "classification", "model": MODEL}))
    (tmp_path / "job.yaml").write_text(yaml.safe_dump({"out_dir": "run", "bench": "bench.yaml",
                                                       "student": {"config": "student.yaml"},
                                                       "finetune": {"methods": ["e2e"]}, **fields}))
    return load_job(tmp_path / "job.yaml")


def test_the_job_device_trains_its_models_and_cuda_is_refused_without_it(tmp_path, no_cuda):
    assert job_device(_job(tmp_path)) == torch.device("cpu")  # the default
    assert training_config(_job(tmp_path, device="auto"), "student").train.device == "cpu"
    with pytest.raises(ConfigError, match="'device' = 'gpu'"):
        _job(tmp_path, device="gpu")
    job = _job(tmp_path, device="cuda")
    with pytest.raises(ConfigError, match=r"'device' = 'cuda': expected 'cpu' or 'auto' \(no CUDA device"):
        training_config(job, "student")


def test_hil_calibrate_takes_a_device(tmp_path, no_cuda, capsys):
    assert CalibrationConfig.from_dict({"device": "auto"}).device == "auto"
    with pytest.raises(ConfigError, match="'calibration.device' = 'tpu'"):
        CalibrationConfig.from_dict({"device": "tpu"})
    config = yaml.safe_load((EXAMPLES / "calibrate_sim.yaml").read_text())
    config = {**config, "bench": str(EXAMPLES / config["bench"]), "optics": str(EXAMPLES / config["optics"])}
    (tmp_path / "calibrate.yaml").write_text(yaml.safe_dump(config))
    assert main(["calibrate", str(tmp_path / "calibrate.yaml"), "--out", str(tmp_path / "out"), "--device", "cuda"]) == 2
    assert "'calibration.device' = 'cuda': expected 'cpu' or 'auto'" in capsys.readouterr().err
    assert not (tmp_path / "out" / "calibration.h5").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_finetuning_and_synthetic_rendering_on_cuda_match_the_cpu():
    from hil.finetune import CapturedSet, finetune
    from hil.models import build_model

    torch.manual_seed(0)
    student = build_model(MODEL).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        features = student.frontend(torch.rand(128, 1, MODEL["image_size"], MODEL["image_size"], generator=gen))
    data = CapturedSet(features, torch.randint(0, 4, (128,), generator=gen), torch.arange(128))
    results = {}
    for device in ("cpu", "cuda"):
        backend, result = finetune(student, data, lr=1e-2, batch_size=32, max_steps=12, seed=0, device=device)
        assert next(backend.parameters()).device.type == "cpu"
        results[device] = backend.state_dict(), result.steps
    assert results["cuda"][1] == results["cpu"][1] == 12
    for name, value in results["cpu"][0].items():
        torch.testing.assert_close(results["cuda"][0][name], value, rtol=1e-3, atol=1e-3)
