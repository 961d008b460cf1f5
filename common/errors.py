"""Errors a user can act on. Each one's message is a single line that names the thing and the reason."""


class LadderError(Exception):
    """Base of the project's own errors; the CLIs print str(error) and exit 2 instead of a traceback."""


class ImageError(LadderError):
    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class WeightsError(LadderError):
    """A weight store or a weight file that cannot be used, and what to do about it."""


class ModelInputError(LadderError, ValueError):
    """An array handed to a stage that is not what every stage expects."""


class ResultsError(LadderError):
    """A results file that cannot be read or written."""


class CacheError(LadderError):
    """A cache folder that is not safe or not usable."""
