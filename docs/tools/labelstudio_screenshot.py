"""Make docs/labelstudio_task.png: a raal task as a person sees it in the real Label Studio UI.

    python docs/tools/labelstudio_screenshot.py        (needs .venv-ls and Debian's chromium)

Starts Label Studio (loopback, temp sqlite) and `raal.serve` exactly as tests/labeling/test_labelstudio_live.py does,
answers round 0 through the API, waits for round 1 (pushed with raal's pre-annotations), then logs in with
headless Chromium (driven over the DevTools protocol with aiohttp) and screenshots a round-1 task's labeling page.
"""
import asyncio
import base64
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import aiohttp  # noqa: E402
import lstudio  # noqa: E402

from raal import labelstudio as ls  # noqa: E402
from raal.data.sources import ANIMAL_MNIST_CLASSES, animal_mnist_arrays  # noqa: E402

ARGS = ["conf=demo", "eval.every_round=proxy", "al.baseline_cap=0", "train.min_steps=0", "al.pipeline=svpp",
        "al.strategy=margin", "al.compare=[]", "data.pool_size=200", "data.test_size=100", "data.image_size=32",
        "al.initial=20", "al.schedule=[20]", "embed.batch_size=50", "report=false", "eval.final=none",
        "al.baseline=false"]
OUT = os.path.join(ROOT, "docs", "labelstudio_task.png")


async def screenshot(url: str, task_url: str, out: str) -> None:
    port = lstudio.free_port()
    with tempfile.TemporaryDirectory() as profile:
        chrome = subprocess.Popen(["chromium", "--headless=new", "--no-sandbox", "--disable-gpu",
                                   f"--remote-debugging-port={port}", f"--user-data-dir={profile}",
                                   "--window-size=1400,900", "about:blank"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            async with aiohttp.ClientSession() as http:
                pages = None
                for _ in range(60):
                    try:
                        async with http.get(f"http://127.0.0.1:{port}/json") as r:
                            pages = [p for p in await r.json() if p["type"] == "page"]
                            break
                    except aiohttp.ClientError:
                        await asyncio.sleep(0.5)
                async with http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                    n = 0

                    async def call(method, **params):
                        nonlocal n
                        n += 1
                        await ws.send_json({"id": n, "method": method, "params": params})
                        async for msg in ws:
                            body = json.loads(msg.data)
                            if body.get("id") == n:
                                return body.get("result", {})

                    await call("Page.enable")
                    await call("Page.navigate", url=url + "/user/login")
                    await asyncio.sleep(4)
                    await call("Runtime.evaluate", expression=(
                        f"document.querySelector('input[name=email]').value = {json.dumps(lstudio.USER)};"
                        f"document.querySelector('input[name=password]').value = {json.dumps(lstudio.PASSWORD)};"
                        "document.querySelector('form').submit();"))
                    await asyncio.sleep(5)
                    await call("Page.navigate", url=task_url)
                    await asyncio.sleep(15)
                    shot = await call("Page.captureScreenshot", format="png")
                    with open(out, "wb") as f:
                        f.write(base64.b64decode(shot["data"]))
        finally:
            chrome.terminate()
            chrome.wait(30)


def main() -> None:
    truth = animal_mnist_arrays()[1]
    env = dict(os.environ, RAY_AUTH_MODE="disabled", TQDM_DISABLE="1", OMP_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as tmp:
        os.mkdir(os.path.join(tmp, "ls"))
        run_dir = os.path.join(tmp, "run")
        with lstudio.Server(os.path.join(tmp, "ls"), document_root=tmp) as studio:
            project = studio.create_project("raal: Animal-MNIST", ls.labeling_config(list(ANIMAL_MNIST_CLASSES)))
            backend = lstudio.Backend([*ARGS, "oracle.kind=files", "oracle.image_url=local-files",
                                       f"oracle.document_root={tmp}", f"run_dir={run_dir}", f"ls_url={studio.url}",
                                       f"project={project}"], os.path.join(tmp, "serve.log"), env)
            try:
                backend.wait_up()
                lstudio.connect(studio, project, backend, os.path.join(run_dir, "queries", "images"))
                for t in studio.tasks(project):
                    studio.annotate(t["id"], ANIMAL_MNIST_CLASSES[truth[t["data"]["raal_id"]]])
                lstudio.wait_for("round 1", lambda: len(studio.tasks(project)) == 40, 400)
                first = max((t for t in studio.tasks(project) if t["data"]["raal_round"] == 1),
                            key=lambda t: t["predictions"][0]["score"])
                asyncio.run(screenshot(studio.url, f"{studio.url}/projects/{project}/data?task={first['id']}", OUT))
            finally:
                backend.stop()
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes) at {time.strftime('%H:%M:%S')}")


if __name__ == "__main__":
    main()
