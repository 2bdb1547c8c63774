"""Shared machinery of the Nasty Teacher scripts: params, losses, checkpoints, errors."""
