"""Smoke tests of the end-to-end harness; run on demand: ``python -m pytest benchmarks/e2e``.

They check what the numbers depend on: h2load's summary is read correctly, a round whose calls
failed is never counted, request bodies are well-formed gRPC, CPU time is read from the right
place, and one whole self-check run passes against the real servers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import types
from dataclasses import replace
from pathlib import Path

import pytest
from benchmarks.e2e import (
    callgrind,
    cli,
    h2load,
    instruction_report,
    nodejs,
    procstat,
    report,
    runner,
)
from benchmarks.e2e.grpcio_check import check_call
from benchmarks.e2e.servers import (
    SERVER_ENTRIES_BY_NAME,
    ServerEntry,
    ServerProcess,
    ServerStartError,
    child_environment,
)
from benchmarks.e2e.workloads import STREAM_LENGTH, WORKLOADS_BY_NAME

from fastinject.interop import messages_pb2 as pb

# The summary h2load 1.52 printed for a real run against the grpc.aio server.
H2LOAD_OUTPUT = "\n".join(
    [
        "starting benchmark...",
        "spawning thread #0: 4 total client(s). 2000 total requests",
        "Application protocol: h2c",
        "progress: 100% done",
        "",
        "finished in 455.76ms, 4388.28 req/s, 713.80KB/s",
        "requests: 2000 total, 2000 started, 2000 done, 1998 succeeded, 2 failed, 0 errored, "
        "0 timeout",
        "status codes: 1998 2xx, 0 3xx, 0 4xx, 2 5xx",
        "traffic: 325.32KB (333127) total, 6.15KB (6300) headers (space savings 96.11%), "
        "212.89KB (218000) data",
        "                     min         max         mean         sd        +/- sd",
        "time for request:    29.89ms     80.57ms     54.75ms      8.27ms    76.10%",
    ]
)

needs_h2load = pytest.mark.skipif(
    shutil.which(h2load.H2LOAD) is None, reason="h2load (nghttp2-client) is not installed"
)

needs_node = pytest.mark.skipif(
    SERVER_ENTRIES_BY_NAME["grpc-js"].missing() is not None, reason="node or npm is not installed"
)

needs_valgrind = pytest.mark.skipif(
    bool(callgrind.missing_tools()), reason="valgrind (callgrind_control) is not installed"
)

# The header of a dump callgrind 3.19 wrote on `callgrind_control --dump` for a running server.
CALLGRIND_DUMP = "\n".join(
    [
        "# callgrind format",
        "version: 1",
        "creator: callgrind-3.19.0",
        "pid: 8235",
        "cmd:  python -m fastinject.interop.server --port 0",
        "part: 2",
        "",
        "desc: I1 cache: ",
        "desc: Timerange: Basic block 194710531 - 228113221",
        "desc: Trigger: dump",
        "",
        "positions: line",
        "events: Ir",
        "summary: 166122605",
        "",
        "ob=(1) /usr/lib/x86_64-linux-gnu/libc.so.6",
        "fn=(1) 0x0000000000027200",
        "0 14",
    ]
)


COMPLETE_RUN = h2load.H2loadResult(
    elapsed_s=1.0,
    requests_total=10,
    started=10,
    done=10,
    succeeded=10,
    failed=0,
    errored=0,
    timeout=0,
    status_2xx=10,
    status_3xx=0,
    status_4xx=0,
    status_5xx=0,
    data_bytes=1000,
)


def test_parse_summary_reads_counts_durations_and_data_bytes() -> None:
    """The parser turns h2load's summary into counts, seconds and DATA bytes."""
    result = h2load.parse_summary(H2LOAD_OUTPUT)
    assert result.elapsed_s == pytest.approx(0.45576)
    assert (result.requests_total, result.succeeded, result.failed) == (2000, 1998, 2)
    assert (result.status_2xx, result.status_5xx) == (1998, 2)
    assert result.data_bytes == 218000


def test_parse_summary_rejects_output_without_a_summary() -> None:
    """Output missing a summary line is an H2loadError naming that line, not zeros."""
    truncated = H2LOAD_OUTPUT.replace("status codes:", "statuses:")
    with pytest.raises(h2load.H2loadError, match="status codes:"):
        h2load.parse_summary(truncated)


