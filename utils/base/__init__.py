"""The base layer, which imports nothing else of the project: errors, the params schema's kinds and
keys, checkpoint files, the run-folder lock, provenance (numerics fingerprints) and the process
world under torchrun. nets/ and every layer above may use it."""
