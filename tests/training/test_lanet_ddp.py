"""LA-Net under DDP (2 CPU processes, gloo): the in-batch KNN sees the gathered batch and every rank ends the
step with the same per-sample targets and memory bank (the engine does not broadcast buffers)."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

NUM_TRAIN, NUM_CLASSES, BATCH = 16, 7, 8
STATE_KEYS = ("lde.targets", "bank.expression_keys", "bank.landmark_keys", "bank.labels", "bank.confident",
              "bank.ids", "bank.pointer", "seen_sample_ids")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from training.methods import DataInfo, StepInfo
        from training.methods.lanet.method import LANet, LANetConfig

        labels = torch.arange(NUM_TRAIN) % NUM_CLASSES
        info = DataInfo(num_classes=NUM_CLASSES, num_train=NUM_TRAIN, class_counts=(3, 3, 2, 2, 2, 2, 2),
                        num_landmarks=68, train_labels=labels, image_size=32)
        torch.manual_seed(0)                                        # same initial weights on both ranks
        method = LANet(LANetConfig(backbone="tiny", bank_size=32, score_hidden=16, projection_hidden=32,
                                   projection_dim=16, k=12), info)
        gen = torch.Generator().manual_seed(100 + rank)             # different data per rank
        index = torch.arange(BATCH) + rank * BATCH
        batch = {"image": torch.randn(BATCH, 3, 32, 32, generator=gen),
                 "image2": torch.randn(BATCH, 3, 32, 32, generator=gen),
                 "label": labels[index], "clean_label": labels[index], "index": index, "sample_id": index + 500,
                 "landmarks": torch.rand(BATCH, 68, 2, generator=gen) * 31}
        out = method.training_step(batch, StepInfo(0, 0, 1, 1))
        out["loss"].backward()
        state = method.state_dict()
        torch.save({k: state[k] for k in STATE_KEYS} | {"loss": out["loss"].detach()}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow   # spawns two processes that import torch: ~10 s CPU, far longer on a loaded machine
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_ranks_share_targets_and_bank_after_a_step(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    first, second = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for key in STATE_KEYS:
        assert torch.equal(first[key], second[key]), key
    one_hot = torch.nn.functional.one_hot(torch.arange(NUM_TRAIN) % NUM_CLASSES, NUM_CLASSES).float()
    changed = (first["lde.targets"] != one_hot).any(dim=1)
    assert bool(changed.all())                                       # both ranks' rows were updated everywhere
    assert first["seen_sample_ids"].tolist() == list(range(500, 500 + NUM_TRAIN))
    assert first["bank.ids"][:NUM_TRAIN].tolist() == list(range(NUM_TRAIN)) and int(first["bank.pointer"]) == 16
    assert torch.isfinite(first["loss"]) and torch.isfinite(second["loss"])
