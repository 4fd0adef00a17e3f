"""A real Label Studio server for tests: `label-studio` from PyPI in its own venv (.venv-ls, made by
`make .venv-ls`), a sqlite database in a temp dir, the user and token from its documented environment variables
(LABEL_STUDIO_USERNAME / LABEL_STUDIO_PASSWORD / LABEL_STUDIO_USER_TOKEN), bound to loopback only."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time

import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LS_VENV = os.environ.get("RAAL_LS_VENV", os.path.join(ROOT, ".venv-ls"))
LS_BIN = os.path.join(LS_VENV, "bin", "label-studio")
LS_PYTHON = os.path.join(LS_VENV, "bin", "python")
TEMPLATE = os.path.join(LS_VENV, "template")
USER, PASSWORD, TOKEN = "raal@example.com", "raal-test-password", "raal0test0token0123456789"


def available() -> bool:
    return os.access(LS_BIN, os.X_OK)


def skip_reason() -> str | None:
    """None when the tests may run; in CI the venv must exist (`.ci/run` makes it), so they never skip there."""
    if available() or os.environ.get("CI"):
        return None
    return f"Label Studio's venv {LS_VENV} is absent (make .venv-ls installs label-studio==1.23.2 there)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`label-studio start` on 127.0.0.1:<free port>; `with Server(tmp) as ls: ls.api(...)`; stopped by its pid."""

    def __init__(self, data_dir: str, document_root: str, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir, self.document_root = data_dir, document_root
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Token {TOKEN}"
        self.proc = None

    def env(self) -> dict:
        return {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": self.data_dir, "LABEL_STUDIO_USERNAME": USER,
                "LABEL_STUDIO_PASSWORD": PASSWORD, "LABEL_STUDIO_USER_TOKEN": TOKEN,
                "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true", "LOCAL_FILES_SERVING_ENABLED": "true",
                "LOCAL_FILES_DOCUMENT_ROOT": self.document_root,
                # raal's backend listens on loopback too; Label Studio refuses such URLs unless told otherwise
                "SSRF_PROTECTION_ENABLED": "false", "USE_DEFAULT_BANNED_SUBNETS": "false",
                "LABEL_STUDIO_DISABLE_VERSION_CHECK": "true", "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": ""}

    def __enter__(self) -> Server:
        if os.path.isdir(TEMPLATE):  # an empty database migrated once by `make labelstudio`
            shutil.copytree(TEMPLATE, self.data_dir, dirs_exist_ok=True)
        log = open(os.path.join(self.data_dir, "label-studio.log"), "w")
        self.proc = subprocess.Popen([LS_BIN, "start", "--no-browser", "--host", "127.0.0.1", "--port",
                                      str(self.port)], env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.time() + 240
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"label-studio exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                if self.http.get(self.url + "/api/projects", timeout=5).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(1)
        self.__exit__(None, None, None)
        raise RuntimeError(f"label-studio did not answer within 240 s: {self.log_tail()}")

    def log_tail(self) -> str:
        with open(os.path.join(self.data_dir, "label-studio.log")) as f:
            return f.read()[-2000:]

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: the server and its workers, nothing else
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    # -- the REST API -------------------------------------------------------------------------------------------------
    def api(self, method: str, path: str, **kw):
        resp = self.http.request(method, self.url + path, timeout=60, **kw)
        if resp.status_code >= 400:
            raise RuntimeError(f"{method} {path}: HTTP {resp.status_code}: {resp.text[:500]}")
        return resp.json() if resp.content and "json" in resp.headers.get("content-type", "") else resp.content

    def create_project(self, title: str, config: str) -> int:
        return self.api("POST", "/api/projects", json={"title": title, "label_config": config})["id"]

    def tasks(self, project: int) -> list[dict]:
        body = self.api("GET", "/api/tasks", params={"project": project, "page_size": 1000, "fields": "all"})
        return body["tasks"] if isinstance(body, dict) else body

    def annotate(self, task_id: int, label: str) -> dict:
        return self.api("POST", f"/api/tasks/{task_id}/annotations", json={"result": [
            {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]})

    def export(self, project: int, fmt: str) -> bytes:
        resp = self.http.get(f"{self.url}/api/projects/{project}/export",
                             params={"exportType": fmt, "download_all_tasks": "true"}, timeout=120)
        resp.raise_for_status()
        return resp.content


# -- raal's backend beside it -------------------------------------------------------------------------------------------
def wait_for(what, fn, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def get_json(url):
    try:
        resp = requests.get(url, timeout=10)
        return resp.json() if resp.status_code == 200 else None
    except requests.RequestException:
        return None


class Backend:
    """`python -m raal.serve …` in its own session (its private Ray with it); stopped by Ctrl-C, then by its pgid."""

    def __init__(self, args: list[str], log_path: str, env: dict, port: int | None = None):
        import sys

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc = subprocess.Popen([sys.executable, "-m", "raal.serve", *args, f"port={self.port}"],
                                     env=dict(env, LABEL_STUDIO_API_KEY=TOKEN), stdout=open(log_path, "w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait_up(self, timeout: float = 400) -> dict:
        def up():
            if self.proc.poll() is not None:
                with open(self.log_path) as f:
                    raise AssertionError(f"raal.serve exited with {self.proc.returncode}: {f.read()[-3000:]}")
            return get_json(self.url + "/health")
        return wait_for("raal.serve", up, timeout)

    def status(self) -> dict:
        return get_json(self.url + "/status") or {}

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def connect(studio: Server, project: int, backend: Backend, images: str) -> None:
    """What a person does in the project's settings: a Local files source for raal's images, raal as the model."""
    studio.api("POST", "/api/storages/localfiles", json={"project": project, "path": images, "use_blob_urls": True,
                                                         "title": "raal images"})
    studio.api("POST", "/api/ml", json={"url": backend.url, "project": project, "title": "raal"})