def test_problems_accepts_a_run_where_every_call_succeeded() -> None:
    """A run with every call 2xx and enough response data has no problems."""
    assert h2load.problems(COMPLETE_RUN, calls=10, min_response_data=100) == []


@pytest.mark.parametrize(
    "changes",
    [
        {"succeeded": 9, "failed": 1},
        {"status_2xx": 9, "status_5xx": 1},
        {"errored": 1},
        {"data_bytes": 999},
    ],
)
def test_problems_rejects_any_failed_or_short_run(changes: dict[str, int]) -> None:
    """A failed call, a non-2xx status or too little response data makes the run invalid."""
    assert h2load.problems(replace(COMPLETE_RUN, **changes), calls=10, min_response_data=100) != []


def test_client_stream_body_is_ten_thousand_framed_requests() -> None:
    """The client-streaming body is 10,000 uncompressed gRPC messages of 100-byte payloads."""
    body = memoryview(WORKLOADS_BY_NAME["client-stream"].request_body())
    sizes = []
    while body:
        assert body[0] == 0
        length = int.from_bytes(body[1:5], "big")
        message = pb.StreamingInputCallRequest.FromString(bytes(body[5 : 5 + length]))
        sizes.append(len(message.payload.body))
        body = body[5 + length :]
    assert sizes == [100] * STREAM_LENGTH


def test_cpu_seconds_matches_the_kernel_accounting_of_this_process() -> None:
    """cpu_seconds of our own pid agrees with os.times() to within a few clock ticks."""
    sum(range(2_000_000))  # use some CPU so the figure is not trivially zero
    before = os.times()
    measured = procstat.cpu_seconds(os.getpid())
    after = os.times()
    low = before.user + before.system + before.children_user + before.children_system
    high = after.user + after.system + after.children_user + after.children_system
    assert low - 0.05 <= measured <= high + 0.05
    assert measured > 0


def test_cpu_seconds_of_an_exited_process_raises() -> None:
    """Asking for the CPU time of a process that is gone raises ProcessLookupError."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    with pytest.raises(ProcessLookupError):
        procstat.cpu_seconds(child.pid)


def test_interference_is_the_busy_time_we_did_not_use() -> None:
    """Other processes' share of a CPU is its busy time minus ours, over the elapsed time."""
    before = procstat.CoreSample(at=10.0, busy={0: 5.0, 1: 7.0}, steal={0: 0.0, 1: 1.0})
    after = procstat.CoreSample(at=12.0, busy={0: 7.0, 1: 8.0}, steal={0: 0.0, 1: 1.5})
    shares = procstat.interference(before, after, own={0: 1.5, 1: 1.0})
    assert shares == pytest.approx((0.25, 0.25))
    assert procstat.interference(before, before, own={}) is None


def test_server_entry_fills_placeholders_into_its_command_line() -> None:
    """An entry's {placeholders} are listed and filled in when its argv is built."""
    entry = ServerEntry("x", "some.module", "test", "os", args=("--stubs", "{grpclib_stubs}"))
    assert entry.placeholders() == {"grpclib_stubs"}
    assert entry.argv("py", {"grpclib_stubs": "/tmp/s.py"}) == [
        "py", "-m", "some.module", "--port", "0", "--stubs", "/tmp/s.py",
    ]  # fmt: skip


def test_a_server_that_exits_before_listening_is_a_start_error(tmp_path: Path) -> None:
    """A server process that dies before announcing its port raises ServerStartError."""
    argv = [sys.executable, "-c", "import sys; sys.stderr.write('boom'); sys.exit(3)"]
    with pytest.raises(ServerStartError, match=r"exited with 3 before listening:\n.*boom"):
        ServerProcess.start(
            "dies", argv, log_dir=tmp_path, env=os.environ, cpu=None, ready_timeout_s=60
        )


