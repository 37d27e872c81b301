"""The ``anoncam`` command. Each subcommand lives in its own module with ``register(subparsers)``."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys

from agent import __version__
from agent.commands.native_log import QuietNativeLogs
from agent.errors import AnoncamError
from agent.runtime.memory import limit_malloc_arenas

# Modules providing subcommands, in the order `anoncam --help` lists them.
COMMAND_MODULES = ("agent.commands.anonymize", "agent.commands.analyze", "agent.commands.run", "agent.commands.view",
                   "agent.commands.bench", "agent.commands.demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anoncam", description="Anonymizing camera agent: every face replaced by a synthetic one.")
    parser.add_argument("--version", action="version", version=f"anoncam {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and MediaPipe's and TensorFlow Lite's own log lines")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv=None) -> int:
    limit_malloc_arenas()
    # MediaPipe and TFLite log through glog to stderr; keep the user's terminal readable.
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    if hasattr(signal, "SIGXFSZ"):
        # Past a file-size limit a write then fails (EFBIG) with a one-line error, instead of the
        # signal killing the process halfway through a batch.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with contextlib.nullcontext() if args.verbose else QuietNativeLogs():
        try:
            return int(args.func(args) or 0)
        except AnoncamError as exc:
            print(f"anoncam: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return 130


if __name__ == "__main__":
    sys.exit(main())
