"""Live labeling with Label Studio: the state machine behind `python -m raal.serve` (no HTTP in here).

    run until a round waits for labels -> push its tasks into the Label Studio project -> people annotate ->
    Label Studio's webhook -> pull the round's annotations -> the same validated import as `raal.run label` ->
    the batch is answered (or allow_partial) -> the round commits, the next one runs -> push ...

The run store is the only state: the ledger holds the labels, `status.json` says which round is open, the export
files hold what was asked with its prediction and score. A restarted backend rebuilds everything from them, and a
push sends only the tasks the project does not hold yet (found by `raal_id`), so nothing is lost or sent twice.
The Label Studio URL, project and token come from the command line or the environment and are never written to
the run dir. One writer per run: the backend holds the run dir's lease for its whole life.
"""
from __future__ import annotations

import json
import logging
import os
import threading

from raal import layout
from raal.errors import ConfigError, LabelImportError, StoreError
from raal.labeling import import_bytes
from raal.labeling import labelstudio as ls
from raal.pipelines.experiment import Experiment, default_run_dir
from raal.store import RunLease

log = logging.getLogger("raal.live")
TOKEN_ENV = ("LABEL_STUDIO_API_KEY", "LABEL_STUDIO_USER_TOKEN")
PAGE = 500


class StudioClient:
    """The few Label Studio REST calls raal needs: list a project's tasks, import tasks, export annotations.

    The same endpoints label-studio-sdk wraps; raal calls them with `requests` because label-studio-sdk 2.1.2
    pins opencv-python-headless 4.12, which requires numpy < 2.3 (raal runs numpy 2.4)."""

    def __init__(self, url: str, project: int, token: str, timeout: float = 60.0):
        import requests

        self.url, self.project, self.timeout = url.rstrip("/"), int(project), timeout
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Token {token}"

    def _call(self, method: str, path: str, **kw):
        resp = self.http.request(method, self.url + path, timeout=self.timeout, **kw)
        if resp.status_code >= 400:
            raise StoreError(f"Label Studio {method} {path}: HTTP {resp.status_code}: {resp.text[:200]}")
        return resp

    def raal_ids(self) -> set[int]:
        """raal_ids of the tasks the project holds already (paged)."""
        out: set[int] = set()
        page = 1
        while True:
            params: dict[str, str | int] = {"project": self.project, "page": page, "page_size": PAGE, "fields": "all"}
            resp = self.http.get(f"{self.url}/api/tasks", params=params, timeout=self.timeout)
            if resp.status_code == 404:  # past the last page
                return out
            if resp.status_code >= 400:
                raise StoreError(f"Label Studio GET /api/tasks: HTTP {resp.status_code}: {resp.text[:200]}")
            body = resp.json()
            tasks = body.get("tasks", []) if isinstance(body, dict) else body
            out.update(int(t["data"]["raal_id"]) for t in tasks if "raal_id" in (t.get("data") or {}))
            if len(tasks) < PAGE:
                return out
            page += 1

    def import_tasks(self, tasks: list[dict]) -> None:
        self._call("POST", f"/api/projects/{self.project}/import", json=tasks)

    def export(self, fmt: str = "JSON") -> bytes:
        """The project's annotated tasks in one of Label Studio's export formats (JSON, JSON_MIN, CSV)."""
        return self._call("GET", f"/api/projects/{self.project}/export",
                          params={"exportType": fmt, "download_all_tasks": "false"}).content


def studio_from(args: dict[str, str]) -> StudioClient | None:
    """The Label Studio connection from `ls_url=`/`project=` (or LABEL_STUDIO_URL/LABEL_STUDIO_PROJECT) and the
    token from LABEL_STUDIO_API_KEY (or LABEL_STUDIO_USER_TOKEN); None when no URL is given (serve without push)."""
    url = args.get("ls_url") or os.environ.get("LABEL_STUDIO_URL", "")
    if not url:
        return None
    project = args.get("project") or os.environ.get("LABEL_STUDIO_PROJECT", "")
    token = next((os.environ[k] for k in TOKEN_ENV if os.environ.get(k)), "")
    if not project.isdigit():
        raise ConfigError(f"project={project!r}: the Label Studio project id (an integer) is needed with ls_url")
    if not token:
        raise ConfigError(f"ls_url={url}: set the Label Studio token in {' or '.join(TOKEN_ENV)}")
    return StudioClient(url, int(project), token)


