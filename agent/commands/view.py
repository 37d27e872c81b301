"""``anoncam view``: serve the live viewer, a web page that watches one camera in a browser.

The page (``agent/assets/viewer``) subscribes to the camera's topics itself, over MQTT over WebSockets
(MQTT.js, vendored). By default it connects to this server's bridge, which carries its MQTT bytes to the
broker named in the agent's config (agent.io.viewer_server); with ``--websocket URL`` it connects to the
broker's own WebSockets listener instead (mosquitto: ``listener 9001`` + ``protocol websockets``).
``config.json`` tells the page which of the two, and the camera's topic base.
"""

from __future__ import annotations

import json
import logging
import threading
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

from agent.config import Config, load_config
from agent.errors import AnoncamError
from agent.io.broker_auth import tls_context
from agent.io.viewer_server import BRIDGE_PATH, BrokerEndpoint, ViewerServer

log = logging.getLogger(__name__)

# The page's files and their types; nothing else is served.
PAGE_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/viewer.js": ("viewer.js", "text/javascript; charset=utf-8"),
    "/viewer.css": ("viewer.css", "text/css; charset=utf-8"),
    "/mqtt.min.js": ("mqtt.min.js", "text/javascript; charset=utf-8"),
    "/LICENSE-mqtt.js.md": ("LICENSE-mqtt.js.md", "text/markdown; charset=utf-8"),
    "/favicon.svg": ("favicon.svg", "image/svg+xml"),
}


def register(sub):
    p = sub.add_parser("view", help="serve the live viewer: the camera's anonymized frames, faces and emotions in a browser",
                       description="Serve a web page that shows one camera's anonymized frames with face boxes, each "
                                   "face's emotion and a one-minute timeline. The page speaks MQTT over WebSockets, "
                                   "through this server's bridge to the broker of the agent's config, or straight to "
                                   "a broker's own WebSockets listener with --websocket.")
    p.add_argument("--config", type=Path, help="the agent's YAML config: the broker (mqtt.host, port, tls), mqtt.prefix "
                                               "and mqtt.camera (default: built-in defaults)")
    p.add_argument("--websocket", metavar="URL",
                   help="connect the page to the broker's own MQTT-over-WebSockets listener at URL, e.g. "
                        "ws://broker:9001 or wss://broker/mqtt, instead of this server's bridge")
    p.add_argument("--camera", help="the camera to watch, overrides mqtt.camera")
    p.add_argument("--bind", default="127.0.0.1",
                   help="address to serve the page on (default: 127.0.0.1, this machine only; 0.0.0.0 for the network)")
    p.add_argument("--port", type=int, default=8090, help="port to serve the page on (default: 8090; 0 picks a free one)")
    p.set_defaults(func=run)


def page_settings(cfg: Config, websocket: str | None = None, camera: str | None = None) -> dict:
    """What the page reads from ``config.json``: how it reaches the broker and which topics are the camera's.

    Without ``websocket`` the page connects to this server's bridge (``bridge``: its path here)."""
    url = None
    if websocket is not None:
        parts = urlsplit(websocket)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise AnoncamError(f"--websocket {websocket!r}: give a ws:// or wss:// address, e.g. ws://broker:9001")
        url = websocket
    name = camera if camera is not None else cfg.mqtt.camera
    if not name or any(c in name for c in "/#+"):
        raise AnoncamError(f"--camera {name!r}: a camera name is not empty and has no '/', '#' or '+'")
    # The password stays on the device: the page asks for it when the broker wants one.
    return {"url": url, "bridge": None if url else BRIDGE_PATH, "base": f"{cfg.mqtt.prefix}/{name}", "camera": name,
            "username": cfg.mqtt.username or "", "needs_password": bool(cfg.mqtt.username)}


def page_file(name: str) -> bytes:
    try:
        return resources.files("agent.assets").joinpath("viewer").joinpath(name).read_bytes()
    except OSError:
        raise AnoncamError(f"the viewer's {name} is missing from the installed package: reinstall anoncam") from None


def viewer_server(cfg: Config, websocket: str | None = None, camera: str | None = None, bind: str = "127.0.0.1",
                  port: int = 8090) -> ViewerServer:
    """The page with its settings; the bridge to ``cfg``'s broker unless the page connects to ``websocket``."""
    settings = page_settings(cfg, websocket, camera)
    files = {path: (page_file(name), kind) for path, (name, kind) in PAGE_FILES.items()}
    files["/config.json"] = (json.dumps(settings).encode(), "application/json")
    # The page authenticates itself to the broker: the bridge never lends it the agent's client certificate.
    broker = None if websocket else BrokerEndpoint(cfg.mqtt.host, cfg.mqtt.port,
                                                   tls_context(cfg.mqtt, client_certificate=False))
    return ViewerServer(files, broker, bind, port)


def run(args) -> int:
    cfg = load_config(args.config)
    server = viewer_server(cfg, args.websocket, args.camera, args.bind, args.port)
    via = args.websocket or f"this server's bridge to {cfg.mqtt.host}:{cfg.mqtt.port}"
    server.start()
    log.info("viewer on %s, watching %s/%s over %s (Ctrl-C to stop)", server.url, cfg.mqtt.prefix,
             args.camera or cfg.mqtt.camera, via)
    try:
        threading.Event().wait()
    finally:
        server.close()
    return 0
