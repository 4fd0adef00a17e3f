"""Kill the CLI, stop the run: a private local Ray must not outlive the `raal.run` process that started it.

Ray's own reaper stops the raylet, the GCS and most workers when their driver dies, but some helper processes
(the dashboard and runtime-env agents, workers that are starting) are left behind as orphans, and they keep CPU and
memory. Before it starts Ray, the CLI marks its environment with a fresh token (inherited by every process of that
Ray instance) and starts this watchdog with one end of a pipe. The CLI writes one byte when it ends normally. If the
pipe closes without that byte, the CLI died (kill -9, OOM): the watchdog SIGTERMs, then SIGKILLs, every process of
the same user whose environment carries the token — the run's processes only, never other Ray instances. The run
itself stops at its last committed step (every write is atomic) and resumes with the same command.

Linux only (it reads /proc); elsewhere, and under a Ray cluster (whose actors Ray stops with their owner), it is
not started.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

ENV = "RAAL_RUN_TOKEN"
GRACE_S = 2.0  # let Ray's own reaper go first
TERM_WAIT_S = 5.0


class Lifeline:
    """The CLI's end: `done()` on a normal exit; a crash closes the pipe without the byte."""

    def __init__(self, proc: subprocess.Popen, fd: int):
        self.proc, self.fd = proc, fd

    def done(self) -> None:
        if self.fd < 0:
            return
        try:
            os.write(self.fd, b"x")
        except OSError:
            pass
        os.close(self.fd)
        self.fd = -1
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def start() -> Lifeline | None:
    """Mark this process's environment with a run token and start the watchdog (before `ray.init`)."""
    if not os.path.isdir("/proc/self"):
        return None
    token = uuid.uuid4().hex
    os.environ[ENV] = token
    r, w = os.pipe()
    proc = subprocess.Popen([sys.executable, "-m", "raal.lifeline", str(r), token], pass_fds=(r,),
                            start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, close_fds=True)
    os.close(r)
    return Lifeline(proc, w)


def marked(token: str, exclude: tuple[int, ...] = ()) -> list[int]:
    """Live (non-zombie) processes whose environment holds `ENV=token`."""
    needle = f"{ENV}={token}".encode()
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in exclude:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if needle not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{name}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    continue
        except OSError:  # gone, or another user's
            continue
        out.append(int(name))
    return out


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def watch(fd: int, token: str) -> None:
    """Block until the CLI ends; if it died, stop every process of its run."""
    try:
        got = os.read(fd, 1)
    except OSError:
        got = b""
    if got:
        return  # a normal end: Ray was shut down by the CLI
    time.sleep(GRACE_S)
    me = (os.getpid(),)
    _signal_all(marked(token, me), signal.SIGTERM)
    deadline = time.monotonic() + TERM_WAIT_S
    while time.monotonic() < deadline and marked(token, me):
        time.sleep(0.2)
    _signal_all(marked(token, me), signal.SIGKILL)


if __name__ == "__main__":
    watch(int(sys.argv[1]), sys.argv[2])
