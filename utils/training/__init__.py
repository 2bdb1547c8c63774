"""The training layer: params (the schema of a run), the engine (loops, checkpoints, resume),
evaluation, tracking (metrics.jsonl, tensorboard), speed switches, torchrun collectives, the
scripts' command line, device choice and logging. It imports base, nets and data, and is handed
the method table and the method by the layers above (it imports nothing of methods/)."""
