"""cluster.yaml validation (Ray's schema, Ray's checks, raal's checks) and a real two-node Ray cluster on loopback.

The multi-node test starts its own head and worker with `ray start --block` (own temp dir, own ports,
RAY_AUTH_MODE=disabled on every side), submits the demo through jobs/submit.sh, and stops exactly the processes
it started: SIGTERM to each blocking `ray start` (which stops that node), then anything left in their sessions.
"""
from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pyarrow.parquet as pq
import pytest
import yaml

from raal import cluster
from raal.cluster import ClusterConfigError, check_cluster

pytestmark = pytest.mark.timeout(420)

REPO = Path(__file__).resolve().parent.parent
CLUSTER_YAML = REPO / "cluster.yaml"
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def shipped():
    return yaml.safe_load(CLUSTER_YAML.read_text())


def mutated(base: dict, fn) -> dict:
    cfg = copy.deepcopy(base)
    fn(cfg)
    return cfg


# ---------------------------------------------------------------------------------------------------------------
# Validation, offline
# ---------------------------------------------------------------------------------------------------------------

def test_shipped_cluster_yaml_passes_every_check(shipped, capsys):
    prepared = check_cluster(CLUSTER_YAML)
    types = prepared["available_node_types"]
    assert prepared["head_node_type"] == "head"
    assert "GPU" not in types["head"]["resources"]
    gpu = types["gpu_worker"]
    assert (gpu["min_workers"], gpu["max_workers"], gpu["resources"]["GPU"]) == (0, 4, 1)
    assert types["head"]["max_workers"] == 0  # filled in by Ray's prepare_config
    # merged by Ray: the common setup commands precede the per-role ones, so both roles install the pins
    assert prepared["worker_setup_commands"][: len(shipped["setup_commands"])] == shipped["setup_commands"]
    assert cluster.main(["check", str(CLUSTER_YAML)]) == 0
    out = capsys.readouterr().out
    assert "cluster.yaml: OK" in out and "gpu_worker" in out and "workers 0..4" in out


def _schema_message(cfg: dict) -> str:
    """What jsonschema itself says about the config's most relevant violation."""
    schema = json.loads(cluster.ray_schema_path().read_text())
    return jsonschema.exceptions.best_match(jsonschema.Draft7Validator(schema).iter_errors(cfg)).message


@pytest.mark.parametrize("change, key, needle", [
    (lambda c: c["available_node_types"]["gpu_worker"]["resources"].update(GPU=0.5),
     "available_node_types.gpu_worker.resources.GPU", "0.5 is not of type 'integer'"),
    (lambda c: c["available_node_types"]["gpu_worker"].update(min_worker=1),
     "available_node_types.gpu_worker", "'min_worker' was unexpected"),
    (lambda c: c["available_node_types"]["gpu_worker"].pop("resources"),
     "available_node_types.gpu_worker", "'resources' is a required property"),
    (lambda c: c.update(idle_timeout_minutes="ten"), "idle_timeout_minutes", "'ten' is not of type 'number'"),
])
def test_malformed_cluster_yaml_is_rejected_with_the_schema_message(shipped, tmp_path, capsys, change, key, needle):
    bad = mutated(shipped, change)
    with pytest.raises(ClusterConfigError) as err:
        check_cluster(bad)
    expected = _schema_message(bad)
    assert needle in expected
    assert str(err.value).startswith(f"{key}: {expected}")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert cluster.main(["check", str(path)]) == 2
    assert f"raal.cluster: error: {path}: {key}: {expected}" in capsys.readouterr().err


@pytest.mark.parametrize("change, needle", [
    (lambda c: c.update(head_node_type="cpu_head"), "`head_node_type` must be one of `available_node_types`"),
    (lambda c: c["available_node_types"]["gpu_worker"].update(min_workers=5),
     "global `max_workers` is smaller than the sum of `min_workers`"),
    (lambda c: c["provider"].update(type="awz"), "Unsupported node provider: awz"),
])
def test_rays_own_validation_is_wrapped(shipped, change, needle):
    with pytest.raises(ClusterConfigError, match="ray rejects the cluster config") as err:
        check_cluster(mutated(shipped, change))
    assert needle in str(err.value)


