"""Submit a job spec of this folder to a Ray cluster (or print the ``ray job submit`` line).

    python jobs/submit.py jobs/extract_lvu.yaml --address http://HEAD:8265 \
        --env LONGVID_STORE=s3://bucket/store [--dry-run] [--wait]

A spec is YAML whose keys are the keyword arguments of Ray's
``JobSubmissionClient.submit_job`` (``entrypoint``, ``runtime_env``, ``entrypoint_num_cpus``,
``entrypoint_num_gpus``, ``entrypoint_memory``, ``entrypoint_resources``, ``metadata``,
``submission_id``); unknown keys are an error. ``--env KEY=VALUE`` overrides
``runtime_env.env_vars``. Submitting needs ``ray[default]`` on this machine (the job client);
``--dry-run`` needs only PyYAML.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

ALLOWED_KEYS = (
    "entrypoint", "runtime_env", "entrypoint_num_cpus", "entrypoint_num_gpus",
    "entrypoint_memory", "entrypoint_resources", "metadata", "submission_id",
)


def load_spec(path: str | Path, env: dict[str, str] | None = None) -> dict:
    """The spec at ``path`` with ``env`` merged into ``runtime_env.env_vars``.

    Raises:
        ValueError: not a mapping, no ``entrypoint``, or keys Ray's job API does not take.
    """
    import yaml

    spec = yaml.safe_load(Path(path).read_text())
    if not isinstance(spec, dict) or not isinstance(spec.get("entrypoint"), str):
        raise ValueError(f"{path}: a job spec is a mapping with an 'entrypoint' string")
    unknown = sorted(set(spec) - set(ALLOWED_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; allowed: {', '.join(ALLOWED_KEYS)}")
    if env:
        runtime_env = spec.setdefault("runtime_env", {})
        runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), **env}
    return spec


def ray_job_submit_command(spec: dict, address: str) -> list[str]:
    """The ``ray job submit`` argv equivalent to submitting ``spec`` with the job client.

    The entrypoint goes after ``--`` as ``sh -c ENTRYPOINT``: Ray's CLI shell-quotes the
    words it is given (``shlex.join``) before the head's shell runs them, so passing the
    entrypoint's own words would quote ``${LVU_ROOT}`` and it would never expand. The head then
    runs ``sh -c 'ENTRYPOINT'``: the same string, parsed by the same shell, with the same
    ``runtime_env.env_vars``, as ``submit_job(entrypoint=ENTRYPOINT)`` runs it.
    """
    argv = ["ray", "job", "submit", "--address", address]
    if "runtime_env" in spec:
        argv += ["--runtime-env-json", json.dumps(spec["runtime_env"])]
    for key in ("entrypoint_num_cpus", "entrypoint_num_gpus", "entrypoint_memory"):
        if key in spec:
            argv += [f"--{key.replace('_', '-')}", str(spec[key])]
    if "entrypoint_resources" in spec:
        argv += ["--entrypoint-resources", json.dumps(spec["entrypoint_resources"])]
    if "metadata" in spec:
        argv += ["--metadata-json", json.dumps(spec["metadata"])]
    if "submission_id" in spec:
        argv += ["--submission-id", spec["submission_id"]]
    return [*argv, "--", "sh", "-c", spec["entrypoint"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("spec", help="YAML job spec, e.g. jobs/extract_lvu.yaml")
    parser.add_argument("--address", default="http://127.0.0.1:8265",
                        help="Ray dashboard address of the cluster's head")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="override runtime_env.env_vars (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="print the ray job submit line")
    parser.add_argument("--wait", action="store_true", help="follow the job's logs to the end")
    args = parser.parse_args(argv)
    bad = [item for item in args.env if "=" not in item]
    if bad:
        parser.error(f"--env takes KEY=VALUE, not {bad[0]!r}")
    spec = load_spec(args.spec, dict(item.split("=", 1) for item in args.env))
    if args.dry_run:
        print(shlex.join(ray_job_submit_command(spec, args.address)))
        return 0
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(args.address)
    job_id = client.submit_job(**spec)
    print(f"submitted {job_id}; logs: ray job logs --address {args.address} -f {job_id}")
    if args.wait:
        import asyncio

        async def follow() -> None:
            async for lines in client.tail_job_logs(job_id):
                print(lines, end="")

        asyncio.run(follow())
        print(f"job {job_id}: {client.get_job_status(job_id)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
