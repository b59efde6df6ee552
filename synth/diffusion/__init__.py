"""Continuous-time diffusion: noise processes (`processes`), training objectives (`objectives`),
samplers and their registry (`samplers`), classifier-free guidance (`guidance`)."""
