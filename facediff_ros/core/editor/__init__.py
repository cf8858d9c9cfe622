"""Stage 6, editor: the few-step conditional RGB-D diffusion model (noise schedule, sampler,
network); data, training, export and backends join it as they are built."""
