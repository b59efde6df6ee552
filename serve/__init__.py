"""Ray Serve entry point: `serve run serve/config.yaml` or `serve deploy serve/config.yaml`."""
