#!/usr/bin/env python3
"""Slowloris / idle-connection benchmark for banditd (issue 6, acceptance 5).

Opens many connections that trickle a request header one line at a time
(never finishing it), plus idle connections that send nothing, while a normal
client keeps sending chat requests. Prints the normal client's success rate
and latency, and banditd's RSS before, during and after.

    python3 bench/slowloris.py [--slow 2000] [--duration 10] [--trickle-s 1.0]

Starts its own fake upstream and daemon (BANDITD = path of the binary, default
build/banditd). `run()` is also used by tests/e2e/t_slowloris.py."""

import argparse
import asyncio
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "e2e"))
import e2elib  # noqa: E402


def rss_kb(pid):
    return e2elib.proc_status(pid).get("VmRSS", 0)


async def _slow_conn(port, i, stop, trickle_s, idle, opened, errors):
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as e:
        errors.append(repr(e))
        return
    opened.append(1)
    try:
        if not idle:
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            await writer.drain()
        n = 0
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), trickle_s)
            except asyncio.TimeoutError:
                pass
            if not idle and not stop.is_set():
                n += 1
                writer.write(b"X-Slow-%d: %d\r\n" % (n, i))
                await writer.drain()
    except (ConnectionError, OSError):
        pass  # the server closed us: fine
    finally:
        writer.close()


async def _normal_client(port, stop, results):
    body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "normal"}]})
    i = 0
    while not stop.is_set():
        i += 1
        t0 = time.monotonic()
        try:
            req = e2elib.chat_request_bytes("auto", "normal %d" % i, port=port)
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port), 10)
            writer.write(req)
            await writer.drain()
            status, _, _ = await asyncio.wait_for(e2elib._read_response(reader), 10)
            writer.close()
            results.append((status == 200, time.monotonic() - t0))
        except Exception:  # noqa: BLE001
            results.append((False, time.monotonic() - t0))
        await asyncio.sleep(0.02)
    del body


async def _run(port, pid, n_slow, n_idle, duration, trickle_s):
    fig = {"rss_before_kb": rss_kb(pid)}
    stop = asyncio.Event()
    opened, errors, results = [], [], []
    sem = asyncio.Semaphore(200)

    async def open_one(i, idle):
        async with sem:
            pass
        await _slow_conn(port, i, stop, trickle_s, idle, opened, errors)

    tasks = [asyncio.ensure_future(open_one(i, False)) for i in range(n_slow)]
    tasks += [asyncio.ensure_future(open_one(n_slow + i, True)) for i in range(n_idle)]
    t_open = time.monotonic()
    while len(opened) + len(errors) < n_slow + n_idle and time.monotonic() - t_open < 20:
        await asyncio.sleep(0.05)
    fig["connections_opened"] = len(opened)
    fig["connect_errors"] = len(errors)
    normal = asyncio.ensure_future(_normal_client(port, stop, results))
    peak = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < duration:
        await asyncio.sleep(0.25)
        peak = max(peak, rss_kb(pid))
    fig["rss_during_kb"] = peak
    stop.set()
    await normal
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(0.5)
    fig["rss_after_kb"] = rss_kb(pid)
    ok = [r for r in results if r[0]]
    lat = sorted(r[1] for r in ok)
    fig["normal_requests"] = len(results)
    fig["normal_ok"] = len(ok)
    fig["normal_success_rate"] = len(ok) / max(1, len(results))
    fig["normal_p50_ms"] = 1000 * e2elib.percentile(lat, 50) if lat else float("nan")
    fig["normal_p99_ms"] = 1000 * e2elib.percentile(lat, 99) if lat else float("nan")
    return fig


def run(port, pid, n_slow, n_idle=0, duration=10.0, trickle_s=1.0):
    return asyncio.run(_run(port, pid, n_slow, n_idle, duration, trickle_s))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--slow", type=int, default=2000, help="trickling connections")
    ap.add_argument("--idle", type=int, default=0, help="silent connections")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--trickle-s", type=float, default=1.0)
    a = ap.parse_args()
    e2elib.raise_nofile()
    fake = e2elib.FakeUpstream(record=False)
    d = e2elib.Banditd([e2elib.arm("a", fake.base_url, "echo")], log_level="warn").start()
    try:
        fig = run(d.port, d.pid, a.slow, a.idle, a.duration, a.trickle_s)
        for k, v in fig.items():
            print("%-22s %s" % (k, "%.3f" % v if isinstance(v, float) else v))
        assert d.alive(), "banditd died"
    finally:
        d.stop()
        fake.stop()


if __name__ == "__main__":
    main()
