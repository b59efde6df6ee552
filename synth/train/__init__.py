"""Training: the loop every worker runs (`loop`), and the Ray Train layer over it."""
