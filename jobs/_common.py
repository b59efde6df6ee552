"""Shared by the job entry points: user-facing errors as exit codes."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from synth.errors import SynthError


def run_job(main: Callable[[argparse.Namespace], int], description: str) -> None:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--config", required=True, help="YAML config (local path, s3:// or gs://)")
    args = ap.parse_args()
    try:
        code = main(args)
    except SynthError as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    sys.exit(code)
