"""Errors a user can cause. The CLI prints them as one line and exits non-zero, no traceback."""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix: bad input file, bad config, wrong model. ``str()`` is the one line shown."""

    exit_code = 2


class AudioError(UserError):
    """An audio file that cannot be used: names the file, what is wrong and what to do."""


class FeatureError(UserError):
    """Samples the feature front end refuses (NaN/inf, wrong shape)."""


class BundleError(UserError):
    """A model bundle whose manifest or model does not hold together."""
