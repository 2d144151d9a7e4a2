"""``pipeline import`` refuses, per key and before reading, HDF5 data it must not trust.

External links, soft links leading out of the file, external or virtual storage, datasets
declaring more bytes than a limit and datasets whose chunks were never written each fail that
key alone, with a reason naming it; the other keys import.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.interop import import_features
from pipeline.store import FeatureStore

BOMB_SHAPE = (250_000, 1_024)  # 1.0 GB of float32 declared by a file of about 1.4 KB


def _import(store, source, **kw):
    kw = {"dataset": "toy", "backbone": "vit_b16", "plan": "fps", "fps": 1.0, **kw}
    return import_features(store, source, **kw)


def _write_bomb(path: Path, *, good: bool = True) -> Path:
    """A tiny file declaring ``BOMB_SHAPE`` float32, chunked, gzip'd, one chunk written."""
    import h5py

    with h5py.File(path, "w") as f:
        bomb = f.create_dataset("bomb", shape=BOMB_SHAPE, dtype="float32", chunks=(64, 1_024),
                                compression="gzip")
        bomb[0] = 1.0
        if good:
            f["good"] = np.ones((3, 1_024), np.float32)
    return path


def _forbid_reads(monkeypatch, source: Path, allowed: set[str]) -> list[str]:
    """Make reading any h5 dataset but ``allowed`` ones of ``source`` fail; returns the reads."""
    import h5py

    reads: list[str] = []
    real_getitem, real_astype = h5py.Dataset.__getitem__, h5py.Dataset.astype

    def guard(dataset) -> None:
        reads.append(f"{dataset.file.filename}:{dataset.name}")
        if dataset.file.filename != str(source) or dataset.name.lstrip("/") not in allowed:
            raise AssertionError(f"import read {dataset.name}, which it should have refused")

    def getitem(self, *args, **kw):
        guard(self)
        return real_getitem(self, *args, **kw)

    def astype(self, *args, **kw):
        guard(self)
        return real_astype(self, *args, **kw)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", getitem)
    monkeypatch.setattr(h5py.Dataset, "astype", astype)
    return reads


