"""fitserve's Python client and the `fitserve` command; HTTP only, no TensorFlow needed."""

from client.api import Client, spec_from_keras
from client.errors import ConnectionFailed, FitserveError, JobFailed
from client.progress import ProgressDisplay

__all__ = [
    "Client",
    "ConnectionFailed",
    "FitserveError",
    "JobFailed",
    "ProgressDisplay",
    "spec_from_keras",
]
