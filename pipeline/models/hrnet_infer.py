"""HRNet landmark inference at the device's pace: one compiled step from uint8 crops to points.

`HRNetRunner` wraps an HRNetW18 for inference: channels_last and bf16 autocast on CUDA, the whole step
(uint8 -> normalised input, the network, the batched heatmap decode on the device, crop-pixel points and
scores) in one function given to torch.compile; on CUDA with fixed shapes (every batch padded to the
batch size) the compile mode is "reduce-overhead", which replays CUDA graphs. Choices are automatic and
logged: batch size from the free device memory (`auto_batch`), compile where it works, else eager with
the reason in the log (a compile failure never fails the run). On the CPU the default is fp32 eager
(compile="yes" compiles there too; the CPU test uses dynamo's "eager" backend, since inductor's C++
compile of the whole network takes many minutes on two shared cores, and a `gpu` test compares inductor
with eager on CUDA).
"""
from __future__ import annotations

import logging
import threading
import weakref

import numpy as np
import torch

from pipeline.models.hrnet import INPUT_SIZE, HRNetW18, decode_heatmaps, preprocess

log = logging.getLogger(__name__)

COMPILE_CHOICES = ("auto", "yes", "no")
MAX_BATCH = 512
BYTES_PER_IMAGE_BF16 = 48 << 20   # measured peak activation memory per 256 px image, bf16 inference, with room


def auto_batch(device: torch.device, requested: int = 0) -> int:
    """The batch size: `requested` when > 0, else from free CUDA memory (a power of two, <= MAX_BATCH); 64 on CPU."""
    if requested > 0:
        return requested
    if device.type != "cuda":
        return 64
    free = torch.cuda.mem_get_info(device)[0]
    batch = 1
    while batch * 2 <= MAX_BATCH and batch * 2 * BYTES_PER_IMAGE_BF16 <= free // 2:
        batch *= 2
    log.info("HRNet batch size %d from %.1f GiB free on %s", batch, free / 2**30, device)
    return batch


class HRNetRunner:
    """uint8 crops -> (points [B, P, 2] in crop pixels, scores [B]) with one compiled device step."""

    _cache: "weakref.WeakKeyDictionary[HRNetW18, dict]" = weakref.WeakKeyDictionary()
    _cache_lock = threading.Lock()

    def __init__(self, model: HRNetW18, device: str | torch.device = "cpu", compile: str = "auto",
                 batch_size: int = 0, bf16: bool | None = None, backend: str = "inductor"):
        if compile not in COMPILE_CHOICES:
            from pipeline.contract.errors import ConfigError
            raise ConfigError(f"HRNet compile setting {compile!r} is not one of {COMPILE_CHOICES}")
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        self.bf16 = cuda if bf16 is None else bf16
        self.batch = auto_batch(self.device, batch_size)
        self.model = model.eval().to(self.device, memory_format=torch.channels_last if cuda else
                                     torch.contiguous_format)
        self.compiled = compile == "yes" or (compile == "auto" and cuda)
        self.mode = "reduce-overhead" if cuda and backend == "inductor" else "default"  # CUDA graphs: fixed shapes
        options = {"mode": self.mode} if backend == "inductor" else {}
        self._step = self._eager_step
        if self.compiled:
            try:
                self._step = torch.compile(self._eager_step, backend=backend, dynamic=False, **options)
            except Exception as error:  # noqa: BLE001 - an unusable compiler: run eager and say why
                self._fall_back(error)

    @classmethod
    def for_model(cls, model: HRNetW18, device, compile: str = "auto", batch_size: int = 0) -> "HRNetRunner":
        """One runner per (model, device, compile, batch) for the model's life: compile once, not per call."""
        key = (str(device), compile, batch_size)
        with cls._cache_lock:
            per_model = cls._cache.setdefault(model, {})
            if key not in per_model:
                per_model[key] = cls(model, device, compile, batch_size)
            return per_model[key]

    def _eager_step(self, crops_u8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 [B, S, S, 3] on the device -> (points [B, P, 2] float32 crop pixels, scores [B])."""
        size = crops_u8.shape[1]
        x = preprocess(crops_u8, crops_u8.device)  # [B, 3, 256, 256]
        if x.is_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            heatmaps = self.model(x)  # [B, P, 64, 64]
        xy, peak = decode_heatmaps(heatmaps.float(), INPUT_SIZE)  # [B, P, 2], [B, P]
        scale = size / INPUT_SIZE
        return xy * scale + 0.5 * scale - 0.5, peak.mean(dim=1)  # [B, P, 2], [B]

    def _run(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.compiled:
            return self._eager_step(batch)
        try:
            points, scores = self._step(batch)
            return points.clone(), scores.clone()  # CUDA-graph outputs are overwritten by the next replay
        except Exception as error:  # noqa: BLE001 - any compiler failure: run eager and say why
            self._fall_back(error)
            return self._eager_step(batch)

    def _fall_back(self, error: Exception) -> None:
        log.warning("torch.compile of the HRNet step failed (%s: %s); running eager",
                    type(error).__name__, str(error).splitlines()[0][:200] if str(error) else "")
        self.compiled, self._step = False, self._eager_step

    @torch.inference_mode()
    def predict(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[N, S, S, 3] uint8 -> ([N, P, 2] float32 points in crop pixels, [N] mean peak scores)."""
        n = len(crops)
        if n == 0:
            return np.zeros((0, self.model.num_points, 2), np.float32), np.zeros(0, np.float32)
        points, scores = [], []
        for start in range(0, n, self.batch):
            chunk = torch.from_numpy(np.ascontiguousarray(crops[start:start + self.batch])).to(self.device)
            real = len(chunk)
            if self.compiled and real < self.batch:  # fixed shapes: pad with copies of the last crop
                chunk = torch.cat([chunk, chunk[-1:].expand(self.batch - real, *chunk.shape[1:])])
            p, s = self._run(chunk)  # [b, P, 2], [b]
            points.append(p[:real])
            scores.append(s[:real])
        return (torch.cat(points).cpu().numpy().astype(np.float32),  # one host copy at the end
                torch.cat(scores).cpu().numpy().astype(np.float32))