def test_declared_bomb_is_refused_without_allocating_it(tmp_path):
    source = _write_bomb(tmp_path / "bomb.h5")
    assert source.stat().st_size < 64 * 1024
    # A fresh process, so that its peak RSS measures this import alone.
    script = f"""
import json, resource, sys
from pipeline.interop import import_features
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
summary = import_features({str(tmp_path / 'store')!r}, {str(source)!r}, dataset="toy",
                          backbone="b", plan="fps", fps=1.0)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"growth_kib": after - before, "ok": summary.num_ok,
                   "failed": summary.failed}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=Path(__file__).parents[1], timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["ok"] == 1 and set(result["failed"]) == {"bomb"}, result
    assert f"{source}:/bomb" in result["failed"]["bomb"]
    assert "1 of 3907 chunks" in result["failed"]["bomb"], result["failed"]["bomb"]
    assert result["growth_kib"] < 64 * 1024, result  # under 64 MiB of a 1 GB declaration


def test_size_limit_refuses_per_key_before_reading(tmp_path, monkeypatch):
    import h5py

    source = tmp_path / "big.h5"
    with h5py.File(source, "w") as f:
        f["big"] = np.ones((300, 1_024), np.float32)  # 1.2 MB, fully written
        f["small"] = np.ones((3, 1_024), np.float32)
    reads = _forbid_reads(monkeypatch, source, allowed={"small"})
    summary = _import(tmp_path / "store", source, max_bytes_per_video=1_000_000)
    assert summary.num_ok == 1 and set(summary.failed) == {"big"}, summary.failed
    reason = summary.failed["big"]
    assert f"{source}:/big" in reason and "1,228,800 bytes" in reason
    assert "max_bytes_per_video" in reason  # says how to raise the limit
    assert not any(r.endswith(":/big") for r in reads)
    # the limit is a keyword: raised, the same key imports (resume retries the failed one)
    monkeypatch.undo()
    again = _import(tmp_path / "store", source, max_bytes_per_video=2_000_000)
    assert again.num_ok == 1 and again.num_skipped == 1 and not again.failed


def test_size_limit_applies_to_npy_dumps_too(tmp_path):
    (tmp_path / "dump").mkdir()
    np.save(tmp_path / "dump" / "big.npy", np.ones((300, 1_024), np.float32))
    np.save(tmp_path / "dump" / "small.npy", np.ones((3, 1_024), np.float32))
    summary = _import(tmp_path / "store", tmp_path / "dump", max_bytes_per_video=1_000_000)
    assert summary.num_ok == 1 and "big.npy" in summary.failed["big"]
    with pytest.raises(ValueError, match="max_bytes_per_video"):
        _import(tmp_path / "store", tmp_path / "dump", max_bytes_per_video=0)


def test_cli_flag_sets_the_limit(tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli import app

    (tmp_path / "dump").mkdir()
    np.save(tmp_path / "dump" / "big.npy", np.ones((300, 1_024), np.float32))  # 1.2 MB
    np.save(tmp_path / "dump" / "small.npy", np.ones((3, 1_024), np.float32))
    args = ["import", str(tmp_path / "dump"), "--dataset", "toy", "--backbone", "vit_b16",
            "--plan", "fps", "--fps", "1", "--store", str(tmp_path / "store")]
    refused = CliRunner().invoke(app, [*args, "--max-gib-per-video", "0.001"])
    assert refused.exit_code == 1 and "--max-gib-per-video" in refused.output
    assert CliRunner().invoke(app, args).exit_code == 0  # the 4 GiB default lets it in


def test_links_and_external_storage_are_refused_per_key(tmp_path, monkeypatch):
    import h5py

    other = tmp_path / "elsewhere.h5"
    with h5py.File(other, "w") as f:
        f["secret"] = np.full((2, 4), 7.0, np.float32)
        f["grp/features"] = np.full((2, 4), 7.0, np.float32)
    raw = tmp_path / "raw.bin"
    np.full((2, 4), 7.0, np.float32).tofile(raw)
    source = tmp_path / "links.h5"
    with h5py.File(source, "w") as f:
        f["good"] = np.ones((2, 4), np.float32)
        f["ext"] = h5py.ExternalLink(str(other), "/secret")
        f["extgroup"] = h5py.ExternalLink(str(other), "/grp")
        f["hop"] = h5py.SoftLink("/extgroup/features")  # a soft link through an external one
        f["dangling"] = h5py.SoftLink("/nowhere")
        f["alias"] = h5py.SoftLink("/good")  # inside the file: fine
        f.create_dataset("raw", shape=(2, 4), dtype="float32", external=[(str(raw), 0, 32)])
        f["v/features"] = np.ones((2, 4), np.float32)
        f["v/start_sec"] = h5py.ExternalLink(str(other), "/secret")
    reads = _forbid_reads(monkeypatch, source, allowed={"good", "alias", "v/features"})
    summary = _import(tmp_path / "store", source)
    assert summary.num_ok == 2, summary.failed  # good and alias
    assert set(summary.failed) == {"ext", "extgroup", "hop", "dangling", "raw", "v"}
    assert "external link to elsewhere.h5:/secret" in summary.failed["ext"]
    assert "external link" in summary.failed["extgroup"]
    assert "external link" in summary.failed["hop"]
    assert "points to nothing" in summary.failed["dangling"]
    assert "raw.bin" in summary.failed["raw"] and "external storage" in summary.failed["raw"]
    assert "start_sec" in summary.failed["v"] and "external link" in summary.failed["v"]
    assert all(r.startswith(f"{source}:") and "raw" not in r for r in reads), reads
    fs = FeatureStore(tmp_path / "store").open(summary.feature_set)
    assert sorted(fs.ok_ids()) == ["alias", "good"]


def test_link_cycles_do_not_hang_the_walk(tmp_path):
    import h5py

    source = tmp_path / "cycle.h5"
    with h5py.File(source, "w") as f:
        f["g/v"] = np.ones((2, 4), np.float32)
        f["g/loop"] = h5py.SoftLink("/g")
        f["g/hard"] = f["g"]  # a hard link to its own parent
    summary = _import(tmp_path / "store", source)
    assert summary.num_ok == 1 and sorted(FeatureStore(tmp_path / "store").open(
        summary.feature_set).ok_ids()) == ["g/v"], summary.failed
