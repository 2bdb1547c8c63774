"""The library under the scripts, in layers (README, "Project map"): base/ (errors, schema,
checkpoints, lock, provenance, process world), data/ (data sets, loader, augmentation), training/
(params, engine, evaluation, tracking, speed, distributed, command line)."""
