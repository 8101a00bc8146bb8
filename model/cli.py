"""`wenzhi` sub-commands of the model package."""
from __future__ import annotations

import argparse


def register(sub: "argparse._SubParsersAction") -> None:
    """Add this package's sub-commands to the `wenzhi` parser."""
