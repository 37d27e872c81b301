"""A screenshot of the live viewer watching the demo clip, for the README: every part real.

    python -m tools.viewer_screenshot [--seconds 20] [--out docs/viewer.png]

It starts mosquitto on a free loopback port, ``anoncam run`` on the bundled clip (``agent/assets/demo.mp4``,
public domain) in a loop, ``anoncam view`` on a free port, and Debian's headless Chromium on the page, and
saves what the browser shows after ``--seconds``. Needs mosquitto, chromium, chromium-driver and selenium
(the test extra), as the viewer's test does; the helpers are the tests' own (tests/daemon_helpers.py,
tests/browser.py).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import cv2

from tools.reports import ROOT

sys.path.insert(0, str(ROOT / "tests"))  # the helpers live with the tests that share them

from browser import Browser, missing  # noqa: E402
from daemon_helpers import (  # noqa: E402
    Broker,
    agent_command,
    agent_env,
    terminate,
    wait_for,
    write_config,
)

from agent.commands.view import viewer_server  # noqa: E402
from agent.config import load_config  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.viewer_screenshot", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0, help="how long the page watches before the screenshot")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "viewer.png")
    ap.add_argument("--size", default="1280x860", help="browser window, WIDTHxHEIGHT")
    args = ap.parse_args(argv)
    if why := missing():
        raise SystemExit(why)
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="anoncam-viewer-") as tmp, \
            resources.as_file(resources.files("agent.assets").joinpath("demo.mp4")) as clip:
        tmp = Path(tmp)
        broker = Broker(tmp).start()
        config = write_config(tmp / "agent.yaml", capture={"source": str(clip), "loop": True},
                              mqtt={"host": "127.0.0.1", "port": broker.port, "prefix": "anoncam", "camera": "lab-door"},
                              stats={"interval_s": 2})
        agent = subprocess.Popen(agent_command("run", "--config", str(config)), env=agent_env(),
                                 stdout=subprocess.DEVNULL, stderr=open(tmp / "agent.log", "wb"))
        server = viewer_server(load_config(config), port=0).start()
        browser = Browser(width, height)
        try:
            browser.open(server.url)
            if not browser.wait("Number(document.body.dataset.framesShown) >= 1", 120):
                raise SystemExit(f"no frame reached the page: {(tmp / 'agent.log').read_text()[-2000:]}")
            time.sleep(args.seconds)
            wait_for(lambda: browser.run("return !window.anoncamViewer.drawing;"), 5)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(args.out), browser.screenshot(), [cv2.IMWRITE_PNG_COMPRESSION, 9])
            shown = browser.run("return window.anoncamViewer.framesShown;")
        finally:
            browser.close()
            server.close()
            terminate(agent)
            broker.stop()
    print(f"{args.out}: the page after {args.seconds:g} s, {shown} frames shown")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
