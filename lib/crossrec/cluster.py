"""A real Spark standalone cluster and a real Ray cluster on loopback, for cluster-mode runs and fault tests.

    crossrec cluster up   [--state DIR --spark-workers 2 --worker-cores 1 --worker-memory 2g]
    crossrec cluster connect [--state DIR --connect-master local[2]]
    crossrec cluster down [--state DIR]
    crossrec cluster status [--state DIR]

``up`` starts, each as its own OS process (``spark-class`` from the installed pyspark, ``ray start``):

* a Spark master on ``spark://127.0.0.1:<port>`` and ``--spark-workers`` workers registered with it;
* a Ray head (``ray start --head``) and one more Ray worker node joined to it.

It waits until the master reports every worker ALIVE and Ray reports two nodes, then writes ``<state>/cluster.json``
(master URL, Ray address, PIDs, log files) and prints the ``spark-submit`` / ``--ray-address`` settings to use.
``down`` stops everything ``up`` started. The Ray cluster runs without token authentication (loopback only):
drivers connecting to it set ``RAY_AUTH_MODE=disabled``. The processes are plain daemons: kill one (e.g. a Spark worker during
scoring) to inject a fault.

``connect`` starts a Spark Connect server (``SparkConnectServer`` through the installed pyspark's ``spark-submit``, the
Delta jars from Maven, Delta's SQL extension) on ``sc://127.0.0.1:<port>``, for jobs run with ``--spark-remote``; it
writes ``<state>/connect.json``, and ``down`` stops it too.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_STATE = ".crossrec-cluster"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spark_home() -> str:
    import pyspark

    return os.path.dirname(pyspark.__file__)


def _spawn(cmd: list[str], log_file: Path, env: dict | None = None) -> int:
    fh = open(log_file, "w")  # noqa: SIM115 - the daemon keeps writing after we return
    p = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    return p.pid


def _master_json(ui_port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=2) as r:
            return json.loads(r.read().decode())
    except OSError:
        return None


def up(state: str = DEFAULT_STATE, spark_workers: int = 2, worker_cores: int = 1, worker_memory: str = "2g",
       ray_cpus: int = 1, timeout_s: float = 120.0) -> dict:
    """Start the clusters; returns (and writes) the state."""
    root = Path(state).resolve()
    if (root / "cluster.json").exists():
        raise RuntimeError(f"a cluster is already up ({root / 'cluster.json'}): `crossrec cluster down --state {state}` first")
    root.mkdir(parents=True, exist_ok=True)
    home = spark_home()
    env = dict(os.environ, SPARK_HOME=home, SPARK_LOCAL_IP="127.0.0.1", SPARK_WORKER_DIR=str(root / "spark-work"))
    spark_class = os.path.join(home, "bin", "spark-class")
    port, ui = _free_port(), _free_port()
    master = f"spark://127.0.0.1:{port}"
    pids = {"spark_master": _spawn([spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                                    "--port", str(port), "--webui-port", str(ui)], root / "spark-master.log", env)}
    for k in range(spark_workers):
        pids[f"spark_worker_{k}"] = _spawn(
            [spark_class, "org.apache.spark.deploy.worker.Worker", master, "--host", "127.0.0.1", "--cores",
             str(worker_cores), "--memory", worker_memory, "--webui-port", str(_free_port())],
            root / f"spark-worker-{k}.log", env)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        info = _master_json(ui)
        if info and sum(w.get("state") == "ALIVE" for w in info.get("workers", [])) >= spark_workers:
            break
        time.sleep(1)
    else:
        down(state)
        raise RuntimeError(f"Spark workers did not register with {master} in {timeout_s:.0f}s; see {root}/spark-*.log")

    ray = shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray"
    ray_port = _free_port()
    # Ray's socket paths must stay under 107 bytes (AF_UNIX): a short temp dir, not one inside ``state``
    import tempfile

    ray_tmp = tempfile.mkdtemp(prefix="crx-ray-", dir="/tmp" if os.path.isdir("/tmp") else None)
    # a loopback test cluster: no token auth (drivers connecting to it need RAY_AUTH_MODE=disabled too)
    ray_env = dict(os.environ, RAY_TMPDIR=ray_tmp, RAY_AUTH_MODE="disabled")
    r = subprocess.run([ray, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(ray_port),
                        "--num-cpus", str(ray_cpus), "--include-dashboard", "false", "--temp-dir", ray_tmp],
                       capture_output=True, text=True, env=ray_env)
    if r.returncode != 0:
        down(state)
        raise RuntimeError(f"ray start --head failed: {r.stderr[-2000:]}")
    address = f"127.0.0.1:{ray_port}"
    r = subprocess.run([ray, "start", "--address", address, "--node-ip-address", "127.0.0.1", "--num-cpus",
                        str(ray_cpus)], capture_output=True, text=True, env=ray_env)
    if r.returncode != 0:
        down(state)
        raise RuntimeError(f"ray start (worker node) failed: {r.stderr[-2000:]}")
    info = {"spark_master": master, "spark_ui": f"http://127.0.0.1:{ui}", "ray_address": address, "pids": pids,
            "state_dir": str(root), "spark_home": home, "ray": ray, "ray_tmp": ray_tmp}
    (root / "cluster.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    log.info("Spark master %s (%d workers), Ray cluster %s (2 nodes); state in %s", master, spark_workers, address, root)
    return info


def delta_package() -> str:
    """Maven coordinates of the Delta jar for the installed pyspark and delta-spark (what the embedded session asks
    for through ``configure_spark_with_delta_pip``)."""
    from importlib.metadata import version

    spark = ".".join(version("pyspark").split(".")[:2])
    return f"io.delta:delta-spark_{spark}_2.13:{version('delta-spark')}"


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def connect(state: str = DEFAULT_STATE, master: str = "local[2]", timeout_s: float = 300.0,
            conf: dict[str, str] | None = None) -> dict:
    """Start a Spark Connect server with Delta on loopback (``master``: its Spark master; ``conf``: more settings,
    whose ``spark.jars.packages`` join Delta's, e.g. :func:`crossrec.io.spark.with_object_store` for an ``s3a://``
    lake); wait until it accepts connections; return (and write to ``<state>/connect.json``) ``{"url", "pid", "log"}``."""
    root = Path(state).resolve()
    if (root / "connect.json").exists():
        raise RuntimeError(f"a Connect server is already up ({root / 'connect.json'}): `crossrec cluster down --state {state}` first")
    root.mkdir(parents=True, exist_ok=True)
    home = spark_home()
    port = _free_port()
    from crossrec.io.spark import LOCAL_CONF

    # a local master: the server is the one JVM that runs every job, sized and set up as an embedded session
    settings = {**(LOCAL_CONF if master.startswith("local") else {}),
                "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
                "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
                "spark.connect.grpc.binding.address": "127.0.0.1", "spark.connect.grpc.binding.port": str(port),
                "spark.ui.enabled": "false", "spark.sql.session.timeZone": "UTC",
                "spark.driver.extraJavaOptions": "-Duser.timezone=UTC", **(conf or {})}
    packages = ",".join(p for p in (delta_package(), settings.pop("spark.jars.packages", "")) if p)
    cmd = [os.path.join(home, "bin", "spark-submit"), "--class", "org.apache.spark.sql.connect.service.SparkConnectServer",
           "--master", master, "--packages", packages]
    for k, v in settings.items():
        cmd += ["--conf", f"{k}={v}"]
    env = dict(os.environ, SPARK_HOME=home, SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable)
    log_file = root / "spark-connect.log"
    pid = _spawn(cmd, log_file, env)
    deadline = time.time() + timeout_s
    while not _accepts(port):
        if not _alive(pid) or time.time() > deadline:
            try:
                os.killpg(pid, signal.SIGTERM)
            except OSError:
                pass
            tail = log_file.read_text(encoding="utf-8", errors="replace")[-2000:]
            raise RuntimeError(f"the Spark Connect server did not listen on port {port} in {timeout_s:.0f}s "
                               f"({'exited' if not _alive(pid) else 'timed out'}); {log_file} ends:\n{tail}")
        time.sleep(1)
    info = {"url": f"sc://127.0.0.1:{port}", "pid": pid, "log": str(log_file)}
    (root / "connect.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    log.info("Spark Connect server on %s (master %s, pid %d); log %s", info["url"], master, pid, log_file)
    return info


def status(state: str = DEFAULT_STATE) -> dict | None:
    """The state written by :func:`up` (None when no cluster is up), with each process's liveness."""
    f = Path(state).resolve() / "cluster.json"
    if not f.exists():
        return None
    info = json.loads(f.read_text(encoding="utf-8"))
    info["alive"] = {name: _alive(pid) for name, pid in info["pids"].items()}
    return info


