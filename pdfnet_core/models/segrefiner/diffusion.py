"""SegRefiner's discrete diffusion over pixel labels: schedule, one reverse step, the sampling loop.

The state is a binary mask.  The "noise" of the forward process is the coarse mask itself, so the
reverse loop starts at the coarse mask (t=5) and, at every step, lets each pixel take the network's
predicted label with an accumulated probability ``f``; the other pixels go back to the *coarse*
label (not the previous state).  The only randomness is one uniform draw per pixel per non-final step.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence, Union

import numpy as np
import torch

UNetFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]   # (image, mask, t) -> logits
CallProgress = Callable[[int, int], None]   # (UNet calls done, calls planned so far)
NoiseInput = Union[None, int, torch.Generator, Sequence, Callable[[tuple, torch.device], torch.Tensor]]


@dataclass(frozen=True)
class DiffusionSchedule:
    """``betas=linear(start=0.8, stop=0, num_timesteps=6)`` of ``segrefiner_lr.py``.

    ``bc[t]`` is the training-time probability that a pixel shows its true label at step t.  The
    values are numpy float64, as in the official code, and act as Python scalars on float32 tensors.
    """

    start: float = 0.8
    stop: float = 0.0
    num_timesteps: int = 6
    bc: tuple[float, ...] = field(init=False)
    bc_prev: tuple[float, ...] = field(init=False)

    def __post_init__(self) -> None:
        bc = np.linspace(self.start, self.stop, self.num_timesteps)
        object.__setattr__(self, "bc", tuple(float(v) for v in bc))
        object.__setattr__(self, "bc_prev", (1.0,) + tuple(float(v) for v in bc[:-1]))


SCHEDULE = DiffusionSchedule()


class NoiseSource:
    """Supplies the per-step uniform tensors u ~ U[0,1) in call order.

    Built from a seed (a private ``torch.Generator``, so the global RNG is untouched), a generator,
    a callable ``(shape, device) -> tensor``, or a list of tensors / arrays injected for parity with
    an official run (order: per chunk of at most ``batch_max`` items, every non-final step in loop order).
    """

    def __init__(self, noise: NoiseInput = None, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self._queue: Iterator | None = None
        self._fn: Callable[[tuple, torch.device], torch.Tensor] | None = None
        self.drawn = 0
        if noise is None or isinstance(noise, int):
            gen = torch.Generator(device=self.device)
            gen.manual_seed(noise) if noise is not None else gen.seed()
            self._fn = lambda shape, dev: torch.rand(shape, generator=gen, device=dev)
        elif isinstance(noise, torch.Generator):
            self._fn = lambda shape, dev: torch.rand(shape, generator=noise, device=noise.device).to(dev)
        elif callable(noise):
            self._fn = noise
        else:
            self._queue = iter(list(noise))

    def draw(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        self.drawn += 1
        if self._fn is not None:
            u = self._fn(tuple(shape), device)
        else:
            try:
                u = next(self._queue)
            except StopIteration:
                raise ValueError(f"injected noise ran out at draw {self.drawn}: the sampler needs one uniform "
                                 "tensor per non-final step and chunk") from None
        u = torch.as_tensor(u).to(device=device, dtype=torch.float32)
        if tuple(u.shape) != tuple(shape):
            raise ValueError(f"noise tensor {self.drawn} has shape {list(u.shape)}, the state has {list(shape)}")
        return u


class CallMeter:
    """Counts UNet calls against a plan and reports ``progress(done, planned)`` after each one.

    A refinement is a few dozen calls of seconds each on a CPU, so this is where progress is shown and
    where a cancel (an exception raised by ``progress``) stops it.  The plan can grow while a
    refinement runs: HR knows its patch count only after the global pass.
    """

    def __init__(self, progress: CallProgress | None = None) -> None:
        self.progress = progress
        self.done = 0
        self.planned = 0

    def plan(self, calls: int) -> None:
        self.planned += calls

    def counted(self, unet: UNetFn) -> UNetFn:
        if self.progress is None:
            return unet

        def call(image: torch.Tensor, mask: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            out = unet(image, mask, t)
            self.done += 1
            self.progress(self.done, max(self.planned, self.done))
            return out

        return call


def chunk_count(n: int, batch_max: int) -> int:
    return -(-n // max(1, batch_max))


def reverse_step(unet: UNetFn, image: torch.Tensor, x: torch.Tensor, fine: torch.Tensor, t: int,
                 schedule: DiffusionSchedule = SCHEDULE) -> tuple[torch.Tensor, torch.Tensor]:
    """One ``p_sample``: the UNet's logits and the updated accumulated refinement probability."""
    tt = torch.full((x.shape[0],), t, dtype=torch.int64, device=x.device)
    logits = unet(image, x, tt)
    conf = 2 * torch.abs(logits.sigmoid() - 0.5)
    bc, bc_prev = schedule.bc[t], schedule.bc_prev[t]
    # probability of switching from the coarse to the refined label at this step (official formula)
    p_c_to_f = conf * (bc_prev - bc) / (1 - conf * bc)
    return logits, fine + (1 - fine) * p_c_to_f


def sample_loop(unet: UNetFn, image: torch.Tensor, x_last: torch.Tensor, steps: Sequence[int],
                noise: NoiseSource, fine: torch.Tensor | None = None, schedule: DiffusionSchedule = SCHEDULE,
                trace: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``p_sample_loop`` for one chunk: returns (sigmoid of the last step's logits, final f).

    ``x_last`` is the binarised coarse mask [B,1,h,w].  ``trace``, when given, receives one dict per
    step (t, x_in, logits, fine) for step-by-step comparison with a reference run.
    """
    x = x_last
    fine = torch.zeros_like(x_last) if fine is None else fine
    soft = x
    for n, t in enumerate(steps):
        x_in = x
        logits, fine = reverse_step(unet, image, x_in, fine, t, schedule)
        if trace is not None:
            trace.append({"t": t, "x_in": x_in, "logits": logits, "fine": fine})
        if n == len(steps) - 1:
            soft = logits.sigmoid()
        else:
            take = (noise.draw(tuple(x.shape), x.device) < fine).float()
            x = (logits >= 0).float() * take + x_last * (1 - take)
    return soft, fine


def chunked_loop(unet: UNetFn, image: torch.Tensor, x_last: torch.Tensor, steps: Sequence[int],
                 noise: NoiseSource, batch_max: int, fine: torch.Tensor | None = None,
                 trace: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The loop over chunks of at most ``batch_max`` items; each chunk runs all steps before the next."""
    softs, fines = [], []
    for lo in range(0, x_last.shape[0], max(1, batch_max)):
        hi = lo + max(1, batch_max)
        s, f = sample_loop(unet, image[lo:hi], x_last[lo:hi], steps, noise,
                           None if fine is None else fine[lo:hi], trace=trace)
        softs.append(s)
        fines.append(f)
    return torch.cat(softs), torch.cat(fines)
