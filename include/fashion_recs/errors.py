"""Errors a user can meet. Each message says what happened, where, and what to do about it.

Tasks translate these into non-retried task failures: retrying cannot fix bad data.
"""

from __future__ import annotations


class FashionRecsError(Exception):
    """Base class: a problem with the data or the configuration, not a bug."""


class SourceError(FashionRecsError):
    """A raw export could not be found, fetched or read."""


class RejectRateExceeded(FashionRecsError):
    """A stage quarantined more rows than its configured threshold allows."""


class QualityCheckFailed(FashionRecsError):
    """A Great Expectations suite failed on an artifact."""


class PublishError(FashionRecsError):
    """Publishing to the results database failed; readers stay on the previous run."""


class DatabaseUnavailable(PublishError):
    """The results database could not be reached or did not answer in time. Unlike bad data,
    this can pass: tasks let Airflow retry it."""

    retryable = True


class PublishLockTimeout(PublishError):
    """Another publish held the database's publish lock longer than the configured wait."""


class RunDirectoryBusy(FashionRecsError):
    """Another process is running the same run id in the same run directory."""


class ResourceLimitExceeded(FashionRecsError):
    """A model build would need more memory than its configured limit; nothing was started."""


class EngineMismatch(FashionRecsError):
    """Two mining engines disagreed on the same baskets: a bug, never a data problem."""


class RunNotPublished(FashionRecsError):
    """A run ended without publishing; its report says which tasks failed or never ran."""