def _alive(pid: int) -> bool:
    """True while the process runs (a killed child not yet reaped -- a zombie -- counts as dead)."""
    try:
        import psutil

        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except ImportError:
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False
    except Exception:  # psutil.NoSuchProcess / AccessDenied
        return False


def ray_processes(ray_tmp: str) -> list:
    """The live processes (psutil) of the Ray cluster whose temp dir is ``ray_tmp``: those whose command line or
    ``RAY_TMPDIR`` names it (Ray daemons rename themselves, e.g. ``ray::DashboardAgent``)."""
    import psutil

    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.pid != os.getpid() and (any(ray_tmp in a for a in (p.info["cmdline"] or []))
                                         or p.environ().get("RAY_TMPDIR") == ray_tmp):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _stop_ray(ray_tmp: str, grace_s: float = 10.0) -> int:
    """SIGTERM, then SIGKILL, every process of *this* Ray cluster (:func:`ray_processes`).

    Not ``ray stop``: that stops every Ray instance on the machine, a local ``ray.init()`` of another process too.
    Returns how many processes were signalled.
    """
    import psutil

    procs = ray_processes(ray_tmp)
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    log.info("stopped %d Ray processes of %s", len(procs), ray_tmp)
    return len(procs)


def down(state: str = DEFAULT_STATE) -> None:
    """Stop every process :func:`up` started (Spark daemons by PID, the Ray nodes by their temp dir)."""
    root = Path(state).resolve()
    f = root / "cluster.json"
    info = json.loads(f.read_text(encoding="utf-8")) if f.exists() else {}
    c = root / "connect.json"
    if c.exists():
        try:
            os.killpg(json.loads(c.read_text(encoding="utf-8"))["pid"], signal.SIGTERM)
        except OSError:
            pass
        c.unlink()
    for name, pid in (info.get("pids") or {}).items():
        try:
            os.killpg(pid, signal.SIGTERM)
        except OSError:
            pass
    if info.get("ray_tmp"):
        _stop_ray(info["ray_tmp"])
        shutil.rmtree(info["ray_tmp"], ignore_errors=True)
    if f.exists():
        f.unlink()
    log.info("cluster in %s stopped", root)


__all__ = ["up", "down", "status", "ray_processes", "DEFAULT_STATE"]
