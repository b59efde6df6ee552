"""Thin `ray job submit` entry points: parse a config, call synth, exit non-zero on failure."""
