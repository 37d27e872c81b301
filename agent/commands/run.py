"""``anoncam run``: the camera agent as a command (under systemd, or by hand)."""

from __future__ import annotations

import logging
from pathlib import Path

from agent.errors import AnoncamError

log = logging.getLogger(__name__)


def register(sub):
    p = sub.add_parser("run", help="run the camera agent: capture, anonymize, publish over MQTT",
                       description="Read a camera (or a file or stream), replace every face and publish only anonymized "
                                   "frames and metadata over MQTT. Flags override the config file.")
    p.add_argument("--config", type=Path, help="YAML config (default: built-in defaults, see config/agent.yaml)")
    p.add_argument("--source", help="camera/file/stream URI, overrides capture.source")
    p.add_argument("--broker", help="HOST:PORT, overrides mqtt.host and mqtt.port")
    p.add_argument("--max-frames", type=int, help="stop after this many processed frames")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.max_frames is not None and args.max_frames < 1:
        raise AnoncamError("--max-frames must be at least 1")
    from agent.service.agent import Agent

    agent = Agent(args.config, source=args.source, broker=args.broker)
    code = agent.run(max_frames=args.max_frames)
    if agent.last_stats:
        f = agent.last_stats["frames"]
        unsent = f["published"] - f["sent"] - f["dropped_buffer"] - f["expired_buffer"] - f["lost"]
        log.info("frames read %d, analysed %d, queued %d (%d masked stand-ins), sent over MQTT %d; not sent: "
                 "%d failed closed, %d skipped by capture, %d dropped from the full buffer, %d expired in it, %d lost "
                 "with the connection, %d still buffered at exit", f["read"], f["processed"], f["published"],
                 f["published_masked"], f["sent"], f["dropped_failed"], f["dropped_capture"], f["dropped_buffer"],
                 f["expired_buffer"], f["lost"], max(unsent, 0))
    return code
