"""Data-parallel training: 2 CPU processes on gloo give the weights of single-process training on the
same global batches; a rank that diverges or is interrupted stops every rank with it."""

import datetime
import json
import os
import signal
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from hil.checkpoint import load_checkpoint
from hil.losses import TaskObjective
from hil.trainer import Trainer, TrainingDiverged, TrainingInterrupted
from tests.hil.test_trainer import blobs


def build(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(72, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return model, opt


def train(model, opt):
    trainer = Trainer(model, TaskObjective(), blobs(32, 1), val_data=blobs(20, 2),
                      task="classification", num_classes=3, optimizer=opt, batch_size=8, epochs=2, seed=0)
    result = trainer.fit()
    return trainer, result


def worker(rank, world, init_file, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        model, opt = build()
        trainer, result = train(model, opt)
        assert trainer.world_size == world
        if rank == 0:
            torch.save({"model": model.state_dict(), "val_accuracy": result.history[-1]["val_accuracy"]}, out_file)
    finally:
        dist.barrier()  # no rank tears down gloo while the other still talks to it (that aborts a process)
        dist.destroy_process_group()


def test_two_gloo_processes_match_single_process(tmp_path):
    out_file = tmp_path / "ddp.pt"
    mp.spawn(worker, args=(2, str(tmp_path / "init"), str(out_file)), nprocs=2, join=True)
    ddp = torch.load(out_file, weights_only=True)
    model, opt = build()
    _, result = train(model, opt)
    single = model.state_dict()
    for key in single:
        torch.testing.assert_close(ddp["model"][key], single[key], rtol=1e-5, atol=1e-6)
    assert not torch.equal(single["3.weight"], build()[0].state_dict()["3.weight"])  # it did train
    # validation metrics are summed over both processes' halves of the data: same as one process
    assert ddp["val_accuracy"] == result.history[-1]["val_accuracy"]


class DivergesOnRank1:
    """The task loss, made NaN in rank 1 at its ``at``-th step."""

    def __init__(self, at):
        self.at, self.calls, self.task = at, 0, TaskObjective()

    def __call__(self, model, x, y, **kwargs):
        self.calls += 1
        terms = self.task(model, x, y)
        if dist.get_rank() == 1 and self.calls == self.at:
            terms.total = terms.total * float("nan")
        return terms


def interrupt_rank1_at(step):
    def callback(trainer):
        if trainer.rank == 1 and trainer.step == step:
            os.kill(os.getpid(), signal.SIGINT)
    return callback


def failing_worker(rank, world, init_file, out_dir, mode):
    """One process of a run in which only rank 1 diverges (``mode="diverge"``) or gets a SIGINT
    (``"interrupt"``) at step 3; writes what it raised to ``out_dir/rank{rank}.json``."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=30))
    torch.set_num_threads(1)
    try:
        model, opt = build()
        objective = DivergesOnRank1(3) if mode == "diverge" else TaskObjective()
        callbacks = [interrupt_rank1_at(3)] if mode == "interrupt" else []
        trainer = Trainer(model, objective, blobs(32, 1), task="classification", num_classes=3, optimizer=opt,
                          batch_size=8, epochs=2, seed=0, out_dir=out_dir, callbacks=callbacks)
        try:
            trainer.fit()
        except (TrainingDiverged, TrainingInterrupted) as exc:
            outcome = {"error": type(exc).__name__, "message": str(exc), "step": trainer.step}
            (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(outcome))
    finally:
        dist.barrier()  # no rank tears down gloo while the other still talks to it (that aborts a process)
        dist.destroy_process_group()


def test_a_diverging_rank_makes_every_rank_raise(tmp_path):
    """Without agreement, rank 0 would wait in the gradient all-reduce for a rank that raised."""
    mp.spawn(failing_worker, args=(2, str(tmp_path / "init"), str(tmp_path), "diverge"), nprocs=2, join=True)
    outcomes = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [o["error"] for o in outcomes] == ["TrainingDiverged", "TrainingDiverged"]
    assert [o["step"] for o in outcomes] == [2, 2]  # the third step raised before its update
    assert "not in another process" in outcomes[0]["message"] and "became nan at step 3" in outcomes[1]["message"]


def test_an_interrupted_rank_stops_every_rank_after_the_same_step(tmp_path):
    mp.spawn(failing_worker, args=(2, str(tmp_path / "init"), str(tmp_path), "interrupt"), nprocs=2, join=True)
    outcomes = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(o["error"], o["step"]) for o in outcomes] == [("TrainingInterrupted", 3)] * 2
    assert load_checkpoint(tmp_path / "checkpoints/last.pt")["progress"]["step"] == 3  # written by rank 0