@pytest.mark.parametrize("change, needle", [
    (lambda c: c["available_node_types"]["gpu_worker"].update(min_workers=3, max_workers=2),
     "available_node_types.gpu_worker: min_workers=3 is larger than max_workers=2"),
    (lambda c: c.update(setup_commands=[s.replace(" --require-hashes", "") for s in c["setup_commands"]]),
     "the nodes do not install raal's lock (~/raal-locks/cluster.txt) with --require-hashes"),
    (lambda c: c.update(setup_commands=[s.replace("cluster.txt", "dev.txt") for s in c["setup_commands"]]),
     "worker_setup_commands (with setup_commands): the nodes do not install raal's lock"),
    (lambda c: c["file_mounts"].pop("~/raal-locks"), "file_mounts: no node gets raal's lock locks/cluster.txt"),
    (lambda c: c.update(worker_setup_commands=["pip install torch"],
                        setup_commands=[s for s in c["setup_commands"] if "cluster.txt" not in s],
                        head_setup_commands=[s for s in c["setup_commands"] if "cluster.txt" in s]),
     "worker_setup_commands (with setup_commands): the nodes do not install raal's lock"),
    (lambda c: c.update(worker_start_ray_commands=["ray start --address=$RAY_HEAD_IP:6379"]),
     "sets RAY_AUTH_MODE=token but worker_start_ray_commands sets RAY_AUTH_MODE=unset"),
    (lambda c: c.update(file_mounts={}), "RAY_AUTH_MODE=token but no node gets the token"),
    (lambda c: c["available_node_types"]["head"]["resources"].update(GPU=1), "the head declares GPU=1"),
])
def test_raal_checks_catch_what_ray_misses(shipped, change, needle):
    bad = mutated(shipped, change)
    with pytest.raises(ClusterConfigError) as err:
        check_cluster(bad)
    assert any(needle in e for e in err.value.errors), err.value.errors
    if "min_workers=3" in needle:  # Ray itself accepts per-type min > max
        from ray.autoscaler._private.util import prepare_config, validate_config

        validate_config(prepare_config(copy.deepcopy(bad)))


def test_the_lock_reaches_nodes_as_a_file_or_a_folder():
    assert cluster._lock_paths({"~/raal-locks": "./locks", "~/.ray/auth_token": "~/.ray/auth_token"}) == [
        "~/raal-locks/cluster.txt"]
    assert cluster._lock_paths({"/opt/lock.txt": "locks/cluster.txt"}) == ["/opt/lock.txt"]
    assert cluster._lock_paths({"~/x": "./blocks", "~/y": "locks/dev.txt"}) == []


def test_the_shipped_cluster_lock_holds_raals_pins():
    """The file the nodes install pins the same top-level versions as pyproject (Ray above all: the client's)."""
    import tomllib

    import ray
    from packaging.requirements import Requirement

    from raal.lockcheck import read_lock

    locked = read_lock(REPO / cluster.CLUSTER_LOCK)
    assert locked["ray"] == ray.__version__
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for line in project:
        req = Requirement(line)
        assert req.specifier.contains(locked[req.name.lower()]), (req, locked[req.name.lower()])
    assert "boto3" in locked and "pytest" not in locked  # the cluster extra in, the dev tools out


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ClusterConfigError, match="no such file"):
        check_cluster(tmp_path / "nope.yaml")
    (tmp_path / "broken.yaml").write_text("cluster_name: [unclosed\n")
    with pytest.raises(ClusterConfigError, match="not valid YAML"):
        check_cluster(tmp_path / "broken.yaml")


def test_resources_and_bundles():
    assert cluster.parse_resources(["GPU=2", "CPU=8.5"]) == {"GPU": 2.0, "CPU": 8.5}
    for bad in ("GPU", "GPU=x", "=2", "GPU=-1"):
        with pytest.raises(ValueError, match="NAME=AMOUNT"):
            cluster.parse_resources([bad])
    assert cluster._bundles({"GPU": 2, "CPU": 4}) == [{"GPU": 1.0}, {"GPU": 1.0}, {"CPU": 4}]