def test_a_silent_server_is_stopped_and_reported(tmp_path: Path) -> None:
    """A server that never prints 'listening on PORT' is killed and raises ServerStartError."""
    argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    with pytest.raises(ServerStartError, match="did not print 'listening on PORT'"):
        ServerProcess.start(
            "silent", argv, log_dir=tmp_path, env=os.environ, cpu=None, ready_timeout_s=0.5
        )
    # The silent server was our only child: it has been stopped and reaped.
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


def test_summaries_take_the_median_round_and_compare_with_the_baseline() -> None:
    """Each summary reports the median round and its ratio to the baseline's median."""
    rounds = [
        report.Round("w", "base", i, calls=100, elapsed_s=1.0, cpu_s=0.5) for i in range(3)
    ] + [
        report.Round("w", "other", i, calls=calls, elapsed_s=1.0, cpu_s=0.5)
        for i, calls in enumerate((150, 250, 200))
    ]
    base, other = report.summarise(rounds, {"w": 1}, baseline="base")
    assert other.rate == 200
    assert other.rate_ratio == pytest.approx(2.0)
    assert other.cpu_per_call == pytest.approx(0.5 / 200)
    assert other.cpu_ratio == pytest.approx((0.5 / 200) / (0.5 / 100))
    assert base.rate_ratio == pytest.approx(1.0)


@needs_h2load
def test_a_server_answering_errors_fails_both_checks(tmp_path: Path) -> None:
    """A server ending every call with an error status fails the grpcio check and the round."""
    # h2load itself counts each of those calls a success: they all answer HTTP 200.
    entry = SERVER_ENTRIES_BY_NAME["grpc.aio"]
    # grpcio's generated base servicer answers UNIMPLEMENTED to every method.
    argv = [
        *entry.argv(sys.executable, {}),
        "--servicer",
        "fastinject.interop.test_pb2_grpc:TestServiceServicer",
    ]
    env = child_environment([str(runner.package_root()), str(runner.REPOSITORY)])
    workload = WORKLOADS_BY_NAME["unary-100B"]
    body = tmp_path / "body"
    body.write_bytes(workload.request_body())
    with ServerProcess.start(
        "failing", argv, log_dir=tmp_path, env=env, cpu=None, ready_timeout_s=60
    ) as server:
        assert check_call(server.port, workload) is not None
        calls = workload.clients * workload.streams
        command = h2load.command(
            server.port, workload.path, body, calls, workload.clients, workload.streams
        )
        result = h2load.run(command, timeout_s=60)
    assert result.status_2xx == calls
    problems = h2load.problems(result, calls, workload.min_response_data())
    assert any("DATA bytes" in problem for problem in problems)


@needs_h2load
def test_self_check_passes_against_the_reference_servers() -> None:
    """``--self-check`` starts grpc.aio and grpclib, verifies every workload and exits 0."""
    # The reference servers only: this checks the harness, not fastinject (which
    # ``python -m benchmarks.e2e --self-check`` checks too).
    assert_self_check_passes("grpc.aio,grpclib", timeout_s=300)


def test_parse_summary_reads_the_instruction_total_of_a_dump() -> None:
    """The instructions of a dump are its header's summary line, not a cost line."""
    assert callgrind.parse_summary(CALLGRIND_DUMP) == 166122605


def test_parse_summary_rejects_a_dump_without_a_summary() -> None:
    """A dump without a summary line is a CallgrindError, not zero instructions."""
    with pytest.raises(callgrind.CallgrindError, match="summary"):
        callgrind.parse_summary(CALLGRIND_DUMP.replace("summary:", "totals:"))


def _sample(
    server: str, per_call: int, fixed: int = 5_000_000, index: int = 0, lump: int = 0
) -> instruction_report.Sample:
    """A sample costing ``per_call`` per call and ``fixed`` per batch, ``lump`` more in one."""
    return instruction_report.Sample(
        workload="w",
        server=server,
        index=index,
        small_calls=100,
        small_instructions=fixed + 100 * per_call + lump,
        large_calls=400,
        large_instructions=fixed + 400 * per_call,
    )


def test_a_sample_cancels_the_fixed_cost_of_a_batch() -> None:
    """Instructions per call exclude each batch's fixed cost, which is reported apart."""
    sample = _sample("s", per_call=600_000, fixed=7_000_000)
    assert sample.per_call == pytest.approx(600_000)
    assert sample.per_batch == pytest.approx(7_000_000)


