"""What a researcher types wrong gets one ``error:`` line naming the culprit and the fix, never
a traceback or a silent exit 0 (issue 20 item 5); no flag destroys a dataset (item 6); every
command's ``--help`` reads as written (item 7)."""

from __future__ import annotations

import re
import shutil
import sys

import pytest
import typer
from typer.testing import CliRunner

from heads.cli import app as heads_app
from pipeline.cli import app as pipeline_app


def _one_error_line(result, *names: str) -> str:
    """``result`` failed with exit code 2 and a single ``error:`` line naming ``names``."""
    output = result.output
    assert result.exit_code == 2, (result.exit_code, output)
    assert "Traceback" not in output, output
    assert result.exception is None or isinstance(result.exception, SystemExit), output
    (line,) = [line for line in output.splitlines() if line.startswith("error:")]
    for name in names:
        assert name in line, (name, line)
    return line


# ------------------------------------------------------------------------------ item 5


@pytest.fixture
def store_with_one_set(tmp_path):
    from pipeline.store import FeatureStore

    store = tmp_path / "store"
    FeatureStore(store).create("demo__resnet18__scene__abc", spec={"dataset": "demo"},
                               token_kind="pooled", dim=4, dtype="float32")
    return store


@pytest.mark.parametrize("command", ["status", "verify", "compact"])
def test_a_mistyped_feature_set_names_those_present(store_with_one_set, command):
    result = CliRunner().invoke(pipeline_app, [command, "--store", str(store_with_one_set),
                                               "demo__resnet18__scene__abd"])
    _one_error_line(result, "demo__resnet18__scene__abd", "demo__resnet18__scene__abc")


@pytest.mark.parametrize("command", ["status", "verify", "compact", "ls"])
def test_a_store_path_that_does_not_exist_is_an_error(tmp_path, command):
    missing = tmp_path / "stroe"  # a typo: it must not "verify" as an empty store
    result = CliRunner().invoke(pipeline_app, [command, "--store", str(missing)])
    _one_error_line(result, "--store", str(missing), "no such store")


def test_an_empty_store_says_so(tmp_path):
    (tmp_path / "store").mkdir()
    for command in ("status", "verify", "compact", "ls"):
        result = CliRunner().invoke(pipeline_app, [command, "--store", str(tmp_path / "store")])
        assert result.exit_code == 0 and "no feature sets in" in result.output, result.output


@pytest.fixture
def no_s3fs(monkeypatch):
    """s3fs cannot be imported (as on this machine: ``find_spec("s3fs")`` is None), even if a
    test before loaded it."""
    import fsspec.registry

    if importlib_find("s3fs") is not None:
        monkeypatch.setitem(sys.modules, "s3fs", None)  # import s3fs raises ImportError
        monkeypatch.delitem(fsspec.registry._registry, "s3", raising=False)


def importlib_find(name: str):
    import importlib.util

    return importlib.util.find_spec(name)


@pytest.mark.parametrize("argv", [
    ["pipeline", "status", "--store", "s3://bucket/store"],
    ["pipeline", "verify", "--store", "s3://bucket/store"],
    ["pipeline", "ls", "--store", "s3://bucket/store"],
    ["pipeline", "export", "x", "out.h5", "--store", "s3://bucket/store"],
    ["heads", "train", "--task", "genre", "--store", "s3://bucket/store"],
    ["heads", "eval", "runs/x", "--store", "s3://bucket/store"],
], ids=lambda argv: " ".join(argv[:2]))
def test_an_s3_store_without_s3fs_is_an_error_naming_the_package(no_s3fs, argv):
    app = {"pipeline": pipeline_app, "heads": heads_app}[argv[0]]
    result = CliRunner().invoke(app, argv[1:])
    _one_error_line(result, "--store s3://bucket/store", "s3fs")


def test_an_unknown_url_scheme_is_an_error():
    result = CliRunner().invoke(pipeline_app, ["status", "--store", "s4://bucket/store"])
    _one_error_line(result, "s4://", "--store")


