"""Issue 16 item 6: two compactions of one feature set at once, in two real processes.

Without a lock they interleave: one deletes the packed part the other has published but not yet
repointed videos to, or repacks a half-repointed part and deletes it while the other still
points videos at it. With the maintenance lock the second waits for the first.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from pipeline.store import FeatureStore

ROOT = Path(__file__).resolve().parents[1]
NUM_VIDEOS = 40
# A child process: compaction with repointing slowed down, so two of them interleave.
CHILD = """
import sys, time
sys.path.insert(0, {root!r})
import pipeline.compact as compact
from pipeline.store import FeatureStore
original = compact._repoint
def slow(*args, **kwargs):
    time.sleep(0.02)
    return original(*args, **kwargs)
compact._repoint = slow
fs = FeatureStore({store!r}).open("s")
compact.compact_feature_set(fs, target_mib=0.001)
"""


def small_parts_store(root: Path) -> dict[str, np.ndarray]:
    fs = FeatureStore(root).create("s", spec={"x": 1}, token_kind="pooled", dim=16,
                                   dtype="float32")
    rng = np.random.default_rng(0)
    tokens = {}
    for i in range(NUM_VIDEOS):
        tokens[f"v{i:02d}"] = rng.normal(size=(3, 16)).astype(np.float32)
        fs.write_video(f"v{i:02d}", tokens[f"v{i:02d}"], start_sec=[0, 1, 2], end_sec=[1, 2, 3])
    return tokens


def test_two_concurrent_compactions_lose_nothing(tmp_path):
    tokens = small_parts_store(tmp_path / "store")
    code = CHILD.format(root=str(ROOT), store=str(tmp_path / "store"))
    children = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
                for _ in range(2)]
    errors = [child.communicate(timeout=300)[1] for child in children]
    assert [child.returncode for child in children] == [0, 0], errors
    fs = FeatureStore(tmp_path / "store").open("s")
    index = fs.index()
    assert sorted(index["video_id"]) == sorted(tokens) and set(index["status"]) == {"ok"}
    read = fs.read_many(sorted(tokens))
    for video_id, expected in tokens.items():
        np.testing.assert_array_equal(read[video_id].tokens, expected)
    published = {p for p in fs.loc.listdir("parts") if not p.startswith(".") and p != "zarr.json"}
    assert published == set(index["part"]), "orphan parts left"


def test_a_held_lock_is_waited_for_then_named(tmp_path):
    import pytest

    from pipeline.locks import LockTimeout, maintenance_lock

    fs = FeatureStore(tmp_path).create("s", spec={"x": 1}, token_kind="pooled", dim=4,
                                       dtype="float32")
    with maintenance_lock(fs, "compaction"):
        with pytest.raises(LockTimeout, match="compaction \\(pid"):
            with maintenance_lock(fs, "verify --gc", wait_sec=0.3):
                pass
    with maintenance_lock(fs, "verify --gc", wait_sec=0.3):  # released: free again
        pass
