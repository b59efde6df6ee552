"""I/O and the artifact: URIs (storage), reference Parquet and its split (data), the model artifact
(artifact), run manifests (manifest), connecting to Ray (raycluster)."""
