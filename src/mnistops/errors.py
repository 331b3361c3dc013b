"""Exception hierarchy.

Every error we raise on purpose derives from :class:`MnistopsError`. Each class carries the
HTTP status the API answers with and the exit code the CLI exits with, so both front ends map
errors the same way without a table of special cases.
"""

from __future__ import annotations


class MnistopsError(Exception):
    """Base class of all mnistops errors."""

    http_status: int = 500
    exit_code: int = 1
    code: str = "mnistops_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- configuration -------------------------------------------------------------------------
class ConfigError(MnistopsError):
    """A setting or config file is invalid."""

    exit_code = 2
    code = "config_error"


# --- data ----------------------------------------------------------------------------------
class DataError(MnistopsError):
    """The dataset is missing, corrupt or unusable."""

    exit_code = 3
    code = "data_error"


class DataNotFoundError(DataError):
    """The dataset is not in the data dir (run `mnistops data fetch`)."""

    code = "data_not_found"


class ChecksumError(DataError):
    """A file's md5 differs from the expected checksum."""

    code = "checksum_mismatch"


class IdxFormatError(DataError):
    """An idx file has a bad header or a truncated body."""

    code = "idx_format"


# --- models / registry ---------------------------------------------------------------------
class ModelError(MnistopsError):
    """A model artifact is missing or cannot be loaded."""

    http_status = 503
    exit_code = 4
    code = "model_error"


class ModelNotFoundError(ModelError):
    """No model at that path, version or alias."""

    http_status = 404
    code = "model_not_found"


class RegistryError(MnistopsError):
    """A registry operation failed."""

    http_status = 409
    exit_code = 5
    code = "registry_error"


class GateFailedError(RegistryError):
    """A quality gate failed."""

    exit_code = 6
    code = "gate_failed"


class PromotionRefusedError(RegistryError):
    """Promotion refused (gate not passed, already champion, ...)."""

    exit_code = 7
    code = "promotion_refused"


class RollbackError(RegistryError):
    """Nothing to roll back to."""

    exit_code = 8
    code = "rollback_impossible"


class LockTimeoutError(RegistryError):
    """Another process holds the lock for too long."""

    http_status = 423
    exit_code = 9
    code = "lock_timeout"


# --- serving input -------------------------------------------------------------------------
class InputError(MnistopsError):
    """The client sent something we cannot use (maps to 4xx)."""

    http_status = 422
    exit_code = 2
    code = "invalid_input"


class InvalidImageError(InputError):
    """Not a decodable image, truncated, or a decompression bomb."""

    code = "invalid_image"


class PayloadTooLargeError(InputError):
    """Upload bigger than the configured limit."""

    http_status = 413
    code = "payload_too_large"


class BatchSizeError(InputError):
    """Empty or oversize batch."""

    code = "invalid_batch"


class UnsupportedMediaTypeError(InputError):
    """A request body in a Content-Type the operation does not accept."""

    http_status = 415
    code = "unsupported_media_type"


class NotFoundError(MnistopsError):
    """A referenced object (prediction id, job id) does not exist."""

    http_status = 404
    exit_code = 2
    code = "not_found"


class AuthError(MnistopsError):
    """No bearer token (the API answers 401 with a bare ``WWW-Authenticate: Bearer`` challenge)."""

    http_status = 401
    exit_code = 2
    code = "unauthorized"


class InvalidTokenError(AuthError):
    """A bearer token that is not the configured one (RFC 6750 ``error="invalid_token"``)."""


class FeatureDisabledError(MnistopsError):
    """The route or feature is disabled by configuration."""

    http_status = 403
    exit_code = 2
    code = "disabled"


class AdminDisabledError(FeatureDisabledError):
    """The admin API is off (no MNISTOPS_ADMIN_TOKEN): its routes do not exist in this process."""

    http_status = 404
    code = "admin_disabled"


# --- stores / jobs -------------------------------------------------------------------------
class StoreError(MnistopsError):
    """The prediction store is unreachable or failed."""

    http_status = 503
    exit_code = 10
    code = "store_unavailable"


class ConflictError(StoreError):
    """A compare-and-set lost: another writer changed the row first (re-read, then decide again)."""

    http_status = 409
    code = "conflict"


class LeadershipLostError(MnistopsError):
    """This process no longer holds the leader lease: it must stop acting (another leader may act)."""

    exit_code = 10
    code = "leadership_lost"


class JournalError(StoreError):
    """The replica's local prediction journal refused a write (disk full, I/O error): not accepted."""

    code = "journal_unavailable"


class JobError(MnistopsError):
    """A retraining job could not start or failed."""

    http_status = 409
    exit_code = 11
    code = "job_error"


class LeaseLostError(JobError):
    """This worker no longer holds the job's lease (it expired and another worker may run it)."""

    code = "lease_lost"


class DriftDetectedError(MnistopsError):
    """`monitor check` found drift (non-zero exit for CI)."""

    exit_code = 12
    code = "drift_detected"


# --- monitoring (drift) --------------------------------------------------------------------
class DriftConfigError(ConfigError):
    """A drift detector or monitor is misconfigured (alpha, correction, too few permutations, ...)."""

    code = "drift_config"


class DetectorNotFittedError(DriftConfigError):
    """A drift detector was asked to score a window before ``fit(reference)``."""

    code = "detector_not_fitted"


class DriftInputError(InputError):
    """A drift reference or window is unusable (empty, wrong shape or dtype, NaN, missing field)."""

    code = "drift_input"
