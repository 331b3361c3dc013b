"""The seams of a retraining job: what its body needs from the registry and from its execution."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from mnistops.gates.report import GateReport
    from mnistops.store.records import RetrainJob
    from mnistops.training.data import Mnist

__all__ = ["JOB_KEY_TAG", "JOB_TAG", "JobSink", "ModelVersionLike", "RetrainRegistry", "job_key"]

JOB_TAG = "mnistops.retrain_job"  # version tag: id of the job that registered it (for people)
# version tag the re-run looks up: job ids repeat across stores that share one registry (a store
# recreated, a staging and a production store), the id with the job's creation time does not
JOB_KEY_TAG = "mnistops.retrain_job_key"


def job_key(job: RetrainJob) -> str:
    """``<id>-<created_at in µs>``: identifies a job across every store sharing a registry."""
    return f"{job.id}-{round(job.created_at * 1e6)}"


class ModelVersionLike(Protocol):
    """What is read from a registry search result (an MLflow ``ModelVersion``)."""

    @property
    def version(self) -> Any: ...  # MLflow types it loosely (str, sometimes int)
    @property
    def run_id(self) -> str | None: ...


class RetrainRegistry(Protocol):
    """The registry calls a job makes (:class:`mnistops.registry.core.Registry` satisfies it)."""

    def alias_version(self, alias: str) -> str | None: ...
    def download(self, version: str) -> Path: ...
    def search_versions(self, extra_filter: str = "") -> Sequence[ModelVersionLike]: ...
    def register(
        self,
        model_dir: Path,
        run_id: str | None = None,
        mnist: Mnist | None = None,
        profile: bool = True,
        tags: dict[str, str] | None = None,
    ) -> str: ...
    def gate(self, version: str, mnist: Mnist | None = None) -> GateReport: ...
    def set_challenger(self, version: str) -> None: ...


class JobSink(Protocol):
    """The claimed job as its body sees it (:class:`mnistops.worker.execute.JobContext`)."""

    @property
    def job(self) -> RetrainJob: ...  # as claimed: details hold what earlier attempts recorded
    def note(self, msg: str, *, details: dict[str, Any] | None = None, version: str | None = None) -> None:
        """Append a log line (and details) to the job; raises LeaseLostError if the lease is gone."""

    def confirm_lease(self) -> None:
        """Extend the lease now; raises LeaseLostError if another worker has the job."""
