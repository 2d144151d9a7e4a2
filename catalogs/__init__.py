"""Dataset catalogs: videos, splits, tasks and labels (see ``catalogs.base``).

Registry in the timm style: ``@register_catalog("name")`` on a factory, ``get_catalog(name,
**options)`` to build one, ``list_catalogs()`` for the keys (exactly the ``--dataset`` values).
"""

from __future__ import annotations

import importlib
import inspect
from typing import Callable

from catalogs.base import SPLITS, TASK_KINDS, Catalog, Task

_REGISTRY: dict[str, Callable[..., Catalog]] = {}
# Modules that register catalogs; imported lazily so `import catalogs` stays cheap.
_MODULES = (
    "catalogs.folder",
    "catalogs.demo",
    "catalogs.lvu",
    "catalogs.kinetics",
    "catalogs.breakfast",
    "catalogs.coin",
    "catalogs.mmx",
    "catalogs.table",
)


def register_catalog(name: str) -> Callable[[Callable[..., Catalog]], Callable[..., Catalog]]:
    """Decorator registering a catalog factory under ``name``."""

    def wrap(factory: Callable[..., Catalog]) -> Callable[..., Catalog]:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"catalog {name!r} is registered twice")
        _REGISTRY[name] = factory
        return factory

    return wrap


def _load_all() -> None:
    for module in _MODULES:
        importlib.import_module(module)


def list_catalogs() -> list[str]:
    """Registered catalog names, sorted."""
    _load_all()
    return sorted(_REGISTRY)


def default_root(dataset: str, variant: str | None = None) -> str:
    """Where a dataset lives unless ``--data-root`` says otherwise: ``data/<dataset>``, and
    ``data/<dataset>-<variant>`` for a variant other than ``default``, so that building one
    variant (the demo's 8-video ``small``) never replaces another (its 96-video default)."""
    if variant in (None, "", "default"):
        return f"data/{dataset}"
    return f"data/{dataset}-{variant}"


def get_catalog(name: str, **options) -> Catalog:
    """Build the catalog registered as ``name``.

    Args:
        name: Catalog key, e.g. ``demo`` or ``folder``.
        **options: Passed to the factory (``root=...`` and catalog-specific options).

    Raises:
        KeyError: unknown name; the message lists the registered ones.
        ValueError: an option the catalog does not take; the message lists those it takes.
    """
    _load_all()
    if name not in _REGISTRY:
        raise KeyError(f"unknown dataset {name!r}; valid: {', '.join(sorted(_REGISTRY))}")
    factory = _REGISTRY[name]
    accepted = inspect.signature(factory).parameters
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"dataset {name!r} takes no option(s) {', '.join(unknown)}; its options: "
            f"{', '.join(accepted)}; check --catalog-option and the dataset flags"
        )
    return factory(**options)


__all__ = [
    "SPLITS",
    "TASK_KINDS",
    "Catalog",
    "Task",
    "default_root",
    "get_catalog",
    "list_catalogs",
    "register_catalog",
]
