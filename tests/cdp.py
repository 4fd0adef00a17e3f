"""Open an HTML file in headless Chromium and report what a reader would see: a tiny DevTools-protocol client.

Uses Debian's `chromium` and aiohttp's websocket client (already installed with ray[default]): no browser download,
no new dependency. `check_page` returns the decoded size of every image, whether the summary table is there, every
console error / uncaught exception / failed load, and (optionally) a PNG screenshot of the whole page.

    python tests/cdp.py REPORT.html docs/report.png      # the screenshot in docs/
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PROBE = """(() => {
  const imgs = [...document.images].map(i => ({alt: i.alt, complete: i.complete, w: i.naturalWidth,
                                             h: i.naturalHeight}));
  const heads = [...document.querySelectorAll('h2')].map(h => h.textContent);
  const summary = [...document.querySelectorAll('table')].find(t => t.querySelector('th')
                     && t.querySelector('th').textContent === 'arm'
                     && [...t.querySelectorAll('th')].some(th => th.textContent === 'final accuracy'));
  return JSON.stringify({imgs, heads, summary_rows: summary ? summary.tBodies[0].rows.length : -1,
                         height: document.documentElement.scrollHeight});
})()"""


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


async def _session(ws_url: str, page_url: str, screenshot: bool, width: int) -> dict:
    import aiohttp

    errors: list[str] = []
    msg_id = 0
    pending: dict[int, asyncio.Future] = {}
    loaded = asyncio.Event()

    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url, max_msg_size=0) as ws:
        async def reader():
            async for msg in ws:
                data = json.loads(msg.data)
                if "id" in data and data["id"] in pending:
                    pending.pop(data["id"]).set_result(data)
                    continue
                method, params = data.get("method"), data.get("params", {})
                if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                    errors.append("console: " + " ".join(str(a.get("value", a.get("description", "")))
                                                         for a in params.get("args", [])))
                elif method == "Runtime.exceptionThrown":
                    errors.append("exception: " + params["exceptionDetails"].get("text", ""))
                elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                    errors.append("log: " + params["entry"].get("text", ""))
                elif method == "Page.loadEventFired":
                    loaded.set()

        task = asyncio.create_task(reader())

        async def call(method: str, **params) -> dict:
            nonlocal msg_id
            msg_id += 1
            fut = asyncio.get_running_loop().create_future()
            pending[msg_id] = fut
            await ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params}))
            reply = await asyncio.wait_for(fut, 60)
            if "error" in reply:
                raise RuntimeError(f"{method}: {reply['error']}")
            return reply.get("result", {})

        for domain in ("Page", "Runtime", "Log"):
            await call(f"{domain}.enable")
        await call("Emulation.setDeviceMetricsOverride", width=width, height=900, deviceScaleFactor=1, mobile=False)
        await call("Page.navigate", url=page_url)
        await asyncio.wait_for(loaded.wait(), 60)
        await asyncio.sleep(0.3)  # late console messages
        probe = json.loads((await call("Runtime.evaluate", expression=PROBE, returnByValue=True))["result"]["value"])
        shot = None
        if screenshot:
            shot = base64.b64decode((await call("Page.captureScreenshot", format="png",
                                                captureBeyondViewport=True))["data"])
        task.cancel()
    return {**probe, "errors": errors, "screenshot": shot}


def check_page(html_path: str | Path, *, screenshot: bool = False, width: int = 1280, timeout: float = 90.0) -> dict:
    """Load `html_path` in headless Chromium; see the module docstring for what comes back."""
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("chromium is not installed (Debian: apt-get install chromium)")
    profile = tempfile.mkdtemp(prefix="raal-chromium-")
    args = [exe, "--headless=new", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
            "--disable-extensions", "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox (CI runs as root)
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        port = None
        for line in proc.stderr:  # "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/…"
            m = re.search(r"ws://127\.0\.0\.1:(\d+)/", line)
            if m:
                port = int(m.group(1))
                break
        if port is None:
            raise RuntimeError(f"chromium did not start (exit code {proc.poll()})")

        async def run():
            import aiohttp

            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
                    pages = [t for t in await resp.json() if t.get("type") == "page"]
            return await _session(pages[0]["webSocketDebuggerUrl"], Path(html_path).resolve().as_uri(), screenshot,
                                  width)

        return asyncio.run(asyncio.wait_for(run(), timeout))
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    result = check_page(sys.argv[1], screenshot=len(sys.argv) > 2)
    if len(sys.argv) > 2:
        Path(sys.argv[2]).write_bytes(result.pop("screenshot"))
    print(json.dumps({k: v for k, v in result.items() if k != "screenshot"}, indent=1))
