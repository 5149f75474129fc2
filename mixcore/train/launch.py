"""`mixcore train --nproc-per-node N`: the run's processes, started by Paddle's own launcher.

mixcore starts no process group of its own. The command validates the config for the world it is
about to make (``nnodes x nproc_per_node`` processes), then runs ``python -m
paddle.distributed.launch`` with the same interpreter, which starts ``python -m mixcore train``
once per process (gloo on CPUs, NCCL on GPUs), watches them, and stops them all when one fails.
Each rank's output goes to ``output_dir/logs`` (the launcher's ``--log_dir``): ``workerlog.N``
per rank, the environment each one saw, and one line per rank that mixcore writes when it ends,
which is how the exit code of this command names the rank that failed first.

The launcher cannot run a module itself (``-m mixcore`` turns it into its older mode, which
runs ``mixcore`` as a script path): the training program it is given is the interpreter, with
``-m mixcore train ...`` as that program's arguments.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mixcore.api.errors import UsageError
from mixcore.train.output import prepare_launch

#: The folder of ``output_dir`` that the launcher writes every rank's logs into.
LOG_FOLDER = "logs"
#: Written by each process into the log folder as it ends: its exit code (by local rank,
#: like the launcher's ``workerlog.N``).
RANK_EXIT = "rank_exit.{rank}"


class LaunchError(UsageError):
    """The launch options do not describe a run."""


@dataclass(frozen=True)
class LaunchPlan:
    """Where the processes of a run are: ``nproc_per_node`` on each of ``nnodes`` machines."""

    nproc_per_node: int
    nnodes: int = 1
    master: str | None = None  # HOST:PORT of the rendezvous (the launcher's --master)
    rank: int | None = None  # this machine's rank among the nodes (the master assigns if None)

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    def check(self) -> None:
        if self.nnodes > 1 and not self.master:
            raise LaunchError(
                f"--nnodes {self.nnodes} needs --master HOST:PORT, the address every machine "
                "reaches the first one at (the same on every machine)"
            )
        if self.master is not None:
            host, _, port = self.master.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise LaunchError(
                    f"--master {self.master!r}: expected HOST:PORT, e.g. 10.0.0.1:8090"
                )
        if self.nnodes > 1 and self.rank is None:
            raise LaunchError(
                f"--nnodes {self.nnodes} needs --rank R, this machine's rank from 0 to "
                f"{self.nnodes - 1} (0 on the machine --master names)"
            )
        if self.rank is not None and not 0 <= self.rank < self.nnodes:
            raise LaunchError(f"--rank {self.rank}: a node rank from 0 to {self.nnodes - 1}")

    @property
    def first_node(self) -> bool:
        """Whether this machine holds rank 0, which owns the output folder."""
        return not self.rank

    def log_folder(self) -> str:
        """This machine's log folder in output_dir: ``logs``, or ``logs/node-R`` of several
        machines (which share output_dir, so each writes its own ``workerlog.N``)."""
        return LOG_FOLDER if self.nnodes == 1 else f"{LOG_FOLDER}/node-{self.rank}"


def launcher_command(
    plan: LaunchPlan, log_dir: Path, train_args: Sequence[str], *, verbose: bool = False
) -> list[str]:
    """The ``python -m paddle.distributed.launch`` command line that runs ``mixcore train
    <train_args>`` in every process of ``plan``."""
    command = [
        sys.executable,
        "-m",
        "paddle.distributed.launch",
        "--nproc_per_node",
        str(plan.nproc_per_node),
        "--nnodes",
        str(plan.nnodes),
        "--log_dir",
        str(log_dir),
        "--job_id",
        "mixcore",
    ]
    if plan.master:
        command += ["--master", plan.master]
    if plan.rank is not None:
        command += ["--rank", str(plan.rank)]
    if not verbose:  # its configuration table and progress lines; errors stay
        command += ["--log_level", "WARNING"]
    return [*command, sys.executable, "-u", "-m", "mixcore", "train", *train_args]


def record_rank_exit(code: int) -> None:
    """In a process of a launch whose log folder a mixcore run recorded as its own (an
    output_dir's ``logs``): write its exit code there, for the parent to say which process
    failed. Nothing is written in a log folder of anyone else's."""
    from mixcore.run_folder import read_run_record

    folder = os.environ.get("PADDLE_LOG_DIR")
    local = os.environ.get("PADDLE_LOCAL_RANK", os.environ.get("PADDLE_TRAINER_ID", ""))
    if not folder or not local.isdigit():
        return
    path = Path(folder)
    # output_dir/logs or output_dir/logs/node-R: the run record of output_dir names "logs".
    if not any(
        path.relative_to(above).parts[0] in read_run_record(above).get("files", [])
        for above in list(path.parents)[:2]
    ):
        return
    with contextlib.suppress(OSError):  # the exit code itself still reaches the launcher
        (path / RANK_EXIT.format(rank=local)).write_text(f"{code}\n", encoding="ascii")


def rank_exits(log_dir: Path) -> dict[int, int]:
    """The exit codes this node's processes of the last launch recorded, by local rank."""
    codes = {}
    for path in log_dir.glob(RANK_EXIT.format(rank="*")):
        rank = path.name.rpartition(".")[2]
        try:
            text = path.read_text(encoding="ascii").strip()
        except OSError:
            continue
        if rank.isdigit() and text.lstrip("-").isdigit():
            codes[int(rank)] = int(text)
    return codes


def error_lines(log: Path, last: int = 5) -> list[str]:
    """What a process's log says went wrong: its ``error:`` lines (mixcore's own way of saying
    it), else its last ``last`` lines."""
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    errors = [line for line in lines if line.startswith("error:")]
    return errors[-last:] if errors else [line for line in lines if line.strip()][-last:]


def cpu_threads_per_rank(nproc_per_node: int) -> str:
    """OMP threads for each of ``nproc_per_node`` processes sharing this machine's cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return str(max(1, (cores or 1) // nproc_per_node))


def launch_training(
    plan: LaunchPlan,
    *,
    output_dir: Path,
    overwrite: bool,
    resume: bool,
    train_args: Sequence[str],
    report: Callable[[str], None],
    verbose: bool = False,
    env: dict[str, str] | None = None,
) -> int:
    """Run the launcher for ``plan`` (the config is already validated for its world size) and
    return this command's exit code: 0 when every rank finished; otherwise the code of the
    lowest rank that ended by itself with one (2 for a problem in the config or data, 1 for a
    failure), 1 when none did (a rank killed from outside)."""
    log_dir = output_dir / plan.log_folder()
    # The first machine's rank 0 owns output_dir (it records the run, the log folder included);
    # every machine clears its own log folder of an earlier run's when overwriting.
    prepare_launch(
        output_dir,
        plan.log_folder(),
        overwrite=overwrite,
        resume=resume,
        record=plan.first_node,
    )
    for path in log_dir.glob(RANK_EXIT.format(rank="*")):  # an earlier launch's, when resuming
        path.unlink()
    env = dict(os.environ if env is None else env)
    env.setdefault("OMP_NUM_THREADS", cpu_threads_per_rank(plan.nproc_per_node))
    if not verbose:  # Paddle's C++ INFO lines of each rank (its TCP store connecting, ...)
        env.setdefault("GLOG_minloglevel", "1")
    command = launcher_command(plan, log_dir, train_args, verbose=verbose)
    where = f" on node {plan.rank}" if plan.rank is not None else ""
    report(
        f"launching {plan.nproc_per_node} process(es){where} of {plan.world_size} in all "
        f"(paddle.distributed.launch); each rank's log: {log_dir}/workerlog.N"
    )
    returncode = subprocess.run(command, env=env, check=False).returncode
    if returncode == 0:
        return 0
    failed = {rank: code for rank, code in sorted(rank_exits(log_dir).items()) if code != 0}
    if failed:
        local, code = next(iter(failed.items()))
        log = log_dir / f"workerlog.{local}"
        report(
            f"error: process {local} of this node failed (exit code {code}); the launcher "
            f"stopped the others. Its log: {log}"
        )
        for line in error_lines(log):
            report(f"  {line}")
        return code if code in (1, 2) else 1
    report(
        f"error: the launch failed (launcher exit code {returncode}) before a rank ended by "
        f"itself; the logs are in {log_dir}"
    )
    return 1