def test_instruction_summaries_compare_with_the_baseline() -> None:
    """A summary has instructions per call and per message, the spread and the baseline ratio."""
    samples = [
        _sample("base", 500_000),
        _sample("base", 500_000, index=1),
        _sample("other", 250_000),
        _sample("other", 260_000, index=1),
    ]
    base, other = instruction_report.summarise(samples, {"w": 10}, baseline="base")
    assert other.per_call == pytest.approx(250_000)
    assert other.per_message == pytest.approx(25_000)
    assert other.spread == pytest.approx(10_000 / 250_000)
    assert other.ratio == pytest.approx(0.5)
    assert base.ratio == pytest.approx(1.0)
    assert (base.spread, base.samples) == (0.0, 2)


def test_a_garbage_collection_in_one_batch_does_not_move_the_summary() -> None:
    """Each batch size's least count is used: a lump in one sample's batch is passed over."""
    lump = 15_000_000
    samples = [_sample("s", 400_000), _sample("s", 400_000, index=1, lump=lump)]
    assert samples[1].per_call == pytest.approx(400_000 - lump / 300)
    (summary,) = instruction_report.summarise(samples, {"w": 1}, baseline="s")
    assert summary.per_call == pytest.approx(400_000)
    assert summary.per_batch == pytest.approx(5_000_000)
    assert summary.spread == pytest.approx(lump / 300 / 400_000)


@pytest.mark.parametrize(("inject", "within"), [(520_000, True), (530_000, False)])
def test_injected_connections_are_compared_with_the_listening_port(
    inject: int, within: bool
) -> None:
    """fastinject-inject is compared with fastinject; more than 5% apart is flagged."""
    samples = [_sample("fastinject", 500_000), _sample("fastinject-inject", inject)]
    summaries = instruction_report.summarise(samples, {"w": 1}, baseline="grpc.aio")
    (comparison,) = instruction_report.compare(summaries)
    assert (comparison.server, comparison.reference) == ("fastinject-inject", "fastinject")
    assert comparison.difference == pytest.approx(inject / 500_000 - 1)
    assert comparison.within is within
    table = instruction_report.format_table(summaries, [comparison], {"w": "1x2, 2/6"}, set(), "x")
    assert ("within 5%" if within else "OUTSIDE 5%") in table


def test_a_pair_is_not_compared_when_one_side_did_not_run() -> None:
    """Without fastinject's own figures there is no comparison to print."""
    summaries = instruction_report.summarise(
        [_sample("fastinject-inject", 1)], {"w": 1}, baseline="grpc.aio"
    )
    assert instruction_report.compare(summaries) == []


@pytest.mark.parametrize(
    ("count", "text"),
    [(999, "999"), (401_234, "401k"), (16_834_000, "16.8M"), (1_234_000_000, "1.23G")],
)
def test_instruction_counts_are_printed_with_three_significant_digits(
    count: int, text: str
) -> None:
    """Counts are shown with three significant digits and a k/M/G unit."""
    assert instruction_report.format_count(count) == text


@needs_h2load
@needs_valgrind
def test_instructions_mode_starts_servers_under_callgrind() -> None:
    """--instructions runs every server under callgrind, two samples by default."""
    options, _ = cli.parse_options(["--instructions", "--servers", "grpc.aio"])
    assert options.rounds == 2
    assert options.server_prefix is not None
    prefix = options.server_prefix(Path("/tmp/x"))
    assert "--tool=callgrind" in prefix
    assert "--callgrind-out-file=/tmp/x/callgrind.out.%p" in prefix


@needs_h2load
@needs_valgrind
def test_instructions_mode_rejects_timing_options(capsys: pytest.CaptureFixture[str]) -> None:
    """Durations and call counts are a usage error with --instructions, not silently ignored."""
    with pytest.raises(SystemExit) as exited:
        cli.parse_options(["--instructions", "--duration", "3"])
    assert exited.value.code == 2
    assert "--instructions takes no --duration" in capsys.readouterr().err