class LiveRun:
    """One run driven by Label Studio. Every public method is serialised by one lock (one writer)."""

    def __init__(self, cfg, studio: StudioClient | None, allow_partial: bool = False):

        self.lock = threading.RLock()
        self.lease = RunLease(default_run_dir(cfg))
        try:
            self.exp = Experiment(cfg)
            self.exp.prepare()
        except BaseException:
            self.lease.release()
            raise
        self.store, self.studio, self.allow_partial = self.exp.store, studio, allow_partial
        self.last: dict = {}

    # -- reads ------------------------------------------------------------------------------------------------------
    def status(self) -> dict:
        return self.store.read_json(layout.STATUS) if self.store.exists(layout.STATUS) else {"state": "new"}

    def model_version(self) -> str:
        return f"raal-round-{self.status().get('round', 0)}"

    def _export(self, r: int, cache: dict) -> dict[int, dict]:
        """raal_id -> what round r's export holds for it (path, image, prediction, score); read once per call."""
        if r not in cache:
            rel = layout.export(r, "parquet")
            t = self.store.read_table(rel).to_pylist() if self.store.exists(rel) else []
            cache[r] = {row["id"]: {**row, "round": r} for row in t}
        return cache[r]

    def export_row(self, raal_id: int, round_: int | None, cache: dict | None = None) -> dict | None:
        """What raal exported for an item: from its round's export, or the newest export that holds it."""
        cache = {} if cache is None else cache
        rounds = [int(round_)] if round_ is not None else range(int(self.status().get("round", 0)), -1, -1)
        return next((self._export(r, cache)[raal_id] for r in rounds if raal_id in self._export(r, cache)), None)

    def predictions(self, tasks: list[dict]) -> list[dict]:
        """Label Studio's /predict: raal's stored prediction and ask-sooner score per task, no model call."""
        out: list[dict] = []
        cache: dict = {}
        for t in tasks:
            data = t.get("data") or {}
            row = None
            if "raal_id" in data:
                row = self.export_row(ls.int_id(data["raal_id"], "task"), data.get("raal_round"), cache)
            if row and row.get("prediction"):
                out.append(ls.prediction_of(row["prediction"], row["score"], row["round"]))
            else:
                out.append({"model_version": self.model_version(), "score": None, "result": []})
        return out

    # -- the loop ---------------------------------------------------------------------------------------------------
    def advance(self) -> dict:
        """Run rounds until one waits for labels (then push its tasks) or the run is done."""
        with self.lock:
            exp = self.exp
            r = exp.completed_rounds()
            while True:
                if r >= exp.num_rounds:
                    if exp.extend_baseline():
                        continue
                    break
                exp.run_round(r)
                if exp.waiting:
                    self.push()
                    return self.status()
                log.info("raal live: round %d committed", r)
                r += 1
            exp.finalize()
            return self.status()

    def push(self) -> int:
        """Send the open round's tasks the project does not hold yet; returns how many were sent."""
        if self.studio is None:
            return 0
        status = self.status()
        r = int(status["round"])
        tasks = json.loads(self.store.read_text(layout.export(r, "labelstudio.json")))
        have = self.studio.raal_ids()
        new = [t for t in tasks if int(t["data"]["raal_id"]) not in have]
        if new:
            self.studio.import_tasks(new)
        log.info("raal live: round %d: pushed %d tasks (%d were in the project)", r, len(new), len(tasks) - len(new))
        return len(new)

    def sync(self, partial: bool = False) -> dict:
        """Pull the open round's annotations from Label Studio, import them, and go on when the batch is answered
        (or `partial` and allow_partial); returns the import summary plus the status after it."""
        with self.lock:
            status = self.status()
            if status.get("state") != "waiting_for_labels" or self.studio is None:
                return {"status": status}
            r = int(status["round"])
            tasks = json.loads(self.studio.export("JSON"))
            mine = [t for t in tasks if str((t.get("data") or {}).get("raal_round")) == str(r)]
            res = self.import_tasks(mine, f"labelstudio-project-{self.studio.project}-round-{r}.json",
                                    partial and self.allow_partial)
            if res["answered"] == res["queried"] or (res["partial"] and res["answered"] > 0):
                self.advance()
            self.last = {**res, "status": self.status()}
            return self.last

    def import_tasks(self, tasks: list[dict], name: str, partial: bool) -> dict:
        """Label Studio tasks through `raal.labeling.import_bytes`, the path every import takes."""

        with self.lock:
            return import_bytes(self.store, json.dumps(tasks).encode(), name, partial)

    def image_path(self, raal_id: int) -> str:
        """The file of an exported item (the backend serves nothing else)."""
        row = self.export_row(raal_id, None)
        if row is None:
            raise LabelImportError(f"raal_id {raal_id} was never exported")
        return row["path"]

    def close(self) -> None:
        self.lease.release()
