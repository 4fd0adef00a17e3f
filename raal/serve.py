"""`python -m raal.serve run_dir=DIR [conf=NAME key=value …] [ls_url=URL project=ID] [host=… port=…]` — raal as a
Label Studio ML backend, served by Ray Serve (one replica, FastAPI ingress).

Label Studio's ML-backend protocol: `GET /health`, `POST /setup`, `POST /predict` (raal's stored prediction and
score of each task; no model runs, so a large project never times out), `POST /webhook` (annotation created,
updated or deleted, and START_TRAINING: the open round's annotations are pulled and imported; when the batch is
answered, or on START_TRAINING with allow_partial=true, the round commits and the next one is pushed). Also
`GET /image/<raal_id>` for `oracle.image_url=backend` (exported items only) and `GET /status`.

The run is created by the first start when `conf=` is given (with oracle.kind=files), else resumed from run_dir.
Label Studio's URL and project come from ls_url=/project= (or LABEL_STUDIO_URL/LABEL_STUDIO_PROJECT), the token
from LABEL_STUDIO_API_KEY (or LABEL_STUDIO_USER_TOKEN); none of them is written to the run dir. Under `ray job
submit` the deployment runs on the cluster (ray.address=auto); `host=0.0.0.0` exposes it beyond the node.
Bad arguments: one line on stderr, exit 2, nothing written.
"""
import logging
import os
import sys
import threading
import time

from fastapi import FastAPI, HTTPException, Request  # module level: FastAPI resolves the handlers' annotations here
from fastapi.responses import FileResponse

from raal.errors import ConfigError, LabelImportError, StoreError
from raal.live import LiveRun, studio_from
from raal.preflight import preflight
from raal.raylocal import init_local_ray, quiet_ray_data
from raal.run import resolve_config

log = logging.getLogger("raal.serve")
SERVE_KEYS = ("ls_url", "project", "host", "port", "allow_partial")
APP_NAME = "raal"


def split_args(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """raal.run's arguments (conf=, run_dir=, key=value) and the serve-only ones."""
    run_args, serve_args = [], {}
    for a in argv:
        key, eq, value = a.partition("=")
        if eq and key in SERVE_KEYS:
            serve_args[key] = value
        else:
            run_args.append(a)
    if not any(a.startswith("run_dir=") for a in run_args):
        raise ConfigError("raal.serve needs run_dir=DIR (the run it drives; created there with conf=NAME)")
    port = serve_args.get("port", "9090")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"port={port!r}: expected a TCP port number")
    if serve_args.get("allow_partial", "false") not in ("true", "false"):
        raise ConfigError(f"allow_partial={serve_args['allow_partial']!r}: expected true or false")
    return run_args, serve_args


def build_app(run_args: list[str], serve_args: dict[str, str]):
    """The Serve application: one `Backend` replica (it holds the run's lease, so there is exactly one)."""
    from ray import serve

    api = FastAPI(title="raal Label Studio ML backend")

    @serve.deployment(num_replicas=1, max_ongoing_requests=32, ray_actor_options={"num_cpus": 0},
                      health_check_timeout_s=120)
    @serve.ingress(api)
    class Backend:
        def __init__(self, run_args: list[str], serve_args: dict[str, str]):

            logging.basicConfig(level=os.environ.get("RAAL_LOG", "INFO"))
            quiet_ray_data()
            cfg = resolve_config(run_args)
            preflight(cfg)
            self.live = LiveRun(cfg, studio_from(serve_args), serve_args.get("allow_partial") == "true")
            self.error = ""
            self.live.advance()  # round 0 (or wherever the store stands) runs and is pushed before we answer
            self.live.sync()  # annotations made while no backend listened (a restart) are pulled now
            self.pending = threading.Event()
            self.partial = False
            threading.Thread(target=self._worker, daemon=True).start()

        def _worker(self) -> None:
            """Imports and rounds run here, one at a time, so that webhooks return at once."""
            while True:
                self.pending.wait()
                self.pending.clear()
                partial, self.partial = self.partial, False
                try:
                    self.live.sync(partial=partial)
                    self.error = ""
                except (LabelImportError, StoreError, ConfigError) as err:
                    self.error = str(err)
                    log.error("raal serve: %s", err)

        @api.get("/health")
        @api.get("/")
        def health(self) -> dict:
            return {"status": "UP", "model_class": "raal", "model_version": self.live.model_version()}

        @api.post("/setup")
        async def setup(self, request: Request) -> dict:
            return {"model_version": self.live.model_version()}

        @api.post("/predict")
        async def predict(self, request: Request) -> dict:
            body = await request.json()
            tasks = body.get("tasks") if isinstance(body, dict) else None
            if not isinstance(tasks, list):
                raise HTTPException(400, "expected {'tasks': [...]}")
            try:
                results = self.live.predictions(tasks)
            except LabelImportError as err:
                raise HTTPException(400, str(err)) from None
            return {"results": results, "model_version": self.live.model_version()}

        @api.post("/webhook")
        async def webhook(self, request: Request) -> dict:
            body = await request.json()
            action = body.get("action", "") if isinstance(body, dict) else ""
            if action.startswith("ANNOTATION") or action == "START_TRAINING":
                self.partial = self.partial or action == "START_TRAINING"
                self.pending.set()
                return {"action": action, "queued": True}
            return {"action": action, "queued": False}

        @api.get("/status")
        def status(self) -> dict:
            return {**self.live.status(), "last_import": self.live.last, "error": self.error,
                    "busy": self.pending.is_set()}

        @api.get("/image/{raal_id}")
        def image(self, raal_id: int):
            try:
                return FileResponse(self.live.image_path(raal_id))
            except LabelImportError as err:
                raise HTTPException(404, str(err)) from None

    return Backend.bind(run_args, serve_args)  # type: ignore[attr-defined]  # mypy skips class decorators


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(__doc__)
        return 0
    try:
        run_args, serve_args = split_args(argv)

        cfg = resolve_config(run_args)
        if cfg.oracle.kind != "files":
            raise ConfigError(f"oracle.kind={cfg.oracle.kind!r}: raal.serve labels through people; use "
                              "oracle.kind=files")
        studio_from(serve_args)
        preflight(cfg)
    except (ConfigError, StoreError, LabelImportError) as err:
        print(f"raal serve: error: {err}", file=sys.stderr)
        return 2
    import ray
    from ray import serve


    logging.basicConfig(level=os.environ.get("RAAL_LOG", "INFO"), format="%(asctime)s %(name)s: %(message)s")
    init_local_ray(cfg.ray.num_cpus or None, address=cfg.ray.address or None)
    host, port = serve_args.get("host", "127.0.0.1"), int(serve_args.get("port", "9090"))
    serve.start(http_options={"host": host, "port": port})
    try:
        serve.run(build_app(run_args, serve_args), name=APP_NAME, route_prefix="/")
        print(f"raal serve: Label Studio ML backend at http://{host}:{port} (run_dir={cfg.run_dir})", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
