"""trainlab's own errors. Their message is the whole story (what is wrong, what to change), so the entry
points print it as one ``error:`` line without a traceback (``trainlab.cli.run_job``); every other exception
is a bug and keeps its traceback."""


def first_line(error: BaseException) -> str:
    """An exception's message cut to its first line (its class's name where it has none): for one-line errors
    that name a cause from another library."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


class TrainlabError(Exception):
    """Base of the errors a user can fix; the message names the setting or file and the fix."""


class ConfigError(TrainlabError, ValueError):
    """A setting with a value trainlab cannot use (``optimizer.lr=0``, ``trainer.precision=8``...)."""


class DataError(TrainlabError):
    """A problem with the user's data or data settings."""


class TooLarge(DataError):
    """Inputs that would take more than the limits allow to read (a server's ``max_pixels``): refused before
    they are decoded."""


class CheckpointError(TrainlabError):
    """A checkpoint that cannot be used (missing, corrupt, unsafe, or for another model)."""


class TrainingError(TrainlabError):
    """A run that cannot go on (diverged, misconfigured monitor)."""
