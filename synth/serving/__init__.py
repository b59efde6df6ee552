"""Online sampling with Ray Serve: request models, dynamic batching, SLO-aware steps, metrics, auth.

`build_application(args)` returns the Serve application (serve/app.py is a thin wrapper); the
rest is plain Python, testable without Ray: `SamplingService` (validation, admission, batched
execution), `batching` (grouping and cost caps), `slo` (latency model and SLO tracker).
"""
from __future__ import annotations

from typing import Any

from synth.serving.config import ServeArgs
from synth.serving.schemas import SampleRequest

__all__ = ["ServeArgs", "SampleRequest", "SamplingService", "build_application"]


def __getattr__(name: str) -> Any:  # keep `import synth.serving` free of Ray and FastAPI
    if name == "build_application":
        from synth.serving.deployment import build_application
        return build_application
    if name == "SamplingService":
        from synth.serving.service import SamplingService
        return SamplingService
    raise AttributeError(name)