@needs_valgrind
def test_a_counter_reads_what_the_process_executed_since_the_last_read(tmp_path: Path) -> None:
    """Each read counts the instructions since the previous one: work shows, idle does not."""
    # The child burns a loop each time it reads a line, and says when it is done.
    script = "import sys\nfor line in sys.stdin:\n    sum(range(200_000))\n    print(flush=True)\n"
    argv = [*callgrind.command_prefix(tmp_path), sys.executable, "-c", script]
    with subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as child:
        stdin, stdout = child.stdin, child.stdout
        assert stdin is not None
        assert stdout is not None

        def loop(times: int) -> None:
            for _ in range(times):
                stdin.write("\n")
                stdin.flush()
                stdout.readline()

        try:
            # One loop first: it warms up, and proves callgrind is up and listening to commands.
            loop(1)
            counter = callgrind.Counter(child.pid, tmp_path)

            def counted(times: int) -> int:
                counter.read()
                loop(times)
                return counter.read()

            idle, once, thrice = counted(0), counted(1), counted(3)
        finally:
            child.kill()
    assert idle < once / 100
    assert (thrice - once) / 2 == pytest.approx(once, rel=0.05)


def test_a_server_needing_a_missing_program_says_which() -> None:
    """An entry whose executables are not on PATH is unavailable, naming the missing ones."""
    absent = ServerEntry("x", "some.module", "test", "os", programs=("sh", "no-such-program-x"))
    assert absent.missing() == "no-such-program-x not found on PATH"
    present = ServerEntry("x", "some.module", "test", "os", programs=("sh",))
    assert present.missing() is None


