"""Running h2load (nghttp2-client) against one server and reading its summary.

h2load posts the same body file on every stream and reports HTTP status counts and DATA bytes,
but it never sees gRPC trailers.  A gRPC error still answers HTTP 200, so :func:`problems` also
checks that the DATA received covers at least the responses of every successful call.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

H2LOAD = "/usr/bin/h2load"
"""Default path of the h2load binary."""

GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")
"""Request headers every gRPC call carries; h2load adds :method POST because of ``-d``."""


class H2loadError(Exception):
    """h2load failed to run or printed a summary this module cannot read."""


@dataclass(frozen=True)
class H2loadResult:
    """The summary lines of one h2load run."""

    elapsed_s: float
    requests_total: int
    started: int
    done: int
    succeeded: int
    failed: int
    errored: int
    timeout: int
    status_2xx: int
    status_3xx: int
    status_4xx: int
    status_5xx: int
    data_bytes: int


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_FINISHED = re.compile(r"^finished in ([0-9.]+)(us|ms|s|m|h),", re.MULTILINE)
_REQUESTS = re.compile(
    r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout",
    re.MULTILINE,
)
_STATUS = re.compile(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", re.MULTILINE)
_DATA = re.compile(r"^traffic: .*?\((\d+)\) data$", re.MULTILINE)


def _search(pattern: re.Pattern[str], output: str, line: str) -> re.Match[str]:
    match = pattern.search(output)
    if match is None:
        raise H2loadError(f"h2load output has no '{line}' line:\n{output[-2000:]}")
    return match


def parse_summary(output: str) -> H2loadResult:
    """Parse h2load's standard output into an :class:`H2loadResult`.

    Raises H2loadError naming the first summary line that is missing.
    """
    finished = _search(_FINISHED, output, "finished in")
    total, started, done, succeeded, failed, errored, timeout = (
        int(value) for value in _search(_REQUESTS, output, "requests:").groups()
    )
    s2xx, s3xx, s4xx, s5xx = (
        int(value) for value in _search(_STATUS, output, "status codes:").groups()
    )
    return H2loadResult(
        elapsed_s=float(finished.group(1)) * _UNITS[finished.group(2)],
        requests_total=total,
        started=started,
        done=done,
        succeeded=succeeded,
        failed=failed,
        errored=errored,
        timeout=timeout,
        status_2xx=s2xx,
        status_3xx=s3xx,
        status_4xx=s4xx,
        status_5xx=s5xx,
        data_bytes=int(_search(_DATA, output, "traffic:").group(1)),
    )


def problems(result: H2loadResult, calls: int, min_response_data: int) -> list[str]:
    """Return why a run of ``calls`` calls did not fully succeed (empty when it did).

    ``min_response_data`` is the fewest DATA bytes one successful call's response carries.
    """
    found = []
    if result.succeeded != calls:
        found.append(f"{result.succeeded} of {calls} calls succeeded")
    if result.failed or result.errored or result.timeout:
        found.append(
            f"{result.failed} failed, {result.errored} errored, {result.timeout} timed out"
        )
    if result.status_2xx != calls or result.status_3xx or result.status_4xx or result.status_5xx:
        found.append(
            f"HTTP status: {result.status_2xx} 2xx, {result.status_3xx} 3xx, "
            f"{result.status_4xx} 4xx, {result.status_5xx} 5xx"
        )
    if result.data_bytes < calls * min_response_data:
        found.append(
            f"received {result.data_bytes} DATA bytes, successful responses need at least "
            f"{calls * min_response_data} (a gRPC error status answers with HTTP 200 too)"
        )
    return found


def combine(results: Sequence[H2loadResult]) -> H2loadResult:
    """Return the summary of consecutive runs as one: every count and the elapsed time summed."""
    if not results:
        raise ValueError("no h2load results to combine")
    totals = {
        field.name: sum(getattr(result, field.name) for result in results)
        for field in dataclasses.fields(H2loadResult)
    }
    return H2loadResult(**totals)


def read_latencies(log_file: Path) -> list[float]:
    """Return the seconds every request took, from an h2load ``--log-file``.

    Each row is tab-separated: start time (us since the epoch), HTTP status, microseconds
    until the end of the response (more columns may follow).
    """
    latencies = []
    for number, line in enumerate(log_file.read_text().splitlines(), 1):
        columns = line.split("\t")
        if len(columns) < 3 or not columns[2].isdigit():
            raise H2loadError(f"{log_file}:{number}: not an h2load log row: {line!r}")
        latencies.append(int(columns[2]) * 1e-6)
    return latencies


def command(
    port: int,
    path: str,
    body_file: Path,
    calls: int,
    clients: int,
    streams: int,
    *,
    h2load: str = H2LOAD,
    cpu: int | None = None,
    tls: bool = False,
    log_file: Path | None = None,
) -> list[str]:
    """Return the argv that posts ``body_file`` ``calls`` times to ``127.0.0.1:port/path``.

    With ``cpu`` set, h2load is pinned to that CPU with taskset; with ``tls`` it connects over
    TLS (ALPN h2, the certificate is not verified); with ``log_file`` it writes every
    request's latency there (:func:`read_latencies`).
    """
    if calls < clients:
        raise ValueError(f"h2load needs at least one call per client ({calls} < {clients})")
    argv = [h2load, "-n", str(calls), "-c", str(clients), "-m", str(streams), "-d", str(body_file)]
    for header in GRPC_HEADERS:
        argv += ["-H", header]
    if log_file is not None:
        argv += ["--log-file", str(log_file)]
    argv.append(f"{'https' if tls else 'http'}://127.0.0.1:{port}{path}")
    return ["taskset", "-c", str(cpu), *argv] if cpu is not None else argv


def run(argv: Sequence[str], timeout_s: float) -> H2loadResult:
    """Run h2load and parse its summary; it is killed if it runs longer than ``timeout_s``.

    Raises H2loadError if h2load exits non-zero, times out or prints no readable summary.
    """
    try:
        completed = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise H2loadError(f"h2load did not finish within {timeout_s:.0f} s") from exc
    if completed.returncode != 0:
        raise H2loadError(
            f"h2load exited with {completed.returncode}: {completed.stderr.strip()[-2000:]}"
        )
    return parse_summary(completed.stdout)


def version(h2load: str = H2LOAD) -> str:
    """Return h2load's version line, e.g. ``h2load nghttp2/1.52.0``."""
    completed = subprocess.run(
        [h2load, "--version"], capture_output=True, text=True, timeout=10, check=True
    )
    return completed.stdout.strip()
