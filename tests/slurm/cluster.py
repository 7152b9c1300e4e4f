"""A two-node SLURM cluster on this machine, for the tests marked `slurm` and for a developer's hands.

    python -m tests.slurm.cluster up     # make slurm-up: installs the packages if missing, starts the cluster
    python -m tests.slurm.cluster down   # make slurm-down: stops it
    python -m tests.slurm.cluster install   # .ci/run: only the packages (the tests start their own cluster)

Debian's packages (`slurmctld slurmd slurm-client munge`) run without systemd or cgroups when slurm.conf asks for
`proctrack/linuxproc` and `task/none`. Everything lives in one folder (config, state, logs, a private munge key
and socket, ports of its own), so a cluster of the machine, if any, is left alone; client commands find it through
`SLURM_CONF`. There is no accounting daemon: `sacct`, which submitit polls for job states, is replaced on the PATH
by a stand-in that answers from `scontrol show job`.

Standard library only: `make slurm-up` works before the project's environment exists.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
COMMANDS = ["slurmctld", "slurmd", "sbatch", "srun", "scontrol", "sinfo", "squeue", "scancel", "munged"]
PARTITION = "cpu"
DEFAULT_DIR = Path(os.environ.get("WRNCIFAR_SLURM_DIR", "/tmp/wrncifar-slurm"))
START_TIMEOUT_S = 60
SBIN = ("/usr/sbin", "/sbin")

# submitit runs `sacct -o JobID,State,NodeList --parsable2 -j <id> …` and reads a `|`-separated table with a header.
SACCT_STAND_IN = r'''#!/usr/bin/env python3
"""sacct without slurmdbd: the columns asked for (-o/--format), for the jobs asked for (-j), from `scontrol show job`.
Array tasks are named <array job>_<task> and a pending array remainder <array job>_[<tasks>], as sacct does."""
import subprocess, sys

columns, jobs, args = ["JobID", "State", "NodeList"], [], iter(sys.argv[1:])
for arg in args:
    name, eq, value = arg.partition("=")
    if name in ("-o", "--format"):
        columns = (value if eq else next(args)).split(",")
    elif name in ("-j", "--jobs"):
        jobs += (value if eq else next(args)).split(",")
fields = {"jobid": "JobId", "state": "JobState", "nodelist": "NodeList", "exitcode": "ExitCode", "jobname": "JobName"}
print("|".join(columns))
for job in sorted({j.split("_")[0] for j in jobs}) or [""]:
    shown = subprocess.run(["scontrol", "show", "job", "-o", *([job] if job else [])], capture_output=True, text=True)
    for line in shown.stdout.splitlines():
        record = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if "JobId" not in record:
            continue
        task = record.get("ArrayTaskId", "").split("%")[0]
        if task:
            record["JobId"] = record["ArrayJobId"] + ("_[" + task + "]" if "-" in task or "," in task else "_" + task)
        print("|".join(record.get(fields.get(c.lower(), c), "") for c in columns))
'''


@dataclass
class Cluster:
    """A running cluster: its folder, config, nodes and the environment its clients need."""

    folder: Path
    nodes: list[str]

    @property
    def conf(self) -> Path:
        return self.folder / "slurm.conf"

    @property
    def bin(self) -> Path:
        return self.folder / "bin"

    def env(self) -> dict[str, str]:
        """Variables a client process (sbatch, submitit, the test) needs to use this cluster."""
        return {"SLURM_CONF": str(self.conf), "PATH": f"{self.bin}:{os.environ.get('PATH', '')}"}

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        """A SLURM client command against this cluster."""
        result = subprocess.run(command, env={**os.environ, **self.env()}, capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")
        return result


def missing_commands() -> list[str]:
    path = os.pathsep.join([os.environ.get("PATH", ""), *SBIN])
    return [c for c in COMMANDS if shutil.which(c, path=path) is None]


def install_packages() -> str | None:
    """Install the Debian packages when a command is missing; the reason when they cannot be installed."""
    if not missing_commands():
        return None
    if os.geteuid() != 0:
        return f"SLURM is not installed ({', '.join(missing_commands())} missing) and installing it needs root"
    if shutil.which("apt-get") is None:
        return f"SLURM is not installed ({', '.join(missing_commands())} missing) and this machine has no apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
    result = subprocess.run(install, env=env, capture_output=True, text=True)
    if result.returncode != 0:  # a fresh machine: no package lists yet
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, text=True)
        result = subprocess.run(install, env=env, capture_output=True, text=True)
    if result.returncode != 0 or missing_commands():
        tail = (result.stdout + result.stderr).strip().splitlines()[-3:]
        return f"apt-get install {' '.join(PACKAGES)} failed: {' / '.join(tail)}"
    return None


def start_reason() -> str | None:
    """Why a cluster cannot be started here, or None."""
    if sys.platform != "linux":
        return "a SLURM cluster runs on Linux only"
    if os.geteuid() != 0:
        return "slurmd must run as root to start jobs (run the SLURM tests as root, or in CI)"
    return install_packages()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_mb() -> int:
    with open("/proc/meminfo") as f:
        total_kb = int(next(line for line in f if line.startswith("MemTotal:")).split()[1])
    return total_kb // 1024 * 9 // 10  # what slurmd counts is a little less than MemTotal


def node_names() -> list[str]:
    """This machine (`hostname -s`) and `localhost`: two names that resolve here without touching /etc/hosts, as
    Lightning needs for the address of a job's first node."""
    host = socket.gethostname().split(".")[0]
    return [host, "localhost"] if host != "localhost" else ["localhost", "localhost.localdomain"]


