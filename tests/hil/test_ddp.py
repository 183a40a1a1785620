"""Data-parallel training: 2 CPU processes on gloo give the weights of single-process training on the
same global batches."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from hil.losses import TaskObjective
from hil.trainer import Trainer
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
