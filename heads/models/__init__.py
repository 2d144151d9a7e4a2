"""Temporal heads: a registry in the timm style.

``@register_head("name")`` on an ``nn.Module`` class, ``create_head(name, in_dim=...,
num_outputs=..., **kwargs)`` to build one, ``list_heads()`` for the keys (exactly the
``heads train --head`` values).

The interface every head follows:

- class attribute ``streams``: names of its input streams, in ``forward`` order (``("tokens",)``
  for a single-stream head, ``("spatial", "temporal")`` for STAN). A head whose class attribute
  ``variadic_streams`` is true accepts any number of streams (one per entry of ``in_dim``).
- ``__init__(*, in_dim, num_outputs, **kwargs)``: ``in_dim`` is D (an int) or one D_i per stream.
- optional class attribute ``uses_task_kind``: when true, :func:`create_head` passes the task's
  kind (``classification``, ``multilabel`` or ``regression``) as ``task_kind=`` (e.g. STAN's
  distillation picks its loss from it); other heads never see it.
- optional instance attribute ``uses_token_times``: when true, the head takes one more input
  pair after its streams, ``times`` (B, T, 2) float [start_sec, end_sec] of the first stream's
  tokens and its mask (see :func:`heads.windows.with_token_times`; VTN's positions are frame
  indices in the video); its class attribute ``without_token_times`` names the keyword
  arguments that turn it off (end-to-end batches carry no times).
- ``forward(x_0, mask_0, x_1, mask_1, ...)``: per stream ``x_i`` (B, T_i, D_i) float and ``mask_i``
  (B, T_i) bool, True at real tokens and False at padding; returns (B, K) logits or (B, 1)
  regression outputs. Padded positions never change the output.
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Sequence
from typing import Callable

_REGISTRY: dict[str, type] = {}
# Modules that register heads; imported on first use so `import heads.models` does not pull torch.
_MODULES = (
    "heads.models.mean",
    "heads.models.stan",
    "heads.models.lstm",
    "heads.models.temporal_transformer",
    "heads.models.longformer",
    "heads.models.vis4mer",
    "heads.models.lst",
    "heads.models.stat_cached",
)
# Names that are not cached-feature heads (any longer): what to use instead.
_NOT_HEADS = {
    "stat": "head 'stat' is the paper's STAT, a video transformer trained from pixels: run it "
            "with `heads finetune --preset stat` (or `heads train --end-to-end --head stat`); "
            "the head over cached patch tokens is now 'stat_cached' (--head stat_cached)",
}


def register_head(name: str) -> Callable[[type], type]:
    """Class decorator registering a head under ``name`` (the ``--head`` value).

    Raises:
        ValueError: another class is already registered under ``name``.
    """

    def wrap(cls: type) -> type:
        existing = _REGISTRY.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"head {name!r} is registered twice ({existing} and {cls})")
        if not getattr(cls, "streams", None):
            raise ValueError(f"head {name!r}: class {cls.__name__} needs a `streams` attribute")
        _REGISTRY[name] = cls
        return cls

    return wrap


def _load_all() -> None:
    for module in _MODULES:
        importlib.import_module(module)


def list_heads(pattern: str = "*") -> list[str]:
    """Registered head names matching the shell-style ``pattern``, sorted."""
    _load_all()
    return sorted(name for name in _REGISTRY if fnmatch.fnmatch(name, pattern))


def get_head_class(name: str) -> type:
    """The class registered as ``name``.

    Raises:
        KeyError: unknown name; the message lists the registered ones (or, for ``stat``, says
            where the paper's STAT and the cached head are).
    """
    _load_all()
    if name in _NOT_HEADS and name not in _REGISTRY:
        raise KeyError(_NOT_HEADS[name])
    if name not in _REGISTRY:
        raise KeyError(f"unknown head {name!r}; valid heads: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def stream_dims(name: str, in_dim: int | Sequence[int], num_streams: int) -> tuple[int, ...]:
    """``in_dim`` as one int per stream, checked against the stream count a head expects.

    Args:
        name: Head name, for the error message.
        in_dim: D for every stream, or one D_i per stream.
        num_streams: Number of streams the head was built for.

    Raises:
        ValueError: ``in_dim`` has the wrong number of entries or a non-positive entry.
    """
    dims = (in_dim,) * num_streams if isinstance(in_dim, int) else tuple(int(d) for d in in_dim)
    if len(dims) != num_streams:
        raise ValueError(
            f"head {name!r} takes {num_streams} stream(s) but in_dim has {len(dims)}: {dims}"
        )
    if any(d <= 0 for d in dims):
        raise ValueError(f"head {name!r}: in_dim must be positive, got {dims}")
    return dims


def num_streams_for(name: str, num_features: int) -> int:
    """How many streams head ``name`` takes when given ``num_features`` feature sets.

    Raises:
        KeyError: unknown head.
        ValueError: the head takes a fixed number of streams different from ``num_features``.
    """
    cls = get_head_class(name)
    if getattr(cls, "variadic_streams", False):
        if num_features < 1:
            raise ValueError(f"head {name!r} needs at least one feature set")
        return num_features
    expected = len(cls.streams)
    if num_features != expected:
        raise ValueError(
            f"head {name!r} takes {expected} feature set(s) (streams: {', '.join(cls.streams)}), "
            f"got {num_features}; pass --features once per stream, in that order"
        )
    return expected


def create_head(
    name: str,
    *,
    in_dim: int | Sequence[int],
    num_outputs: int,
    task_kind: str | None = None,
    **kwargs,
):
    """Build the head registered as ``name``.

    Args:
        name: Registry key, e.g. ``stan`` or ``mean``.
        in_dim: Feature dim D, or one D_i per stream (multi-stream heads).
        num_outputs: K classes, or 1 for regression.
        task_kind: The task's kind (``classification``, ``multilabel``, ``regression``), passed
            on as ``task_kind=`` to heads whose class sets ``uses_task_kind``, unless ``kwargs``
            already holds one; ignored by the others. None passes nothing.
        **kwargs: Head-specific keyword arguments (``d_model``, ``dropout``, ...).

    Returns:
        The ``nn.Module``.

    Raises:
        KeyError: unknown name; the message lists the valid names.
    """
    cls = get_head_class(name)
    if task_kind is not None and getattr(cls, "uses_task_kind", False):
        kwargs.setdefault("task_kind", task_kind)
    return cls(in_dim=in_dim, num_outputs=num_outputs, **kwargs)


__all__ = [
    "create_head",
    "get_head_class",
    "list_heads",
    "num_streams_for",
    "register_head",
    "stream_dims",
]
