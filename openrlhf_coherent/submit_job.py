"""Submit a Ray job whose entrypoint is an argument vector, then follow its log (as `ray job submit`).

    python openrlhf_coherent/submit_job.py --address http://HEAD:8265 [--runtime-env-json JSON] -- ARGV...

`ray job submit -- ARGV...` (Ray 2.55) joins ARGV with `subprocess.list2cmdline`, which quotes for
Windows, and the job server runs the result with /bin/sh: an argument holding `$`, a backslash, a
quote or a glob is re-interpreted there (`--set 'sft.dataset=${root}/x'` arrives as `/x`), so the
command printed is not the one that runs. Here the entrypoint is `shlex.join(ARGV)`, the POSIX
quoting /bin/sh undoes exactly, submitted with Ray's JobSubmissionClient. Run as a file (the job
scripts do): it needs only the standard library and Ray. Exit status 0 when the job succeeded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import time
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", required=True, help="the Ray head's dashboard, http://HOST:8265")
    parser.add_argument("--runtime-env-json", default=None, help="the job's runtime_env, as JSON")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the job's command, one argument each")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the job's command after --")
    # Ray keeps the entrypoint in its job table (`ray job list`, the dashboard): it must hold no secret.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from redact import mask_argv  # the one masker, as a file: this script runs outside the package

    if mask_argv(command) != list(command):
        parser.error(
            "the job's command holds a secret (a secret-named flag's value, or the value of a secret environment "
            "variable); Ray would store it in its job table. Pass --logger.wandb.key env and set the variable where "
            "`ray start` runs"
        )
    runtime_env = json.loads(args.runtime_env_json) if args.runtime_env_json else None

    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(args.address)
    job_id = client.submit_job(entrypoint=shlex.join(command), runtime_env=runtime_env)
    print(f"submit_job: job '{job_id}' submitted; following its log", flush=True)

    async def follow() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    asyncio.run(follow())
    status = client.get_job_status(job_id)
    while not status.is_terminal():  # the log can end a moment before the status is final
        time.sleep(1)
        status = client.get_job_status(job_id)
    print(f"submit_job: job '{job_id}' {str(status.value).lower()}", flush=True)
    return 0 if status == JobStatus.SUCCEEDED else 1


if __name__ == "__main__":
    sys.exit(main())
