"""Where and how a run computes: its device, its arithmetic, its random numbers.

One vocabulary for every ``heads`` command (``train``, ``eval``, ``predict``, ``finetune``,
``sweep``):

- ``--device``: ``auto`` (the default: the first CUDA GPU torch sees, else the CPU), ``cpu``,
  ``cuda`` or ``cuda:N``; :func:`resolve_device` says in one line which it took and why;
- ``--precision``: ``auto`` (bf16 autocast on a CUDA GPU that has bf16, else fp32), ``fp32``
  (no autocast), ``bf16``, ``fp16`` (autocast with a loss scaler); :func:`mixed_precision`;
- seeding and the RNG states a checkpoint resumes from: :func:`seed_everything`,
  :func:`rng_state`, :func:`set_rng_state`.

No paper states a precision; bf16 autocast keeps fp32 weights and optimiser states (the
papers' heads train in fp32), so a head's numbers stay comparable while a GPU step runs on its
tensor cores. ``pipeline extract --precision`` names the backbones' arithmetic with the same
words (fp16 excepted: features are stored as float16 either way, see
:mod:`pipeline.backbones`).
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Callable
from functools import partial

import numpy as np
import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICE_HELP = "auto (a CUDA GPU when torch sees one, else the CPU), cpu, cuda or cuda:N"
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device_name(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is a ``--device`` value (:data:`DEVICE_HELP`)."""
    if not isinstance(name, str) or not _DEVICE.match(name):
        raise ValueError(f"--device must be {DEVICE_HELP}, got {name!r}")


def check_precision_name(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is one of :data:`PRECISIONS`."""
    if name not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {name!r}")


def resolve_device(name: str, *, log: Callable[[str], None] | None = None) -> torch.device:
    """The ``torch.device`` of a ``--device`` value, checked against what torch sees.

    Args:
        name: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        log: Where the one line saying which device was taken goes (e.g. ``device: cpu (auto:
            torch sees no CUDA GPU)``); None says nothing.

    Raises:
        ValueError: not a device name; ``cuda`` where torch sees no GPU; ``cuda:N`` past the
            GPUs torch sees (the message names the count and the fix).
    """
    check_device_name(name)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if name == "auto":
        device = torch.device("cuda", torch.cuda.current_device()) if count else \
            torch.device("cpu")
        why = "auto: torch sees no CUDA GPU" if not count else f"auto: {count} CUDA GPU(s) seen"
    else:
        device = torch.device(name)
        why = "--device"
        if device.type == "cuda" and not count:
            raise ValueError(f"--device {name}: torch sees no CUDA GPU here "
                             "(torch.cuda.is_available() is False); use --device cpu, or "
                             "--device auto to take a GPU only where there is one")
        if device.type == "cuda" and device.index is not None and device.index >= count:
            raise ValueError(f"--device {name}: torch sees {count} CUDA GPU(s) (cuda:0 .. "
                             f"cuda:{count - 1}); pick one of them or --device auto")
    if log is not None:
        gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
        log(f"device: {device}{gpu} ({why})")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``--precision`` on ``device``; None means fp32 (no autocast).

    ``auto`` is bf16 on a CUDA GPU that supports it, else fp32 (fp16 autocast needs a loss
    scaler and overflows where bf16 does not, so it is taken only when asked for).

    Raises:
        ValueError: not one of :data:`PRECISIONS`.
    """
    check_precision_name(precision)
    if precision == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        precision = "bf16" if bf16 else "fp32"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast_and_scaler(device: torch.device, dtype: torch.dtype | None):
    """``(autocast, scaler)`` for autocast in ``dtype`` on ``device``; ``dtype=None`` is off.

    Returns:
        ``autocast``: a zero-argument context-manager factory (None when off), ``scaler``: a
        ``torch.amp.GradScaler``, enabled for fp16 only (bf16 needs no loss scaling).
    """
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    if dtype is None:
        return None, scaler
    return partial(torch.autocast, device_type=device.type, dtype=dtype), scaler


def mixed_precision(device: torch.device, precision: str):
    """``(autocast, scaler)`` of ``--precision`` on ``device`` (:func:`autocast_dtype`,
    :func:`autocast_and_scaler`)."""
    return autocast_and_scaler(device, autocast_dtype(precision, device))


def legacy_precision(values: dict) -> dict:
    """A stored config of an earlier version with its ``amp`` flag as ``precision`` (``amp =
    true`` was mixed precision on CUDA: ``auto``; false: ``fp32``), so old runs resume."""
    if "amp" not in values:
        return values
    values = dict(values)
    amp = values.pop("amp")
    values.setdefault("precision", "auto" if amp else "fp32")
    return values


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA) and ask torch for deterministic kernels
    (warning, not failing, where an op has none); same seed, same run on the same machine."""
    # cuBLAS needs this workspace setting to be deterministic; read when CUDA initialises.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def rng_state(generators: dict | None = None) -> dict:
    """The random-number states a resumed run needs to draw what the uninterrupted run would:
    Python's, numpy's global, torch's CPU and CUDA generators, and ``generators`` (name →
    ``torch.Generator`` or ``numpy.random.Generator``, e.g. a loader's shuffling and the
    LVU protocol's window draws). Loadable with ``torch.load(weights_only=True)``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"state": list(random.getstate()[1]), "gauss_next": random.getstate()[2]},
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "generators": {},
    }
    for name, gen in (generators or {}).items():
        if isinstance(gen, torch.Generator):
            state["generators"][name] = gen.get_state()
        else:  # numpy: the bit generator's state as text (its 128-bit ints do not fit a tensor)
            state["generators"][name] = json.dumps(gen.bit_generator.state)
    return state


def set_rng_state(state: dict, generators: dict | None = None) -> None:
    """Restore what :func:`rng_state` captured, into the global generators and ``generators``
    (the same names, the same kinds).

    Raises:
        KeyError: a generator of ``generators`` is not in ``state``.
    """
    version = random.getstate()[0]
    random.setstate((version, tuple(state["python"]["state"]), state["python"]["gauss_next"]))
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, gen in (generators or {}).items():
        saved = state["generators"][name]
        if isinstance(gen, torch.Generator):
            gen.set_state(saved)
        else:
            gen.bit_generator.state = json.loads(saved)
