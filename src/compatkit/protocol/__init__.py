"""The IAM-CL2R protocol: data plan, providers, the task sequence, the per-task training loop,
evaluation, and the run directory's records."""
