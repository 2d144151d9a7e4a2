"""Training configs from TOML files: per-head defaults, a user's file, then flags.

Precedence, lowest first (torchtune's rule: files give defaults, flags win):

1. :class:`heads.train.TrainConfig`'s field defaults;
2. ``heads/configs/<head>.toml``: the head's defaults from its paper (features, sampling plan,
   window length, learning rate, ...);
3. a user's ``--config FILE.toml``;
4. flags given on the command line (or ``overrides`` in Python).

Every key must be a ``TrainConfig`` field; a table ``[head_kwargs]`` holds the head's own
arguments. An unknown key is an error that names the file and lists the valid keys.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "configs"


def head_config_path(head: str) -> Path:
    """``heads/configs/<head>.toml`` (it may not exist: then the head has no file defaults)."""
    return CONFIG_DIR / f"{head}.toml"


def read_toml(path: str | Path) -> dict:
    """A TOML file's content, checked against the ``TrainConfig`` fields.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not valid TOML, or holds a key that is not a ``TrainConfig``
            field (the message names the file and lists the valid keys).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        values = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"config file {path} is not valid TOML: {err}") from err
    check_keys(values, source=f"config file {path}")
    return values


def check_keys(values: dict, *, source: str) -> None:
    """Raise ``ValueError`` naming ``source`` when ``values`` has a key that is not a
    ``TrainConfig`` field."""
    from heads.train import TrainConfig

    valid = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise ValueError(
            f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(valid))}"
        )


def build_config(overrides: dict, *, config_file: str | Path | None = None):
    """A :class:`heads.train.TrainConfig` from the head's file, a user file and ``overrides``.

    Args:
        overrides: Values given explicitly (flags); they win over both files. Must hold
            ``task`` unless a file does. ``head_kwargs`` are merged key by key over the files'.
        config_file: Optional user TOML file.

    Returns:
        The config, with ``config_files`` listing the files read (for the run directory).

    Raises:
        FileNotFoundError, ValueError: see :func:`read_toml`; also a bad value (from
            ``TrainConfig``'s own checks) or a missing ``task``.
    """
    from heads.train import TrainConfig

    check_keys(overrides, source="flags")
    user = read_toml(config_file) if config_file is not None else {}
    head = overrides.get("head", user.get("head", TrainConfig.__dataclass_fields__["head"].default))
    head_path = head_config_path(head)
    layers = [(str(head_path), read_toml(head_path))] if head_path.is_file() else []
    if config_file is not None:
        layers.append((str(config_file), user))
    layers.append(("flags", overrides))

    merged: dict = {}
    for _, values in layers:
        for key, value in values.items():
            if key == "head_kwargs":
                merged["head_kwargs"] = {**merged.get("head_kwargs", {}), **value}
            else:
                merged[key] = value
    if "task" not in merged:
        raise ValueError("no task given: pass --task or set `task` in the config file")
    for key in ("features",):
        if key in merged:
            merged[key] = tuple(merged[key])
    merged["config_files"] = tuple(source for source, _ in layers if source != "flags")
    return TrainConfig(**merged)