def test_device_cuda_without_a_gpu_is_an_error_before_any_data(monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = CliRunner().invoke(heads_app, [
        "train", "--task", "most_screen_time", "--device", "cuda",
        "--data-root", str(tmp_path / "nowhere"), "--store", str(tmp_path / "nowhere")])
    _one_error_line(result, "--device cuda", "--device cpu")


def test_cuda_from_a_config_file_without_a_gpu_is_an_error(monkeypatch):
    """A device set in a config file reaches torch, which raises RuntimeError: translated."""
    import torch

    from heads.cli_common import user_errors

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(typer.Exit) as exit_:
        with user_errors():
            raise RuntimeError("Found no NVIDIA driver on your system. Please check ...")
    assert exit_.value.exit_code == 2
    with pytest.raises(RuntimeError, match="something else"):  # other errors still surface
        with user_errors():
            raise RuntimeError("something else")


def test_the_lvu_advice_names_flags_both_clis_take(tmp_path):
    """The LVU error tells people to pass the labels folder: `pipeline` as --labels, `heads`
    as --catalog-option labels=DIR; both then reach the catalog (the error names that folder)."""
    empty = tmp_path / "lvu_1.0"
    empty.mkdir()
    result = CliRunner().invoke(pipeline_app, ["catalog", "lvu", "--data-root", str(tmp_path)])
    line = _one_error_line(result, "--labels DIR", "--catalog-option labels=DIR")
    assert "lvu_1.0" in line
    labels = tmp_path / "elsewhere"
    labels.mkdir()
    result = CliRunner().invoke(pipeline_app, ["catalog", "lvu", "--data-root", str(tmp_path),
                                               "--labels", str(labels)])
    _one_error_line(result, str(labels))
    result = CliRunner().invoke(heads_app, [
        "train", "--task", "genre", "--head", "mean", "--dataset", "lvu",
        "--data-root", str(tmp_path), "--catalog-option", f"labels={labels}",
        "--store", str(tmp_path / "store"), "--runs-dir", str(tmp_path / "runs")])
    _one_error_line(result, str(labels))  # the option reached the catalog


# ------------------------------------------------------------------------------ item 6


def test_each_variant_has_its_own_default_root():
    from catalogs import default_root

    assert default_root("demo") == default_root("demo", "default") == "data/demo"
    assert default_root("demo", "small") == "data/demo-small"
    assert default_root("lvu") == "data/lvu"


@pytest.fixture
def default_looking_build(demo_small, tmp_path):
    """A copy of the small build whose manifest says ``small``: the folder a flag must never
    replace by another variant (the default variant itself is too slow to build in a test)."""
    root = tmp_path / "demo"
    shutil.copytree(demo_small.root, root)
    return root


def test_a_build_never_replaces_another_variant(default_looking_build, monkeypatch):
    import catalogs.demo_render
    from catalogs import get_catalog
    from catalogs.demo import build_demo

    def no_rendering(*args, **kwargs):
        raise AssertionError("a build started over another variant's build")

    monkeypatch.setattr(catalogs.demo_render, "render_videos", no_rendering)
    before = sorted(p.name for p in (default_looking_build / "videos").iterdir())
    for force in (False, True):
        with pytest.raises(FileExistsError, match=r"'small' variant.*'default' variant") as err:
            build_demo(default_looking_build, variant="default", force=force)
        assert "data/demo" in str(err.value)
    with pytest.raises(FileExistsError, match="'small' variant"):
        get_catalog("demo", root=default_looking_build, variant="default")
    for argv in (["catalog", "demo", "--data-root", str(default_looking_build)],
                 ["demo", "build", "--root", str(default_looking_build)],
                 ["extract", "--dataset", "demo", "--data-root", str(default_looking_build),
                  "--num-workers", "0", "--store", str(default_looking_build.parent / "s")]):
        result = CliRunner().invoke(pipeline_app, argv)
        _one_error_line(result, str(default_looking_build), "'small'", "'default'")
    assert sorted(p.name for p in (default_looking_build / "videos").iterdir()) == before
    assert get_catalog("demo", root=default_looking_build, variant="small").videos.height == 8


def test_the_small_variant_defaults_to_its_own_root(demo_small, tmp_path, monkeypatch):
    """`--variant small` without --data-root reads data/demo-small, never data/demo."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "demo-small").symlink_to(demo_small.root)
    result = CliRunner().invoke(pipeline_app, ["catalog", "demo", "--variant", "small"])
    assert result.exit_code == 0, result.output
    assert "building" not in result.output and not (tmp_path / "data" / "demo").exists()

    import pipeline.extract

    def capture(config, **kwargs):
        raise ValueError(f"would read {config.data_root}")

    monkeypatch.setattr(pipeline.extract, "run_extract", capture)
    result = CliRunner().invoke(pipeline_app, ["extract", "--dataset", "demo",
                                               "--variant", "small"])
    _one_error_line(result, "would read data/demo-small")


def test_folder_catalog_takes_a_video_root(tmp_path):
    from catalogs import get_catalog

    videos = tmp_path / "clips"
    (videos / "cats").mkdir(parents=True)
    for name in ("a.mp4", "cats/b.mkv"):
        (videos / name).write_bytes(b"")  # found by extension; never decoded here
    catalog = get_catalog("folder", root=tmp_path / "nowhere", video_root=videos)
    assert catalog.videos["video_id"].to_list() == ["a", "cats/b"]
    assert catalog.videos["path"].to_list() == [str(videos / "a.mp4"), str(videos / "cats/b.mkv")]
    result = CliRunner().invoke(pipeline_app, ["catalog", "folder", "--video-root", str(videos),
                                               "--data-root", str(tmp_path / "nowhere")])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(pipeline_app, ["catalog", "folder",
                                               "--video-root", str(tmp_path / "nope")])
    _one_error_line(result, "--video-root", "nope")


# ------------------------------------------------------------------------------ item 7


def _commands():
    """(argv prefix, click command) of every command of both CLIs, sub-groups included."""
    found = []

    def walk(prefix, command):
        if isinstance(command, typer.core.TyperGroup):
            for name, sub in command.commands.items():
                walk([*prefix, name], sub)
        else:
            found.append((prefix, command))

    walk(["pipeline"], typer.main.get_command(pipeline_app))
    walk(["heads"], typer.main.get_command(heads_app))
    return found


COMMANDS = _commands()


def _help(argv: list[str], columns: int, monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", str(columns))  # Rich's width off a terminal
    app = {"pipeline": pipeline_app, "heads": heads_app}[argv[0]]
    result = CliRunner().invoke(app, [*argv[1:], "--help"], terminal_width=columns)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("argv, command", COMMANDS, ids=[" ".join(a) for a, _ in COMMANDS])
def test_help_reads_as_written(argv, command, monkeypatch):
    narrow = _help(argv, 80, monkeypatch)
    wide = _help(argv, 200, monkeypatch)
    for param in command.params:
        for flag in (*param.opts, *param.secondary_opts):
            if flag.startswith("--"):
                assert re.search(rf"{re.escape(flag)}(?![\w-])", narrow), (
                    f"{flag} is cut at 80 columns")
    for text in [command.help or "", *(getattr(p, "help", None) or "" for p in command.params)]:
        for token in re.findall(r"\[[^\]\s]+\]", text.replace("\\[", "[")):
            assert token in wide, f"{token} (Rich markup?) is missing from the help"
    for output in (narrow, wide):
        assert "<list[" not in output  # a metavar names the value instead
        assert "``" not in output  # reST in a docstring shows literally


def test_demo_help_counts_the_videos_it_builds(monkeypatch):
    from catalogs.demo_plan import VARIANTS

    output = _help(["pipeline", "demo", "build"], 200, monkeypatch)
    assert f"{VARIANTS['default'].num_videos} videos" in output
    assert f"{VARIANTS['small'].num_videos} videos" in output
    assert "[datasets.<dataset>]" in _help(["heads", "train"], 200, monkeypatch)
    assert "[datasets.<dataset>]" in _help(["heads", "sweep"], 200, monkeypatch)


def test_heads_default_data_root_follows_the_variant():
    """`heads train/finetune --variant small` read the variant's own default root, the one
    `pipeline extract --variant small` builds (issue 20 item 6)."""
    from heads.config import TrainConfig
    from heads.config_files import resolve_config
    from heads.finetune.config import FinetuneConfig
    from heads.finetune.config import resolve_config as resolve_finetune

    small = {"variant": "small"}
    assert resolve_config(TrainConfig(task="t", head="mean", dataset="demo",
                                      catalog_options=small)).data_root == "data/demo-small"
    assert resolve_config(TrainConfig(task="t", head="mean",
                                      dataset="demo")).data_root == "data/demo"
    assert resolve_finetune(FinetuneConfig(task="t", dataset="demo",
                                           catalog_options=small)).data_root == "data/demo-small"
