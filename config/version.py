"""This service's version, for build-info metrics and the heartbeat (standard library only: both sides import it)."""

from __future__ import annotations

import configparser
import importlib.metadata
from pathlib import Path

PACKAGE = "funasr-stream"


def package_version() -> str:
    """This service's version: the installed distribution's, else setup.cfg's (a checkout), else ``unknown``."""
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        pass
    parser = configparser.ConfigParser()
    parser.read(Path(__file__).resolve().parent.parent / "setup.cfg")
    return parser.get("metadata", "version", fallback="unknown")
