"""Errors a user can cause, each carrying the exit status the scripts end with.

Entry scripts catch `NastyError` at the top and print its message as one line,
so a bad config or a wrong checkpoint never ends in a traceback from deep inside torch.
"""


class NastyError(Exception):
    """A problem the user can fix; its message is the whole explanation."""

    exit_code = 1


class ConfigError(NastyError):
    """Bad command line or params.json (usage errors exit with 2, like argparse)."""

    exit_code = 2


class CheckpointError(NastyError):
    """A checkpoint file that cannot be read or does not fit the network."""

    exit_code = 1


class DataError(NastyError):
    """A data set that is missing, unreadable or malformed; the message names the file."""

    exit_code = 1


class Diverged(NastyError):
    """A non-finite loss: the run stops and keeps its last good checkpoints."""


class Interrupted(NastyError):
    """Ctrl-C (or SIGTERM): the run stopped between steps; its checkpoints are whole."""

    exit_code = 130  # the shell's code for Ctrl-C


def did_you_mean(word, choices):
    """' (did you mean 'x'?)' for the closest choice, or '' when nothing is close."""
    import difflib

    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
