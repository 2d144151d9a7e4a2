"""Training configs from TOML files: per-head defaults, a user's file, then flags.

Precedence, lowest first (torchtune's rule: files give defaults, flags win):

1. :class:`heads.config.TrainConfig`'s field defaults;
2. ``heads/configs/<head>.toml``: the head's defaults from its paper (features, sampling plan,
   window length, learning rate, ...);
3. that file's ``[datasets.<dataset>]`` table, for runs on that dataset only (e.g. vis4mer's
   CPU-sized ``[datasets.demo]``: the paper's top-level values stay the defaults elsewhere);
4. a user's ``--config FILE.toml`` (and its own ``[datasets.<dataset>]`` table, if any);
5. flags given on the command line (or ``overrides`` in Python).

Every key, at the top level and inside a ``[datasets.<dataset>]`` table, must be a
``TrainConfig`` field (a dataset table may not set ``dataset`` or ``head``); a table
``[head_kwargs]`` (or ``[datasets.<dataset>.head_kwargs]``) holds the head's own arguments,
merged key by key. An unknown key is an error that names the file and lists the valid keys.
The run's dataset is the flags', else the user file's, else ``TrainConfig``'s default.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import replace
from pathlib import Path

from heads.config import TrainConfig

CONFIG_DIR = Path(__file__).parent / "configs"
# The table of per-dataset overrides in a config file: [datasets.<dataset>].
DATASETS_KEY = "datasets"
# Keys a dataset table may not set: they choose which file and table apply.
_NOT_IN_DATASET_TABLE = ("dataset", "head")
# Used when a head has no heads/configs/<head>.toml, or the file leaves a field unset.
FALLBACK_DEFAULTS: dict = {"features": ("resnet18",), "plan": "scene", "window_sec": 0.0}


def head_config_path(head: str) -> Path:
    """``heads/configs/<head>.toml`` (it may not exist: then the head has no file defaults)."""
    return CONFIG_DIR / f"{head}.toml"


def read_toml(path: str | Path) -> dict:
    """A TOML file's content, checked against the ``TrainConfig`` fields.

    Returns:
        The file's values; per-dataset tables, if any, under ``"datasets"``
        (``{dataset: {key: value}}``; see :func:`file_layers`).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not valid TOML, or holds a key that is not a ``TrainConfig``
            field, at the top level or in a ``[datasets.<dataset>]`` table (the message names
            the file and the table, and lists the valid keys).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        values = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"config file {path} is not valid TOML: {err}") from err
    sections = values.get(DATASETS_KEY, {})
    if not isinstance(sections, dict) or not all(isinstance(v, dict) for v in sections.values()):
        raise ValueError(f"config file {path}: `{DATASETS_KEY}` must hold tables "
                         f"[{DATASETS_KEY}.<dataset>] of TrainConfig keys")
    check_keys({k: v for k, v in values.items() if k != DATASETS_KEY},
               source=f"config file {path}")
    for name, section in sections.items():
        source = f"config file {path}, table [{DATASETS_KEY}.{name}]"
        check_keys(section, source=source)
        fixed = sorted(set(section) & set(_NOT_IN_DATASET_TABLE))
        if fixed:
            raise ValueError(f"{source}: {', '.join(fixed)} cannot be set per dataset")
    return values


def file_layers(path: str | Path, values: dict, dataset: str | None) -> list[tuple[str, dict]]:
    """A config file's values as layers to merge, lowest first: its top-level keys, then its
    ``[datasets.<dataset>]`` table when it has one for ``dataset``.

    Args:
        path: The file (names the layers: ``FILE`` and ``FILE [datasets.<dataset>]``).
        values: Its content, from :func:`read_toml`.
        dataset: The run's dataset; None applies no dataset table.

    Returns:
        ``[(source, values), ...]``.
    """
    layers = [(str(path), {k: v for k, v in values.items() if k != DATASETS_KEY})]
    section = values.get(DATASETS_KEY, {}).get(dataset) if dataset is not None else None
    if section is not None:
        layers.append((f"{path} [{DATASETS_KEY}.{dataset}]", section))
    return layers


