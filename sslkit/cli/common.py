"""What the subcommands share beyond :mod:`sslkit.console`: JSON output."""

from __future__ import annotations

import json
import sys

from sslkit.console import console, info, progress, stdout, warn

__all__ = ["console", "info", "print_json", "progress", "stdout", "warn"]


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()
