"""``bot serve`` and ``bot db``: registered on the main parser."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add the server's commands to the ``bot`` parser (filled in by the server work)."""
    del sub
    _ = argparse
