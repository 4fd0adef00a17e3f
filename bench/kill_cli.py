"""Kill the CLI, stop the run: SIGKILL only the `raal.run` process (not its process group) in the middle of a real
run, then check that no process of that run's private Ray survives 30 s, and that the run resumes to the end.

The run's processes are found by the token `raal.lifeline` puts in the environment of the CLI (inherited by every
Ray process it starts): nothing else on the machine is looked at or touched. `python bench/kill_cli.py` writes
bench/results/kill_cli.json and the kill-the-CLI row of bench/faults.md.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ARGS = ["conf=demo", "eval.every_round=proxy", "al.baseline_cap=0", "train.min_steps=0", "al.pipeline=svpp",
        "al.compare=[]", "data.pool_size=200", "data.test_size=100", "data.image_size=32", "al.initial=20",
        "al.schedule=[20]", "embed.batch_size=25", "embed.shard_rows=50", "report=false"]
RESULT = ROOT / "bench" / "results" / "kill_cli.json"
SECTION = "## Kill the CLI"


def _env() -> dict:
    return dict(os.environ, RAY_AUTH_MODE="disabled", TQDM_DISABLE="1", RAAL_LOG="WARNING",
                PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _token(pid: int) -> str | None:
    """The lifeline token of the CLI `pid`, read from a child's environment (a process's own /proc environ shows
    only the environment it was started with, and the CLI sets the token later)."""
    from raal.lifeline import ENV

    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                if int(f.read().rsplit(b")", 1)[1].split()[1]) != pid:
                    continue
            with open(f"/proc/{name}/environ", "rb") as f:
                for item in f.read().split(b"\0"):
                    if item.startswith(ENV.encode() + b"="):
                        return item.split(b"=", 1)[1].decode()
        except (OSError, ValueError, IndexError):
            continue
    return None


def kill_the_cli(run_dir: Path, survive_s: float = 30.0, timeout: float = 900) -> dict:
    """Start a run; once its v0 embedding has committed a shard, SIGKILL the CLI alone; watch its processes."""
    from raal.lifeline import marked

    proc = subprocess.Popen([sys.executable, "-m", "raal.run", *ARGS, f"run_dir={run_dir}"], cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    shards = run_dir / "features" / "v0" / "pool" / "shards"
    deadline = time.time() + timeout
    token = None
    while time.time() < deadline:
        token = token or _token(proc.pid)
        if shards.is_dir() and any(shards.iterdir()):
            break
        if proc.poll() is not None:
            raise RuntimeError(f"the run ended before it could be killed: {proc.stderr.read()[-2000:]}")
        time.sleep(0.1)
    if token is None:
        raise RuntimeError("the CLI carries no lifeline token")
    before = marked(token)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    t0 = time.time()
    left = marked(token)
    while left and time.time() - t0 < survive_s:
        time.sleep(0.5)
        left = marked(token)
    gone_s = time.time() - t0
    for pid in left:  # this bench's own leftovers: stop them so that a failure does not leak processes
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    again = subprocess.run([sys.executable, "-m", "raal.run", f"run_dir={run_dir}"], cwd=ROOT, env=_env(),
                           capture_output=True, text=True, timeout=timeout)
    return {"processes_before": len(before), "left_after_s": None if left else round(gone_s, 1),
            "survivors": len(left), "resume_rc": again.returncode, "resumed": "resumed" in again.stdout,
            "resume_stderr": again.stderr[-2000:] if again.returncode else ""}


def md_row(res: dict) -> list[str]:
    ok = res["survivors"] == 0 and res["resume_rc"] == 0 and res["resumed"]
    return [SECTION, "",
            "`kill -9` of the `raal.run` process alone (not its process group) while the v0 embedding runs "
            "(bench/kill_cli.py, the same real Animal-MNIST run at 200/100 images):", "",
            "| fault | Ray processes of the run | left after | resume | consistency |", "|---|---|---|---|---|",
            f"| SIGKILL of the CLI only | {res['processes_before']} | "
            f"{'none after ' + str(res['left_after_s']) + ' s' if not res['survivors'] else str(res['survivors'])} "
            f"| `raal.run run_dir=DIR` exited with {res['resume_rc']}{' (resumed)' if res['resumed'] else ''} | "
            f"{'ok' if ok else 'FAILED'} |", ""]


def write_section(res: dict, path: Path) -> None:
    """Replace (or append) this bench's section of bench/faults.md; the rest of the file stays as it is."""
    text = path.read_text() if path.exists() else ""
    head = text.split(SECTION, 1)[0].rstrip("\n")
    path.write_text(head + "\n\n" + "\n".join(md_row(res)))


def main() -> None:
    import shutil

    run_dir = ROOT / "bench" / "runs" / "kill_cli"
    shutil.rmtree(run_dir, ignore_errors=True)
    res = kill_the_cli(run_dir)
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(res, indent=2) + "\n")
    write_section(res, ROOT / "bench" / "faults.md")
    print("\n".join(md_row(res)))


if __name__ == "__main__":
    main()
