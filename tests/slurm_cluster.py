"""A real single-host SLURM cluster for the tests: Debian's slurm-wlm and munge, two nodes n1/n2.

``SlurmCluster.start(workdir)`` installs the packages if they are missing (root
and apt-get needed), starts munged as the munge user, writes a slurm.conf (state
and logs under ``workdir``), and starts slurmctld plus one slurmd per node on
its own port. Anything that cannot be done raises ``SlurmUnavailable`` with the
reason, which the tests turn into a skip.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

NODES = ("n1", "n2")


class SlurmUnavailable(RuntimeError):
    pass


def _run(cmd, env=None, check=True, timeout=120, cwd=None) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd)
    if check and result.returncode != 0:
        raise SlurmUnavailable(f"{' '.join(cmd)} failed ({result.returncode}): {(result.stderr or result.stdout)[-500:]}")
    return result


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _install() -> None:
    if shutil.which("slurmctld") and shutil.which("munged"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SlurmUnavailable("slurm-wlm is not installed and cannot be installed here (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "slurm-wlm", "munge"]
    if _run(cmd, env=env, check=False, timeout=600).returncode != 0:
        _run(["apt-get", "update", "-q"], env=env, timeout=600)
        _run(cmd, env=env, timeout=600)


def _start_munge() -> None:
    if _run(["pgrep", "-x", "munged"], check=False).returncode == 0:
        return
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        maker = shutil.which("mungekey") or shutil.which("create-munge-key")
        if not maker:
            raise SlurmUnavailable("no munge key and no tool to create one")
        _run([maker] + (["--create"] if maker.endswith("mungekey") else []))
        shutil.chown(key, "munge", "munge")
    for folder in ("/run/munge", "/var/log/munge", "/var/lib/munge"):
        os.makedirs(folder, exist_ok=True)
        shutil.chown(folder, "munge", "munge")
    _run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"])


def _hosts() -> None:
    hosts = Path("/etc/hosts")
    text = hosts.read_text()
    missing = [n for n in NODES if not re.search(rf"\s{n}(\s|$)", text)]
    if missing:
        hosts.write_text(text.rstrip("\n") + "\n127.0.0.1 " + " ".join(missing) + "\n")


class SlurmCluster:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.conf = workdir / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        for key in [k for k in self.env if k.startswith("SLURM_") and k != "SLURM_CONF"]:
            self.env.pop(key)

    @classmethod
    def start(cls, workdir: Path) -> "SlurmCluster":
        _install()
        _start_munge()
        _hosts()
        cluster = cls(workdir)
        cluster._write_conf()
        cluster._start_daemons()
        return cluster

    def _write_conf(self) -> None:
        ctl, *node_ports = _free_ports(1 + len(NODES))
        w = self.workdir
        cpus = max(2, os.cpu_count() or 2)
        lines = [
            "ClusterName=brushtrain-test", "SlurmctldHost=localhost", f"SlurmctldPort={ctl}", "SlurmUser=root",
            "AuthType=auth/munge", "CredType=cred/munge", "MpiDefault=none",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU", "SchedulerType=sched/backfill",
            "SchedulerParameters=batch_sched_delay=0", "ReturnToService=2", "MinJobAge=600",
            "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
            f"StateSaveLocation={w}/state", f"SlurmdSpoolDir={w}/spool-%n", f"SlurmctldPidFile={w}/slurmctld.pid",
            f"SlurmdPidFile={w}/slurmd-%n.pid", f"SlurmctldLogFile={w}/slurmctld.log", f"SlurmdLogFile={w}/slurmd-%n.log",
            "SlurmctldTimeout=30", "SlurmdTimeout=30", "KillWait=10",
        ]
        for node, port in zip(NODES, node_ports):
            lines.append(f"NodeName={node} NodeAddr=127.0.0.1 Port={port} CPUs={cpus} State=UNKNOWN")
        lines.append(f"PartitionName=test Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE")
        (w / "state").mkdir(parents=True, exist_ok=True)
        self.conf.write_text("\n".join(lines) + "\n")

    def _start_daemons(self) -> None:
        _run(["slurmctld", "-i"], env=self.env)
        for node in NODES:
            _run(["slurmd", "-N", node], env=self.env)
        deadline = time.time() + 60
        while time.time() < deadline:
            states = _run(["sinfo", "-h", "-o", "%T"], env=self.env, check=False).stdout.split()
            if states and all(s == "idle" for s in states):
                return
            time.sleep(0.5)
        raise SlurmUnavailable(f"nodes did not become idle: {states}; see {self.workdir}")

    def stop(self) -> None:
        _run(["scontrol", "shutdown"], env=self.env, check=False)
        time.sleep(1)
        for pidfile in self.workdir.glob("*.pid"):
            try:
                os.kill(int(pidfile.read_text().strip()), 9)
            except (OSError, ValueError):
                pass

    # ---------------------------------------------------------------- jobs

    def submit(self, script: str, args: list[str], options: list[str], cwd: Path) -> str:
        result = _run(["sbatch", "--parsable", *options, script, *args], env=self.env, cwd=cwd)
        return result.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict:
        out = _run(["scontrol", "show", "job", "-o", job_id], env=self.env, check=False).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def signal(self, job_id: str, sig: str) -> None:
        _run(["scancel", f"--signal={sig}", job_id], env=self.env)

    def release(self, job_id: str) -> None:
        """A requeued job may start again only after 120 s: let it start now."""
        _run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], env=self.env, check=False)

    def cancel(self, job_id: str) -> None:
        _run(["scancel", job_id], env=self.env, check=False)
