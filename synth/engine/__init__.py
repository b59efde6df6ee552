"""Generators: the sampling protocol (`sampling.py`) and the model of each family (diffusion, array,
gan, fingerprint). `synth.families` registers them; load an artifact with `synth.families.load_engine`."""
