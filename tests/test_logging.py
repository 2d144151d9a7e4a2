"""Logs (issue 20 item 4): ``-v`` / ``--log-level`` on both CLIs set the level of this project's
loggers, records go to stderr (never stdout, which holds the results), a bad level is one
``error:`` line, and Ray workers log at the driver's level onto the driver's stderr."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from heads.cli import app as heads_app
from pipeline.cli import app as pipeline_app
from pipeline.logs import PACKAGES, configure_logging

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def restore_logging(monkeypatch):
    """Each test leaves the loggers as it found them (the CLIs configure the root logger)."""
    monkeypatch.delenv("LONGVID_LOG_LEVEL", raising=False)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in PACKAGES}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, value in levels.items():
        logging.getLogger(name).setLevel(value)


def _cheap_command(app, tmp_path) -> list[str]:
    """A command of ``app`` that does next to nothing (and logs nothing itself)."""
    if app is pipeline_app:
        (tmp_path / "store").mkdir()
        return ["ls", "--store", str(tmp_path / "store")]
    return ["runs", "--runs-dir", str(tmp_path / "runs")]


APPS = pytest.mark.parametrize("app", [pipeline_app, heads_app], ids=["pipeline", "heads"])


@APPS
@pytest.mark.parametrize("flags, level", [
    ([], logging.WARNING),
    (["-v"], logging.INFO),
    (["--verbose"], logging.INFO),
    (["-vv"], logging.DEBUG),
    (["-v", "-v", "-v"], logging.DEBUG),
    (["--log-level", "debug"], logging.DEBUG),
    (["--log-level", "ERROR"], logging.ERROR),
    (["-vv", "--log-level", "warning"], logging.WARNING),  # the named level wins
])
def test_flags_set_the_level(app, flags, level, tmp_path):
    result = CliRunner().invoke(app, [*flags, *_cheap_command(app, tmp_path)])
    assert result.exit_code == 0, result.output
    for package in PACKAGES:
        assert logging.getLogger(package).getEffectiveLevel() == level, package
    # Other libraries stay at WARNING unless a quieter level is asked for.
    assert logging.getLogger("fsspec").getEffectiveLevel() == max(level, logging.WARNING)


@APPS
def test_the_environment_gives_the_default_level(app, tmp_path, monkeypatch):
    monkeypatch.setenv("LONGVID_LOG_LEVEL", "info")
    result = CliRunner().invoke(app, _cheap_command(app, tmp_path))
    assert result.exit_code == 0, result.output
    assert logging.getLogger("pipeline").getEffectiveLevel() == logging.INFO


@APPS
@pytest.mark.parametrize("how", ["flag", "env"])
def test_an_unknown_level_is_one_error_line(app, how, tmp_path, monkeypatch):
    argv = _cheap_command(app, tmp_path)
    if how == "flag":
        argv = ["--log-level", "loud", *argv]
    else:
        monkeypatch.setenv("LONGVID_LOG_LEVEL", "loud")
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, result.output  # as every other bad input of both CLIs
    assert "Traceback" not in result.output
    (line,) = result.output.splitlines()
    assert line.startswith("error:") and "loud" in line and "--log-level" in line
    for name in ("debug", "info", "warning", "error"):
        assert name in line.split("one of", 1)[1]


@APPS
def test_records_go_to_stderr_at_the_chosen_level(app, tmp_path, monkeypatch):
    """A module's INFO record shows on stderr with -v, not by default; never on stdout, which
    keeps the command's own output."""
    import polars as pl

    def nothing(*args, **kwargs):
        logging.getLogger("pipeline.extract").info("an info record")
        logging.getLogger("heads.train").debug("a debug record")
        return [] if app is pipeline_app else pl.DataFrame()

    monkeypatch.setattr("heads.runs.list_runs", nothing)
    monkeypatch.setattr("pipeline.store.FeatureStore.feature_sets", nothing)
    argv = _cheap_command(app, tmp_path)
    quiet = CliRunner().invoke(app, argv)
    verbose = CliRunner().invoke(app, ["-v", *argv])
    assert quiet.exit_code == verbose.exit_code == 0, verbose.output
    assert quiet.stdout.startswith("no ") and verbose.stdout == quiet.stdout
    assert "an info record" not in quiet.output
    (line,) = [line for line in verbose.stderr.splitlines() if "an info record" in line]
    assert " INFO pipeline.extract: an info record" in line
    assert "a debug record" not in verbose.output


