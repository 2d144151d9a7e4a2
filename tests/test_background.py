"""Issue 16 item 9: extraction run as a background job, and every wait bounded.

A background job (`pipeline extract ... > log 2>&1 &`) whose child touches the terminal is
stopped by job control; importing scenedetect runs `ffmpeg -v quiet`, which sets terminal modes
on its standard input. Importing `pipeline` detaches a terminal stdin that the process does not
own, so no child process can be stopped that way.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What ffmpeg's terminal set-up does: tcsetattr on stdin. From a background process group on
# its controlling terminal this raises SIGTTOU and stops the process; on /dev/null it fails.
TOUCH_TERMINAL = ("import termios; "
                  "termios.tcsetattr(0, termios.TCSANOW, termios.tcgetattr(0))")


def run_as_background_job(code: str, timeout_s: float = 20.0) -> subprocess.CompletedProcess:
    """Run ``code`` as a background job of a fresh pseudo-terminal session: a session leader
    owns the pty and its foreground group; ``code`` runs in another process group."""
    import pty

    master, slave = pty.openpty()
    leader = textwrap.dedent(f"""
        import fcntl, os, subprocess, sys, termios
        fcntl.ioctl({slave}, termios.TIOCSCTTY, 0)
        os.tcsetpgrp({slave}, os.getpgrp())
        job = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdin={slave},
                               process_group=0, cwd={str(ROOT)!r})
        sys.exit(job.wait(timeout={timeout_s}))
    """)
    try:
        return subprocess.run([sys.executable, "-c", leader, code], start_new_session=True,
                              pass_fds=(slave,), capture_output=True, text=True,
                              timeout=timeout_s + 20)
    finally:
        os.close(master)
        os.close(slave)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux job control")
def test_a_background_job_never_stops_on_the_terminal():
    code = ("import sys; sys.path.insert(0, '.'); import pipeline, subprocess; "
            f"subprocess.call([sys.executable, '-c', {TOUCH_TERMINAL!r}]); print('done')")
    result = run_as_background_job(code)
    # Without the detach the job is stopped by SIGTTOU: the leader times out (TimeoutExpired).
    assert "TimeoutExpired" not in result.stderr, "the background job was stopped"
    assert result.returncode == 0 and result.stdout.strip() == "done", result.stderr[-800:]


def test_a_foreground_or_non_terminal_stdin_is_left_alone(tmp_path):
    from pipeline import detach_background_stdin

    with open(tmp_path / "input.txt", "w") as f:
        f.write("x")
    with open(tmp_path / "input.txt") as f:
        result = subprocess.run(
            [sys.executable, "-c", "import pipeline, sys; print(sys.stdin.read())"],
            stdin=f, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.stdout.strip() == "x"  # a file or pipe on stdin is not a terminal: kept
    assert detach_background_stdin() is False  # pytest's stdin is no foreign terminal


def extract_with_a_hang(catalog, store, monkeypatch, *, video: str, num_workers: int,
                        timeout_sec: float):
    """Extract ``catalog`` with ``video`` hanging for good; checks that it alone failed, timed
    out, and returns the summary."""
    from pipeline.extract import ExtractConfig, run_extract
    from tests.conftest import TINY_EXTRACT_OPTIONS

    monkeypatch.setenv("LONGVID_FAULT", f"hang:{video}")
    config = ExtractConfig(store=str(store), num_workers=num_workers, compact=False,
                           video_timeout_sec=timeout_sec, **TINY_EXTRACT_OPTIONS)
    summary = run_extract(config, catalog=catalog, progress=False)
    assert set(summary.failed) == {video}, summary.failed
    assert f"timed out after {timeout_sec:g} s (--video-timeout-sec)" in summary.failed[video]
    assert summary.num_ok == catalog.videos.height - 1
    return summary


def test_a_hung_video_times_out_alone_in_process(tiny_catalog, tmp_path, monkeypatch):
    extract_with_a_hang(tiny_catalog, tmp_path / "store", monkeypatch, video="v2",
                        num_workers=0, timeout_sec=2)


def test_a_hung_worker_is_killed_and_the_run_goes_on(tiny_catalog, tmp_path, monkeypatch,
                                                     ray_local):
    """Under Ray: the driver's wait is bounded, the hung worker is killed, its video recorded
    as timed out, a fresh worker takes the rest."""
    import pipeline.execution as execution
    from pipeline.store import FeatureStore

    monkeypatch.setattr(execution, "WAIT_POLL_SEC", 0.5)
    extract_with_a_hang(tiny_catalog, tmp_path / "store", monkeypatch, video="v1",
                        num_workers=2, timeout_sec=8)
    (fs,) = FeatureStore(tmp_path / "store").feature_sets()
    row = fs.index().filter(fs.index()["video_id"] == "v1").row(0, named=True)
    assert row["status"] == "failed" and "timed out" in row["error"]