@needs_h2load
@needs_valgrind
def test_instructions_mode_refuses_a_server_callgrind_cannot_count(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """grpc-js execs node, which callgrind would not follow: named, it is a usage error."""
    with pytest.raises(SystemExit) as exited:
        cli.parse_options(["--instructions", "--servers", "grpc.aio,grpc-js"])
    assert exited.value.code == 2
    assert "grpc-js cannot run: callgrind cannot count" in capsys.readouterr().err


def test_grpcjs_install_is_reused_while_the_lock_file_is_unchanged(tmp_path: Path) -> None:
    """A completed install is found by the hash of the manifests; a changed lock is a new one."""
    source = tmp_path / "src"
    source.mkdir()
    for name in nodejs.MANIFESTS:
        (source / name).write_text("{}\n")
    first = nodejs.lock_key(source)
    installed = tmp_path / "cache" / f"grpcjs-{first}" / "node_modules"
    installed.mkdir(parents=True)
    (installed / nodejs.INSTALLED_MARKER).write_text("done\n")
    # No npm runs: the marker says the install is complete.
    assert nodejs.install_grpcjs(tmp_path / "cache", source) == installed
    (source / "package-lock.json").write_text('{"lockfileVersion": 3}\n')
    assert nodejs.lock_key(source) != first


@needs_h2load
@needs_node
def test_self_check_passes_against_grpcjs() -> None:
    """grpc-js is installed by npm ci on first use and answers every workload correctly."""
    assert_self_check_passes("grpc-js", timeout_s=900)


def test_consecutive_runs_combine_into_one_summary() -> None:
    """The runs of a connection-per-call round add up: every count and the elapsed time."""
    combined = h2load.combine([COMPLETE_RUN, replace(COMPLETE_RUN, elapsed_s=0.5, failed=1)])
    assert combined.elapsed_s == pytest.approx(1.5)
    assert combined.succeeded == 20
    assert combined.failed == 1
    assert combined.data_bytes == 2000
    assert h2load.problems(combined, 19, 100) == [
        "20 of 19 calls succeeded", "1 failed, 0 errored, 0 timed out",
        "HTTP status: 20 2xx, 0 3xx, 0 4xx, 0 5xx",
    ]  # fmt: skip


def test_latencies_are_read_from_the_h2load_log(tmp_path: Path) -> None:
    """Every row of h2load's --log-file gives one call's latency; a garbled row is an error."""
    log = tmp_path / "log"
    log.write_text("1700000000000000\t200\t1500\n1700000000000100\t200\t250\textra\n")
    assert h2load.read_latencies(log) == pytest.approx([1.5e-3, 250e-6])
    log.write_text("1700000000000000\t200\n")
    with pytest.raises(h2load.H2loadError, match="not an h2load log row"):
        h2load.read_latencies(log)


def test_percentiles_are_latencies_some_call_had() -> None:
    """Nearest-rank percentiles: p50 of 1..1000 ms is 500 ms, p99.9 is 999 ms."""
    values = [i / 1000 for i in range(1000, 0, -1)]
    assert report.percentiles(values) == pytest.approx((0.5, 0.9, 0.99, 0.999))
    assert report.percentiles([0.25]) == (0.25, 0.25, 0.25, 0.25)


def test_summaries_report_the_median_round_of_each_latency_percentile() -> None:
    """Latency percentiles are summarised per percentile over the rounds; none when unlogged."""
    rounds = [
        report.Round("w", "s", i, calls=10, elapsed_s=1.0, cpu_s=0.1, latency_s=latency)
        for i, latency in enumerate([(1.0, 2.0, 3.0, 9.0), (2.0, 3.0, 4.0, 5.0), (3.0, 4, 5, 6)])
    ] + [report.Round("w", "plain", 0, calls=10, elapsed_s=1.0, cpu_s=0.1)]
    logged, plain = report.summarise(rounds, {"w": 1}, baseline="s")
    assert logged.latency_s == (2.0, 3.0, 4.0, 6.0)
    assert plain.latency_s == ()
    table = report.format_latency_table([logged, plain])
    assert "p99.9" in table
    assert "plain" not in table


def test_a_connection_per_call_workload_runs_one_call_per_connection(tmp_path: Path) -> None:
    """connect-100B posts every call on a new connection, at most `clients` at once, over TLS."""
    workload = WORKLOADS_BY_NAME["connect-100B"]
    assert workload.connection_per_call
    options = runner.Options(
        servers=(),
        workloads=(workload,),
        rounds=1,
        duration_s=0.0,
        requests=None,
        warmup_s=0.0,
        server_cpu=None,
        client_cpu=None,
        tls=True,
    )
    server = types.SimpleNamespace(port=4321)
    opened = runner.Session(options, {"s": server}, tmp_path, lambda _: None)  # type: ignore[dict-item]
    runs = opened.h2load_runs("s", workload, tmp_path / "body", 150, None)
    shapes = [(argv[argv.index("-n") + 1], argv[argv.index("-c") + 1]) for argv in runs]
    assert shapes == [("64", "64"), ("64", "64"), ("22", "22")]
    assert all(argv[-1] == f"https://127.0.0.1:4321{workload.path}" for argv in runs)


def test_tls_arguments_are_added_only_in_a_tls_run() -> None:
    """Each server's TLS options are appended, with the generated files filled in."""
    entry = SERVER_ENTRIES_BY_NAME["fastinject"]
    assert entry.placeholders() == set()
    assert entry.placeholders(tls=True) == {"tls_cert", "tls_key"}
    argv = entry.argv("py", {"tls_cert": "/c.pem", "tls_key": "/k.pem"}, tls=True)
    assert argv[-5:] == ["--use_tls", "--cert", "/c.pem", "--key", "/k.pem"]
    assert "--cert" not in entry.argv("py", {})


@needs_h2load
def test_tls_self_check_passes_against_the_reference_servers() -> None:
    """``--tls``: a generated certificate, grpcio checks over TLS, h2load over https."""
    completed = subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks.e2e", "--self-check", "--tls"),
            *("--servers", "grpc.aio,grpclib", "--workloads", "unary-100B,connect-100B"),
        ],
        cwd=runner.REPOSITORY,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "over TLS" in completed.stdout
    assert "p99.9" in completed.stdout


def assert_self_check_passes(servers: str, timeout_s: float) -> None:
    """Run ``python -m benchmarks.e2e --self-check --servers SERVERS``; it must pass."""
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.e2e", "--self-check", "--servers", servers],
        cwd=runner.REPOSITORY,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "self-check passed" in completed.stdout