def merge_layers(layers: list[tuple[str, dict]]) -> dict:
    """The layers' values merged in order (later wins; ``head_kwargs`` merged key by key)."""
    merged: dict = {}
    for _, values in layers:
        for key, value in values.items():
            if key == "head_kwargs":
                merged["head_kwargs"] = {**merged.get("head_kwargs", {}), **value}
            else:
                merged[key] = value
    return merged


def head_file_values(head: str, dataset: str | None = None) -> dict:
    """``heads/configs/<head>.toml``'s values with its ``[datasets.<dataset>]`` table applied
    (``{}`` when the head has no file)."""
    path = head_config_path(head)
    if not path.is_file():
        return {}
    return merge_layers(file_layers(path, read_toml(path), dataset))


def head_defaults(head: str, dataset: str | None = None) -> dict:
    """The head's file defaults (``heads/configs/<head>.toml``, with its
    ``[datasets.<dataset>]`` table when it has one), over :data:`FALLBACK_DEFAULTS`."""
    return {**FALLBACK_DEFAULTS, **head_file_values(head, dataset)}


def resolve_config(config: TrainConfig) -> TrainConfig:
    """``config`` with the defaults that depend on other fields (the head's file) filled in:
    ``data_root``, ``features``, ``plan`` and ``window_sec``."""
    from catalogs import default_root  # polars: not at import, so that --help stays instant

    defaults = head_defaults(config.head, config.dataset)
    return replace(
        config,
        data_root=config.data_root or default_root(
            config.dataset, (config.catalog_options or {}).get("variant")),
        features=config.features or tuple(defaults["features"]),
        plan=config.plan or defaults["plan"],
        window_sec=float(
            defaults["window_sec"] if config.window_sec is None else config.window_sec
        ),
    )


def check_keys(values: dict, *, source: str) -> None:
    """Raise ``ValueError`` naming ``source`` when ``values`` has a key that is not a
    ``TrainConfig`` field."""
    valid = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise ValueError(
            f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(valid))}"
        )


def build_config(overrides: dict, *, config_file: str | Path | None = None):
    """A :class:`heads.config.TrainConfig` from the head's file, a user file and ``overrides``.

    Args:
        overrides: Values given explicitly (flags); they win over both files. Must hold
            ``task`` unless a file does. ``head_kwargs`` are merged key by key over the files'.
        config_file: Optional user TOML file.

    Returns:
        The config, with ``config_files`` listing the files and dataset tables applied, lowest
        first (for the run directory), e.g. ``(".../vis4mer.toml",
        ".../vis4mer.toml [datasets.demo]")``.

    Raises:
        FileNotFoundError, ValueError: see :func:`read_toml`; also a bad value (from
            ``TrainConfig``'s own checks) or a missing ``task``.
    """
    check_keys(overrides, source="flags")
    user = read_toml(config_file) if config_file is not None else {}
    defaults = TrainConfig.__dataclass_fields__
    head = overrides.get("head", user.get("head", defaults["head"].default))
    dataset = overrides.get("dataset", user.get("dataset", defaults["dataset"].default))
    head_path = head_config_path(head)
    layers = file_layers(head_path, read_toml(head_path), dataset) if head_path.is_file() else []
    if config_file is not None:
        layers += file_layers(config_file, user, dataset)
    layers.append(("flags", overrides))

    merged = merge_layers(layers)
    if "task" not in merged:
        raise ValueError("no task given: pass --task or set `task` in the config file")
    for key in ("features",):
        if key in merged:
            merged[key] = tuple(merged[key])
    merged["config_files"] = tuple(source for source, _ in layers if source != "flags")
    return TrainConfig(**merged)
