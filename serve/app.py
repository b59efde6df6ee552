"""Ray Serve application builder: `import_path: serve.app:build_app` (logic in synth.serving)."""
from __future__ import annotations

from typing import Any

from ray.serve import Application

from synth.serving import build_application


def build_app(args: dict[str, Any]) -> Application:
    """args: see synth.serving.ServeArgs (artifact_uri, slo_p99_ms, max_batch_size, ...)."""
    return build_application(args)
