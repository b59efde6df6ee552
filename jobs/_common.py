"""Shared by the job entry points: config loading and user-facing errors as exit codes."""
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


def load_yaml(uri: str) -> dict:
    import yaml

    from synth import storage
    from synth.errors import ConfigError

    if not storage.exists(uri):
        raise ConfigError(f"config {uri!r} does not exist")
    try:
        return yaml.safe_load(storage.read_bytes(uri)) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config {uri!r} is not valid YAML: {e}") from None
