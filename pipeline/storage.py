"""Where a feature store lives: a local directory, or any fsspec URL (``s3://``, ``gs://``, ...).

:func:`location` turns what the user typed into a :class:`Location`, a directory with the few
operations the store needs. Local paths (and ``file://`` URLs) keep plain ``os`` calls and
atomic renames; everything else goes through fsspec, where there is no atomic rename of a
directory: there a part is written straight under its final (unique) name and becomes visible
only when the index fragment naming it is put, a single-object write that object stores make
atomic. Either way a reader never sees half a video.

Limits: ``memory://`` lives inside one Python process, so Ray workers (other processes) cannot
reach it: use it with ``--num-workers 0``. Workers on other machines need a path on shared
storage or an object-store URL, with the credentials fsspec reads (environment, config files).
"""

from __future__ import annotations

import io
import os
import uuid
from pathlib import Path

LOCAL_PROTOCOLS = ("file", "local")
PROCESS_LOCAL_PROTOCOLS = ("memory",)  # unreachable from other processes


def is_url(root: str | Path) -> bool:
    """True for ``scheme://...`` strings (``file://`` included)."""
    return isinstance(root, str) and "://" in root


def location(root: str | Path) -> "Location":
    """A local directory for paths and ``file://`` URLs, an fsspec one for other URLs."""
    if is_url(root):
        protocol = str(root).split("://", 1)[0]
        if protocol in LOCAL_PROTOCOLS:
            return LocalDir(Path(str(root).split("://", 1)[1]))
        return FsspecDir.from_url(str(root))
    return LocalDir(Path(root))


class Location:
    """A directory: relative names are ``/``-separated below it."""

    is_local: bool
    path: Path | None  # the local directory, None for a remote one
    url: str  # what another process passes to :func:`location` to reach the same place
    atomic_rename: bool

    def child(self, name: str) -> "Location": ...
    def exists(self, name: str = "") -> bool: ...
    def read_bytes(self, name: str) -> bytes: ...
    def write_bytes(self, name: str, data: bytes) -> None: ...
    def listdir(self, name: str = "") -> list[str]: ...
    def mkdir(self, name: str) -> None: ...
    def rename(self, src: str, dst: str) -> None: ...
    def remove(self, name: str) -> None: ...
    def size_bytes(self) -> int: ...
    def zarr_store(self, read_only: bool = False): ...
    def file_size(self, name: str) -> int: ...

    def read_text(self, name: str) -> str:
        return self.read_bytes(name).decode()

    def __str__(self) -> str:
        return self.url


class LocalDir(Location):
    """A local directory: os calls, renames that publish atomically."""

    is_local = True
    atomic_rename = True

    def __init__(self, path: Path):
        self.path = Path(path)
        self.url = str(self.path)

    def child(self, name: str) -> "LocalDir":
        return LocalDir(self.path / name)

    def exists(self, name: str = "") -> bool:
        return (self.path / name).exists()

    def read_bytes(self, name: str) -> bytes:
        return (self.path / name).read_bytes()

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write ``name`` whole or not at all (temporary file, then ``os.replace``)."""
        final = self.path / name
        tmp = final.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{final.name}")
        tmp.write_bytes(data)
        os.replace(tmp, final)

    def listdir(self, name: str = "") -> list[str]:
        directory = self.path / name
        return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []

    def mkdir(self, name: str) -> None:
        (self.path / name).mkdir(parents=True, exist_ok=True)

    def rename(self, src: str, dst: str) -> None:
        os.rename(self.path / src, self.path / dst)

    def remove(self, name: str) -> None:
        import shutil

        target = self.path / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())

    def file_size(self, name: str) -> int:
        return (self.path / name).stat().st_size

    def zarr_store(self, read_only: bool = False):
        return str(self.path)  # zarr's LocalStore: the fastest way to a local directory


class FsspecDir(Location):
    """A directory behind an fsspec filesystem (object stores, ``memory://``, ...)."""

    is_local = False
    atomic_rename = False
    path = None

    def __init__(self, fs, base: str):
        self.fs = fs
        self.base = base.rstrip("/")
        self.url = fs.unstrip_protocol(self.base)

    @classmethod
    def from_url(cls, url: str) -> "FsspecDir":
        import fsspec

        fs, base = fsspec.core.url_to_fs(url)
        return cls(fs, base)

    def _full(self, name: str) -> str:
        return f"{self.base}/{name}" if name else self.base

    def child(self, name: str) -> "FsspecDir":
        return FsspecDir(self.fs, self._full(name))

    def exists(self, name: str = "") -> bool:
        return self.fs.exists(self._full(name))

    def read_bytes(self, name: str) -> bytes:
        return self.fs.cat_file(self._full(name))

    def write_bytes(self, name: str, data: bytes) -> None:
        """One object put: object stores make it appear whole or not at all."""
        self.fs.pipe_file(self._full(name), data)

    def listdir(self, name: str = "") -> list[str]:
        try:
            entries = self.fs.ls(self._full(name), detail=False)
        except FileNotFoundError:
            return []
        return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)

    def mkdir(self, name: str) -> None:
        """Object stores have no directories: nothing to make."""

    def rename(self, src: str, dst: str) -> None:
        raise NotImplementedError(f"{self.url}: no atomic rename on this filesystem")

    def remove(self, name: str) -> None:
        if self.fs.exists(self._full(name)):
            self.fs.rm(self._full(name), recursive=True)

    def size_bytes(self) -> int:
        return int(self.fs.du(self.base)) if self.fs.exists(self.base) else 0

    def file_size(self, name: str) -> int:
        return int(self.fs.size(self._full(name)))

    def zarr_store(self, read_only: bool = False):
        from zarr.storage import FsspecStore

        return FsspecStore.from_url(self.url, read_only=read_only)


def read_parquet_bytes(data: bytes):
    """A polars frame from parquet bytes (index fragments fetched from a remote store)."""
    import polars as pl

    return pl.read_parquet(io.BytesIO(data))
