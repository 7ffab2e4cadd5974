"""An unreachable tracking server as one ``galaxy10: error:`` line, not a traceback."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import requests
from mlflow.exceptions import MlflowException

from core.errors import ConfigError


def unreachable_reason(err: BaseException) -> str | None:
    """Why the tracking server could not be reached (``connection refused``, ``timed out``), or None
    when ``err`` (or what it was raised from) is not a connection failure."""

    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, requests.exceptions.Timeout):
            return "timed out"
        if isinstance(current, requests.exceptions.ConnectionError):
            return "connection refused" if "refused" in str(current).lower() else "connection failed"
        current = current.__cause__ or current.__context__
    return None


@contextlib.contextmanager
def server_errors(uri: str) -> Iterator[None]:
    """Turn a failure to reach the tracking server inside the block into one :class:`ConfigError` line.

    MLflow's client retries each request first (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, default 7, with
    exponential backoff: about 6 minutes of "Retrying" warnings), so a server that comes back within
    that window is ridden out. Other MLflow errors propagate unchanged.
    """

    try:
        yield
    except (MlflowException, requests.exceptions.RequestException) as err:
        reason = unreachable_reason(err)
        if reason is None:
            raise
        raise unreachable_error(uri, reason) from None


def unreachable_error(uri: str, reason: str) -> ConfigError:
    """The one-line error for a tracking server that did not answer."""
    return ConfigError(
        f"MLflow tracking server {uri} is unreachable ({reason}, after the client's retries); "
        "start it again or fix --tracking-uri / MLFLOW_TRACKING_URI, then re-run the same "
        "command to continue"
    )