def slurm_conf(folder: Path, nodes: list[str], cpus: int, memory: int) -> str:
    """slurm.conf for two nodes on this machine (one slurmd each, both with all its CPUs) in one partition,
    everything under `folder`."""
    node_lines = "\n".join(
        f"NodeName={name} NodeHostname={nodes[0]} NodeAddr=127.0.0.1 Port={free_port()} CPUs={cpus} "
        f"RealMemory={memory // len(nodes)} State=UNKNOWN"
        for name in nodes
    )
    return f"""\
# Two nodes on one machine, for tests (tests/slurm/cluster.py): jobs of several nodes (multi-node DDP) run here.
# No systemd, cgroups or accounting daemon.
ClusterName=wrncifar
SlurmctldHost={nodes[0]}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder}/munge/munge.socket
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool/%n
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd-%n.pid
SlurmctldLogFile={folder}/log/slurmctld.log
SlurmdLogFile={folder}/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
# Requeue (`scontrol requeue`, preemption with PreemptMode=REQUEUE) is what the tests exercise.
JobRequeue=1
PreemptType=preempt/none
PreemptMode=OFF
ReturnToService=2
SlurmdParameters=config_overrides
# Finished jobs stay visible to `scontrol show job` (the sacct stand-in) for an hour.
MinJobAge=3600
KillWait=30
InactiveLimit=0
SchedulerType=sched/backfill
{node_lines}
PartitionName={PARTITION} Nodes={",".join(nodes)} Default=YES MaxTime=INFINITE State=UP
"""


