"""One error family for everything a user can cause; the CLI turns each into one line and an exit code.

Exit codes (documented in docs/cli.md):
    0 ok, 1 internal error (a bug: please report), 2 bad input, 3 quality gate failed,
    4 refused to unpickle an untrusted checkpoint, 130 interrupted. Every class below, its messages and how to
    fix each: docs/errors.md.
"""

from __future__ import annotations


class SsmpruneError(Exception):
    """Base class: a message meant for the user and the exit code that goes with it."""

    exit_code = 1


class BadInputError(SsmpruneError):
    """The user's file, folder, option or recipe cannot be used as given."""

    exit_code = 2


class CheckpointError(BadInputError):
    """A checkpoint could not be read or does not match any supported architecture."""


class RecipeError(BadInputError):
    """A recipe or schedule is invalid or unreachable."""


class DataError(BadInputError):
    """Calibration / evaluation images could not be found or read."""


class MissingDependencyError(BadInputError):
    """The run needs an optional package that is not installed (Triton for CUDA: `pip install 'ssmprune[gpu]'`)."""


class QualityGateError(SsmpruneError):
    """A CI gate (--max-flops, --min-speedup, --max-acc-drop) was missed on purpose."""

    exit_code = 3


class Interrupted(SsmpruneError):
    """Ctrl-C (SIGINT): the run stopped; nothing half-written was left, and the message says what was kept."""

    exit_code = 130


class UnsafeCheckpointError(SsmpruneError):
    """A pickle wanted to build an object outside the allow-list; nothing was executed."""

    exit_code = 4