def test_fetch_copies_the_small_files_only(tmp_path):
    src = tmp_path / "run"
    for rel in ("config.yaml", "status.json", "arms/a/rounds.parquet", "arms/a/arm.json",
                "features/timing.json", "features/v0/pool/shards/000000.bin", "arms/a/checkpoints/proxy_round_0.pt",
                "ray_train/x/state.pt", "arms/a/.tmp-123"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text("x")
    got = cluster.fetch(str(src), tmp_path / "out")
    assert got == ["arms/a/arm.json", "arms/a/rounds.parquet", "config.yaml", "features/timing.json", "status.json"]
    assert (tmp_path / "out" / "arms" / "a" / "rounds.parquet").read_text() == "x"


# ---------------------------------------------------------------------------------------------------------------
# A real two-node cluster on loopback
# ---------------------------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_ports() -> list[str]:
    """Every port a node opens, chosen free (other Ray instances on this machine keep theirs)."""
    out = []
    for flag in ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
                 "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port"):
        out += [flag, str(_free_port())]
    return out


def _session_pids(sid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[3]) == sid and fields[0] != "Z":  # field 6 of stat: the session id; zombies are gone
                pids.append(int(entry))
    return pids


class LocalCluster:
    """A head and one worker node, each a blocking `ray start` in its own session."""

    def __init__(self, root: Path, cpus_per_node: int = 2):
        self.root = root
        self.cpus = cpus_per_node
        self.temp = root / "ray"  # short: Ray's socket paths must stay under 107 bytes
        self.gcs, self.dash = _free_port(), _free_port()
        self.address = f"http://127.0.0.1:{self.dash}"
        self.env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", TQDM_DISABLE="1",
                        RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.5", RAAL_LOG="WARNING",
                        PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
        self.env.pop("RAY_ADDRESS", None)
        self.procs: list[subprocess.Popen] = []

    def _start(self, args: list[str], log: str) -> None:
        out = open(self.root / log, "w")
        self.procs.append(subprocess.Popen([str(VENV_BIN / "ray"), "start", "--block", "--node-ip-address=127.0.0.1",
                                            f"--temp-dir={self.temp}", "--object-store-memory=200000000",
                                            "--disable-usage-stats", f"--num-cpus={self.cpus}", *args,
                                            *_node_ports()],
                                           env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                           start_new_session=True))

    def start(self, timeout: float = 150.0) -> None:
        self._start(["--head", f"--port={self.gcs}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                     f"--dashboard-port={self.dash}", "--ray-client-server-port", str(_free_port())], "head.log")
        self._wait(lambda: self._nodes() >= 1, timeout, "head")
        self._start([f"--address=127.0.0.1:{self.gcs}", '--resources={"second_node": 1}'], "worker.log")
        self._wait(lambda: self._nodes() >= 2, timeout, "worker")

    def node_ids(self) -> set[str]:
        from ray.util.state import list_nodes

        return {n.node_id for n in list_nodes(address=self.address, filters=[("state", "=", "ALIVE")])}

    def _nodes(self) -> int:
        try:
            return len(self.node_ids())
        except Exception:  # the dashboard is not up yet
            return 0

    def _wait(self, ok, timeout: float, what: str) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    log = (self.root / ("head.log" if what == "head" else "worker.log")).read_text()
                    raise RuntimeError(f"ray start for the {what} exited: {log[-2000:]}")
            try:
                if ok():
                    return
            except OSError:
                pass
            time.sleep(1.0)
        raise TimeoutError(f"the {what} did not come up in {timeout:.0f} s")

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)  # a blocking `ray start` stops its node's processes on SIGTERM
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for p in self.procs:  # anything of ours that outlived it (same session id as our `ray start`)
            for pid in _session_pids(p.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        deadline = time.time() + 10
        while time.time() < deadline and self.leftovers():
            time.sleep(0.2)

    def leftovers(self) -> list[int]:
        return [pid for p in self.procs for pid in _session_pids(p.pid)]

    def jobs(self, script: str, *args: str, timeout: float = 300.0,
             lock: str = "locks/dev.txt") -> subprocess.CompletedProcess:
        # the loopback "nodes" run this venv, installed from the dev lock: that is the lock a job checks them against
        env = dict(self.env, RAAL_JOBS_ADDRESS=self.address, RAY=str(VENV_BIN / "ray"),
                   RAAL_CLUSTER_PYTHON=sys.executable, RAAL_LOCAL_PYTHON=sys.executable,
                   RAAL_RUN_ROOT=str(self.root / "store"), RAAL_CLUSTER_LOCK=lock)
        return subprocess.run(["bash", str(REPO / "jobs" / script), *args], env=env, capture_output=True, text=True,
                              timeout=timeout, cwd=REPO)


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    root = Path(f"/tmp/raal-ct-{os.getpid()}")  # under /tmp, short, ours alone
    root.mkdir(parents=True, exist_ok=False)
    c = LocalCluster(root)
    try:
        c.start()
        yield c
    finally:
        c.stop()
        left = c.leftovers()
        import shutil

        shutil.rmtree(root, ignore_errors=True)
        assert not left, f"processes of the test cluster survived: {left}"


# Two nodes of 2 CPUs. raal sizes actors and workers from the free CPUs (4): 3 embedding actors of
# min(1, (4 - 1) / 3) = 1 CPU and 3 training workers of min(1, 0.9 * 4 / 3) = 1 CPU cannot all fit on one
# 2-CPU node, so both kinds must use both nodes whatever the scheduler prefers.
SMALL = ["conf=demo",
         "eval.every_round=proxy", "al.baseline_cap=0", "train.min_steps=0",  # evaluator/extension/step budget off: these
         # tests check other things and keep their old cost
          "al.pipeline=svpp", "al.compare=[]", "al.baseline=false", "data.pool_size=200",
         "data.test_size=100", "data.image_size=32", "al.initial=20", "al.schedule=[20]*2", "embed.batch_size=32",
         "embed.num_actors=3", "eval.final=ft", "train.num_workers=3", "train.epochs=1", "train.lp_epochs=0",
         "train.milestones=[]", "train.batch_size=8", "train.augment=false"]


def nodes_of(address: str, job_id: str, class_part: str) -> set[str]:
    """Nodes that ran the job's actors whose class name contains `class_part`, from Ray's state API.

    An actor killed while its pool shut down can come back without a node id; its worker process (by pid) still
    says which raylet started it.
    """
    from ray.util.state import list_actors, list_workers

    actors = [a for a in list_actors(address=address, filters=[("job_id", "=", job_id)], limit=10000, detail=True,
                                     raise_on_missing_output=False) if class_part in (a.class_name or "")]
    node_of_pid = {w.pid: w.node_id for w in list_workers(address=address, detail=True, limit=10000,
                                                          raise_on_missing_output=False)}
    assert actors, f"no {class_part} actors in job {job_id}"
    return {a.node_id or node_of_pid.get(a.pid) for a in actors} - {None}


@pytest.mark.slow
@pytest.mark.ray
def test_demo_job_runs_across_two_nodes(two_nodes, tmp_path):
    from ray.job_submission import JobSubmissionClient

    c = two_nodes
    proc = c.jobs("submit.sh", "--id", "raal-two-nodes", "--hold", "CPU=4", "--", *SMALL, timeout=400)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    client = JobSubmissionClient(c.address)
    info = client.get_job_info("raal-two-nodes")
    assert info.status.value == "SUCCEEDED", client.get_job_logs("raal-two-nodes")[-4000:]
    logs = client.get_job_logs("raal-two-nodes")
    assert "equals locks/dev.txt" in logs  # the node was checked against the lock before raal started
    assert "raal.cluster: the cluster has CPU=4; running" in logs
    run_dir = Path(info.metadata["raal_dir"])
    assert run_dir == c.root / "store" / "runs" / "raal-two-nodes"

    # the run store
    rounds = pq.read_table(run_dir / "arms" / "svpp_margin" / "rounds.parquet").to_pylist()
    assert [r["n_labeled"] for r in rounds] == [20, 40, 60]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rounds)
    assert len(pq.read_table(run_dir / "arms" / "svpp_margin" / "labels.parquet")) == 60
    final = json.loads((run_dir / "arms" / "svpp_margin" / "final.json").read_text())
    assert final["method"] == "FT" and final["n_labeled"] == 60 and 0.0 <= final["accuracy"] <= 1.0
    assert json.loads((run_dir / "status.json").read_text())["state"] == "done"

    # where the work ran: both nodes hosted embedding actors and training workers
    nodes = c.node_ids()
    assert len(nodes) == 2
    assert nodes_of(c.address, info.job_id, "MapBatches(_Embedder)") == nodes
    assert nodes_of(c.address, info.job_id, "RayTrainWorker") == nodes

    # logs and fetch through the scripts
    logs_proc = c.jobs("logs.sh", "raal-two-nodes")
    assert logs_proc.returncode == 0 and "SUCCEEDED" in logs_proc.stdout
    dest = tmp_path / "fetched"
    fetched = c.jobs("fetch.sh", "raal-two-nodes", str(dest))
    assert fetched.returncode == 0, fetched.stderr[-3000:]
    assert (dest / "arms" / "svpp_margin" / "rounds.parquet").is_file()
    assert not list(dest.rglob("*.pt")) and not (dest / "features" / "v0").exists()
    assert (dest / "report" / "report.html").is_file()


@pytest.mark.slow
@pytest.mark.ray
def test_a_node_that_differs_from_the_lock_stops_the_job_before_raal_starts(two_nodes):
    """This venv holds the dev lock (pytest, no boto3): checked against the cluster lock, the job must refuse."""
    from ray.job_submission import JobSubmissionClient

    proc = two_nodes.jobs("submit.sh", "--id", "raal-drifted-node", "--", "conf=demo", timeout=120,
                          lock="locks/cluster.txt")
    assert proc.returncode != 0
    client = JobSubmissionClient(two_nodes.address)
    assert client.get_job_status("raal-drifted-node").value == "FAILED"
    logs = client.get_job_logs("raal-drifted-node")
    assert "pytest: 9.2.0 installed, not in the lock" in logs and "boto3: locked at" in logs
    assert "differs from locks/cluster.txt" in logs and "raal: run_dir=" not in logs


@pytest.mark.slow
@pytest.mark.ray
def test_a_job_with_a_wrong_config_fails_fast_with_the_error_in_its_logs(two_nodes):
    from ray.job_submission import JobSubmissionClient

    t0 = time.time()
    proc = two_nodes.jobs("submit.sh", "--id", "raal-bad-config", "--", "conf=demo", "al.strategy=nope", timeout=120)
    assert proc.returncode != 0
    client = JobSubmissionClient(two_nodes.address)
    assert client.get_job_status("raal-bad-config").value == "FAILED"
    logs = client.get_job_logs("raal-bad-config")
    assert "raal: error: al.strategy='nope' is not allowed; allowed:" in logs
    assert time.time() - t0 < 90
    assert two_nodes.jobs("logs.sh", "raal-bad-config").returncode == 1


def test_submit_refuses_a_relative_run_dir(tmp_path):
    env = dict(os.environ, RAY="false")
    env.pop("RAAL_RUN_ROOT", None)
    p = subprocess.run(["bash", str(REPO / "jobs" / "submit.sh"), "--", "conf=demo"], env=env, capture_output=True,
                       text=True, cwd=tmp_path)
    assert p.returncode == 2 and "set RAAL_RUN_ROOT" in p.stderr
    p = subprocess.run(["bash", str(REPO / "jobs" / "submit.sh"), "--", "conf=demo", "run_dir=runs/x"], env=env,
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 2 and "must be absolute" in p.stderr
