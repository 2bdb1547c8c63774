"""A one-node SLURM cluster on this machine for tests: munge, slurmctld and slurmd from Debian's
packages (.ci/run installs them), a generated slurm.conf for this host, free ports.

    with SlurmCluster(tmp_path) as cluster:
        subprocess.run(["sbatch", ...], env=cluster.env)    # SLURM_CONF points at its config

It needs root (the daemons run as root, munged as user munge). Where it cannot start, it raises
ClusterError with the reason.
"""
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scancel")


class ClusterError(RuntimeError):
    pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def missing_reason():
    """Why no cluster can start here, or None."""
    missing = [name for name in DAEMONS if shutil.which(name) is None
               and not Path("/usr/sbin", name).exists()]
    if missing:
        return f"no {', '.join(missing)} (Debian: apt-get install slurmctld slurmd slurm-client munge)"
    if os.geteuid() != 0:
        return "the test cluster's daemons need root"
    return None


class SlurmCluster:
    def __init__(self, folder, cpus=None):
        self.folder, self.cpus = Path(folder), cpus or os.cpu_count()
        self.host, self.processes = socket.gethostname().split(".")[0], []
        self.conf = self.folder / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))

    def __enter__(self):
        reason = missing_reason()
        if reason:
            raise ClusterError(reason)
        for name in ("state", "spool", "log"):
            (self.folder / name).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(self.config())
        start_munge()
        try:
            for daemon in ("slurmctld", "slurmd"):
                log = open(self.folder / "log" / f"{daemon}.out", "w")
                self.processes.append(subprocess.Popen(
                    [daemon, "-D", "-f", str(self.conf)], stdout=log, stderr=subprocess.STDOUT,
                    env=self.env, start_new_session=True))
            self.wait_idle(60)
        except BaseException:
            self.__exit__()
            raise
        return self

    def config(self):
        f = self.folder
        return "\n".join([
            "ClusterName=nastytest", f"SlurmctldHost={self.host}", "SlurmUser=root",
            "SlurmdUser=root", "AuthType=auth/munge", "CredType=cred/munge",
            f"StateSaveLocation={f}/state", f"SlurmdSpoolDir={f}/spool",
            f"SlurmctldPidFile={f}/slurmctld.pid", f"SlurmdPidFile={f}/slurmd.pid",
            f"SlurmctldLogFile={f}/log/slurmctld.log", f"SlurmdLogFile={f}/log/slurmd.log",
            f"SlurmctldPort={free_port()}", f"SlurmdPort={free_port()}",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
            "SchedulerType=sched/backfill", "SchedulerParameters=sched_interval=1",
            "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
            "MpiDefault=none", "ReturnToService=2", "MinJobAge=600", "KillWait=30",
            f"NodeName={self.host} CPUs={self.cpus} State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=60 DefaultTime=30 State=UP", ""])

    def wait_idle(self, seconds):
        deadline = time.time() + seconds
        while time.time() < deadline:
            for process in self.processes:
                if process.poll() is not None:
                    raise ClusterError(f"{process.args[0]} ended (exit {process.returncode}); see "
                                       f"{self.folder / 'log'}")
            done = subprocess.run(["sinfo", "--noheader", "--format=%t"], env=self.env,
                                  capture_output=True, text=True)
            if done.returncode == 0 and done.stdout.strip() in ("idle", "mix", "alloc"):
                return
            time.sleep(0.5)
        raise ClusterError(f"the node was not idle after {seconds} s; see {self.folder / 'log'}")

    def squeue(self):
        """{job id: state} of every job the controller knows."""
        out = subprocess.run(["squeue", "--noheader", "--states=all", "--format=%i|%T"],
                             env=self.env, capture_output=True, text=True, check=True).stdout
        return dict(line.split("|") for line in out.split())

    def __exit__(self, *exc):
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        self.processes = []


def start_munge():
    """munged as user munge, unless one answers already."""
    if subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode == 0:
        return
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    key = Path("/etc/munge/munge.key")
    if not key.is_file():
        subprocess.run(["mungekey", "--create"], check=True, capture_output=True)
        shutil.chown(key, "munge", "munge")
    done = subprocess.run(["runuser", "-u", "munge", "--", "munged"], capture_output=True, text=True)
    if done.returncode != 0:
        raise ClusterError(f"munged did not start: {done.stderr.strip()}")