def test_an_extraction_logs_its_videos(tiny_catalog, tmp_path):
    """The real lines of a run: the store and feature set at INFO, each video at DEBUG."""
    argv = ["extract", "--dataset", "folder", "--data-root", str(tiny_catalog.root),
            "--backbone", "resnet18", "--weights", "none", "--plan", "uniform",
            "--num-frames", "2", "--detector", "none", "--precision", "fp32",
            "--num-workers", "0", "--limit", "2", "--no-compact",
            "--store", str(tmp_path / "store")]
    result = CliRunner().invoke(pipeline_app, ["-vv", *argv])
    assert result.exit_code == 0, result.output
    assert "2 videos: 2 extracted" in result.stdout  # the summary, as without -v
    log = result.stderr
    assert "INFO pipeline.extract: store " in log and "folder__resnet18__uniform" in log
    assert "2 video(s) to extract, 0 already stored" in log
    assert "DEBUG pipeline.execution: v0: " in log and " frames, " in log
    again = CliRunner().invoke(pipeline_app, ["-v", *argv])
    assert "0 video(s) to extract, 2 already stored" in again.stderr
    assert "DEBUG" not in again.stderr


def test_workers_are_configured_at_the_drivers_level():
    """In-process: the extractor class Ray runs configures logging from the ``env`` the driver
    forwards (``LONGVID_LOG_LEVEL``), before its own ``__init__``."""
    from pipeline import execution

    configure_logging("info")
    env = execution._forwarded_env()
    assert env["LONGVID_LOG_LEVEL"] == "info"
    configure_logging("warning")  # as a fresh worker process would be

    seen = {}

    class Extractor:
        def __init__(self, store_root, *, env=None):
            seen["level"] = logging.getLogger("pipeline.worker").getEffectiveLevel()
            seen["env"] = env

    cls = execution.logging_extractor(Extractor)
    assert cls.__name__ == "Extractor"  # Ray's "(Extractor pid=...)" prefix
    cls("store", env=env)
    assert seen == {"level": logging.INFO, "env": env}


_RAY_SCRIPT = textwrap.dedent("""
    import logging, sys, time
    import ray
    from pipeline import execution
    from pipeline.cluster import start_ray
    from pipeline.logs import configure_logging

    class FakeExtractor:
        def __init__(self, env=None):
            pass

        def work(self):
            log = logging.getLogger("pipeline.worker")
            log.warning("worker warning")
            log.info("worker info")
            log.debug("worker debug")
            return True

    configure_logging(sys.argv[1])
    start_ray(None)
    actor = ray.remote(num_cpus=0)(execution.logging_extractor(FakeExtractor)).remote(
        env=execution._forwarded_env())
    assert ray.get(actor.work.remote())
    time.sleep(3)  # Ray's log monitor forwards the worker's stderr every few hundred ms
    ray.shutdown()
""")


@pytest.mark.slow
@pytest.mark.parametrize("level", ["warning", "info"])
def test_ray_worker_records_reach_the_drivers_stderr(level, tmp_path):
    """A worker-side ``logging.getLogger("pipeline.worker")`` record reaches the driver's
    stderr (log_to_driver), at the driver's level, prefixed with the actor and its pid."""
    script = tmp_path / "driver.py"
    script.write_text(_RAY_SCRIPT)
    done = subprocess.run([sys.executable, str(script), level], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**_env(), "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "pipeline.worker" in line]
    assert any("FakeExtractor pid=" in line and "WARNING pipeline.worker: worker warning" in line
               for line in lines), done.stderr
    assert any("worker info" in line for line in lines) == (level == "info"), done.stderr
    assert not any("worker debug" in line for line in lines), done.stderr
    assert "worker warning" not in done.stdout


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "LONGVID_LOG_LEVEL"}
