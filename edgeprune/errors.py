"""User-facing errors.

Every error a user can cause by bad input is an `EdgePruneError` whose message is one
line naming the problem and the fix. The CLI prints it as `edgeprune: error: ...` and
exits with status 2, never with a traceback.
"""
from __future__ import annotations


class EdgePruneError(Exception):
    """A problem the user can fix; the message says how."""


class ModelError(EdgePruneError):
    """The model directory is missing, unreadable or an unsupported architecture."""


class DataError(EdgePruneError):
    """Calibration or evaluation text is missing, empty or too short."""


class PlanError(EdgePruneError):
    """A pruning request cannot be satisfied (ratio out of range, too many layers...)."""


class OutputError(EdgePruneError):
    """The output path is unusable or holds a result that must not be overwritten."""


class ExportError(EdgePruneError):
    """An export failed or its verification was off beyond tolerance."""


class ToleranceError(ExportError):
    """An artifact ran but its numbers are outside its dtype's tolerance (a quantisation too
    coarse for this model, not a bug): a build may try the target's next dtype."""


class MissingExtraError(EdgePruneError):
    """An optional dependency is not installed; the message names the pip extra."""

    def __init__(self, package: str, extra: str, purpose: str):
        super().__init__(
            f"{purpose} needs the '{package}' package, which is not installed; "
            f"run: pip install 'edgeprune[{extra}]'"
        )