def start(folder: Path = DEFAULT_DIR) -> Cluster:
    """Write the config and start munged, slurmctld and slurmd in `folder`; return once the node is idle.
    RuntimeError (with the daemons' log tail) when it does not come up."""
    if (folder / "pids").is_file():
        stop(folder)
    for sub in ("munge", "state", "spool", "log", "bin"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    (folder / "munge").chmod(0o700)
    cluster = Cluster(folder, node_names())
    cluster.conf.write_text(slurm_conf(folder, cluster.nodes, os.cpu_count() or 1, memory_mb()))
    sacct = cluster.bin / "sacct"
    sacct.write_text(SACCT_STAND_IN)
    sacct.chmod(0o755)
    key = folder / "munge" / "munge.key"
    if not key.is_file():
        key.write_bytes(os.urandom(1024))
    key.chmod(0o400)

    sbin = os.pathsep.join([*SBIN, os.environ.get("PATH", "")])
    env = {**os.environ, **cluster.env(), "PATH": sbin}
    munge = folder / "munge"
    munged = ["munged", "-F", "--force", f"--key-file={key}", f"--socket={munge / 'munge.socket'}"]
    munged += [f"--pid-file={munge / 'munged.pid'}", f"--seed-file={munge / 'munged.seed'}"]
    daemons = [
        [*munged, f"--log-file={folder / 'log' / 'munged.log'}"],
        ["slurmctld", "-D", "-i", "-f", str(cluster.conf)],
        *(["slurmd", "-D", "-N", node, "-f", str(cluster.conf)] for node in cluster.nodes),
    ]
    pids = []
    for command in daemons:
        log = (folder / "log" / f"{command[0]}.out").open("w")
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        pids.append(f"{command[0]} {process.pid}")
        (folder / "pids").write_text("\n".join(pids) + "\n")
        if command[0] == "munged":
            wait_for(lambda: (munge / "munge.socket").exists(), "munged's socket", folder)
        if command[0] == "slurmctld":
            wait_for(lambda: cluster.run("scontrol", "ping", check=False).returncode == 0, "slurmctld", folder)
    wait_for(lambda: node_states(cluster) == ["idle"] * len(cluster.nodes), "idle nodes", folder)
    return cluster


def node_states(cluster: Cluster) -> list[str]:
    states = cluster.run("sinfo", "-h", "-N", "-o", "%N %T", check=False).stdout.split("\n")
    pairs = [line.split() for line in states if line.strip()]
    for node, state in pairs:
        if state.startswith(("down", "drain")):
            cluster.run("scontrol", "update", f"NodeName={node}", "State=RESUME", check=False)
    return [state for _, state in pairs]


def wait_for(condition, what: str, folder: Path, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    logs = "".join(
        f"\n--- {p.name}:\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:])
        for p in sorted((folder / "log").glob("*"))
    )
    stop(folder)
    raise RuntimeError(f"SLURM cluster in {folder}: no {what} after {timeout:.0f} s{logs}")


def stop(folder: Path = DEFAULT_DIR) -> None:
    """Cancel the cluster's jobs, then stop its daemons by the PIDs recorded at start (slurmd, slurmctld, munged)."""
    pids_file = folder / "pids"
    if not pids_file.is_file():
        return
    cluster = Cluster(folder, node_names())
    if cluster.conf.is_file():
        try:
            cluster.run("scancel", "--full", "--partition", PARTITION, check=False)
            deadline = time.monotonic() + 45  # KillWait (30 s) and a margin: job steps end with SIGKILL at the latest
            while time.monotonic() < deadline and cluster.run("squeue", "-h", check=False).stdout.strip():
                time.sleep(0.5)
        except (OSError, subprocess.TimeoutExpired):
            pass
    for line in reversed(pids_file.read_text().split("\n")):
        if not line.strip():
            continue
        name, pid = line.split()
        terminate(int(pid), name)
    pids_file.unlink()


def terminate(pid: int, name: str, timeout: float = 15) -> None:
    """SIGTERM the process `pid` if it is still `name`, SIGKILL after `timeout` s."""
    try:
        if Path(f"/proc/{pid}/comm").read_text().strip() not in (name, name[:15]):
            return  # the PID now belongs to someone else
        os.kill(pid, signal.SIGTERM)
    except (FileNotFoundError, ProcessLookupError):
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):  # reap our own child; another's is reaped by its parent
            os.waitpid(pid, os.WNOHANG)
        if not Path(f"/proc/{pid}").exists() or "Z" in _state(pid):
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return "X"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["up", "down", "install"])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"the cluster's folder (default {DEFAULT_DIR})")
    args = parser.parse_args()
    if args.action == "down":
        stop(args.dir)
        print(f"SLURM cluster in {args.dir} stopped")
        return
    reason = start_reason()
    if args.action == "install":  # never fails: where SLURM cannot run, the tests marked slurm say why they skip
        print(f"SLURM packages: {reason or 'installed'}")
        return
    if reason:
        raise SystemExit(f"Cannot start a SLURM cluster: {reason}")
    cluster = start(args.dir)
    nodes = ", ".join(cluster.nodes)
    print(f"SLURM cluster up: nodes {nodes} (both this machine), partition {PARTITION}, files in {args.dir}. Then:")
    print(f"  export SLURM_CONF={cluster.conf} PATH={cluster.bin}:$PATH   # sinfo, sbatch, submitit's sacct")
    print("Stop it with `make slurm-down`.")


if __name__ == "__main__":
    main()
