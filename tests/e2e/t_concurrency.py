#!/usr/bin/env python3
"""End-to-end: 2,000 requests held open at once against an upstream that answers
after 2 s. All must succeed (byte-exact), and banditd's thread count must not move
(no thread per request): sampled from /proc/PID/status before, during and after.
A second wave goes to an upstream "barrier" that answers only once all 2,000 calls
are waiting at the same time, so its success proves banditd really holds them all
in flight together (no hidden queue), independent of the machine's speed.
Prints the figures (wall time, p50/p99, threads, peak RSS).
Env: E2E_CONCURRENCY (default 2000), E2E_SLOW_MS (default 2000)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2elib as L  # noqa: E402

N = int(os.environ.get("E2E_CONCURRENCY", "2000"))
SLOW_MS = int(os.environ.get("E2E_SLOW_MS", "2000"))
fig = {}


def t_concurrent_requests():
    fig.update(L.concurrency_run(N, SLOW_MS, timeout=40.0))
    print(L.format_figures(fig), flush=True)
    assert fig.get("ok") == N, "%s of %d succeeded: %r" % (fig.get("ok"), N, fig.get("errors"))
    assert fig["byte_exact"] == N, "%d of %d bodies byte-exact" % (fig["byte_exact"], N)


def t_all_in_flight_at_once():
    assert fig.get("barrier_ok") == N, "barrier wave: %s of %d succeeded: %r" % (
        fig.get("barrier_ok"), N, fig.get("barrier_errors"))
    assert fig["barrier_byte_exact"] == N


def t_threads_constant():
    assert fig.get("samples"), "no thread samples taken"
    before, after = fig["threads_before"], fig["threads_after"]
    lo, hi = fig["threads_during_min"], fig["threads_during_max"]
    assert before == lo == hi == after, (
        "thread count moved: before %s, during %s..%s, after %s" % (before, lo, hi, after)
    )


def t_daemon_clean_exit():
    assert fig.get("alive"), "banditd died under load"
    assert fig.get("clean_exit"), fig.get("exit_problem")


L.run_tests(
    [
        ("concurrent_requests_%d" % N, t_concurrent_requests),
        ("all_%d_in_flight_at_once" % N, t_all_in_flight_at_once),
        ("threads_constant", t_threads_constant),
        ("daemon_clean_exit", t_daemon_clean_exit),
    ],
    title="t_concurrency",
)
