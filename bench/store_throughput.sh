#!/usr/bin/env bash
# Routing throughput (chat request + its feedback) with the durable store on
# (store.path set: decisions persisted, feedback answered 200 only after its
# fsync'd commit) versus off (store.path ""), in the same run, interleaved
# rounds against the same fake upstream. Prints both rates and their ratio:
# the ratio of the medians and the median of the per-round ratios (each round
# runs off and on back to back, which cancels slow drifts of a shared
# machine's load), and banditd's CPU per request+feedback per thread kind.
#
# MODE closed (default): each client thread sends a chat request, then its
#   feedback on the same keep-alive connection, and waits for the feedback's
#   answer before the next request: the feedback's commit latency is on the
#   client's critical path.
# MODE async: each client thread sends chat requests back to back and hands
#   every request id to its own feedback thread (own connection, bounded
#   queue of 64: it cannot fall behind), like an evaluator that scores
#   answers out of band. Every feedback must still be answered 200 (durable
#   with the store on); a round counts chat requests whose feedback got 200.
#
#   BANDITD=build/banditd bench/store_throughput.sh [ROUNDS] [SECONDS] [THREADS] [MODE]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
export BANDITD=${BANDITD:-$here/../build/banditd}
exec python3 - "${1:-8}" "${2:-2}" "${3:-16}" "${4:-closed}" <<'PY'
import http.client, json, os, queue, sys, threading, time
sys.path.insert(0, os.path.join(os.environ.get("PWD", "."), "tests", "e2e"))
here = os.path.dirname(os.path.abspath(os.environ["BANDITD"]))
sys.path.insert(0, os.path.join(here, "..", "tests", "e2e"))
import e2elib as L

rounds, secs, nthreads, mode = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
if mode not in ("closed", "async"):
    sys.exit("MODE must be closed or async")
fake = L.FakeUpstream(record=False)
arms = L.default_arms(fake)
on = L.Banditd(arms, env=L.DEFAULT_KEYS, log_level="warn").start()  # store.path in its tmpdir
off = L.Banditd(arms, env=L.DEFAULT_KEYS, log_level="warn", extra={"store": {"path": ""}}).start()
JSON = {"Content-Type": "application/json"}


def conn(port):
    return http.client.HTTPConnection("127.0.0.1", port, timeout=30)


def chat(c, tid, i):
    body = json.dumps({"model": "auto", "messages": [
        {"role": "user", "content": "bench %d %d" % (tid, i)}]})
    c.request("POST", "/v1/chat/completions", body, JSON)
    r = c.getresponse(); r.read()
    return r.status, r.getheader("X-Bandit-Request-Id")


fb_ms = {}  # port -> feedback answer times (ms)


def feedback(c, rid):
    t0 = time.monotonic()
    c.request("POST", "/feedback", json.dumps({"request_id": rid, "reward": 0.5}), JSON)
    f = c.getresponse(); f.read()
    fb_ms.setdefault(c.port, []).append(1000 * (time.monotonic() - t0))
    return f.status


def worker_closed(port, stop, out, tid):
    c = conn(port)
    n = err = i = 0
    while not stop.is_set():
        i += 1
        try:
            st, rid = chat(c, tid, i)
            if st == 200 and feedback(c, rid) == 200:
                n += 1
            else:
                err += 1
        except Exception:
            err += 1
            c.close(); c = conn(port)
    out[tid] = (n, err)


def worker_async(port, stop, out, tid):
    q = queue.Queue(maxsize=64)
    res = {"n": 0, "err": 0}

    def fb_thread():
        c = conn(port)
        while True:
            rid = q.get()
            if rid is None:
                return
            try:
                if feedback(c, rid) == 200:
                    res["n"] += 1
                else:
                    res["err"] += 1
            except Exception:
                res["err"] += 1
                c.close(); c = conn(port)

    ft = threading.Thread(target=fb_thread); ft.start()
    c = conn(port)
    i = 0
    while not stop.is_set():
        i += 1
        try:
            st, rid = chat(c, tid, i)
            if st == 200:
                q.put(rid)
            else:
                res["err"] += 1
        except Exception:
            res["err"] += 1
            c.close(); c = conn(port)
    q.put(None); ft.join()  # every queued feedback answered before the round ends
    out[tid] = (res["n"], res["err"])


def threads_cpu(pid):
    """CPU seconds per thread of pid (utime + stime from /proc)."""
    res = {}
    for t in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/stat" % (pid, t)) as f:
                st = f.read()
        except OSError:
            continue
        fld = st[st.rindex(")") + 2:].split()
        res[t] = (int(fld[11]) + int(fld[12])) / os.sysconf("SC_CLK_TCK")
    return res


cpu = {}


def measure(d, name):
    stop = threading.Event(); out = {}
    c0 = threads_cpu(d.pid)
    fn = worker_closed if mode == "closed" else worker_async
    ts = [threading.Thread(target=fn, args=(d.port, stop, out, t)) for t in range(nthreads)]
    t0 = time.monotonic()
    for t in ts: t.start()
    time.sleep(secs); stop.set()
    for t in ts: t.join()
    wall = time.monotonic() - t0
    c1 = threads_cpu(d.pid)
    acc = cpu.setdefault(name, {"loop": 0.0, "other": 0.0, "n": 0})
    for t, v in c1.items():
        # the main thread (tid == pid) runs the event loop; the others are the
        # store's writer and library threads
        acc["loop" if t == str(d.pid) else "other"] += v - c0.get(t, 0.0)
    acc["n"] += sum(v[0] for v in out.values())
    return sum(v[0] for v in out.values()) / wall, sum(v[1] for v in out.values())


res = {"on": [], "off": []}
measure(on, "on"); measure(off, "off")  # warm both up (not counted)
cpu.clear(); fb_ms.clear()
for r in range(rounds):
    for name, d in (("off", off), ("on", on)) if r % 2 == 0 else (("on", on), ("off", off)):
        rate, errs = measure(d, name)
        res[name].append(rate)
        print("round %d store %-3s %8.1f request+feedback/s (errors %d)" % (r, name, rate, errs),
              flush=True)
on.finish(); off.finish(); fake.stop()
for name in ("off", "on"):
    c = cpu[name]
    if c["n"]:
        print("banditd CPU per request+feedback, store %-3s: loop thread %.3f ms, other threads "
              "%.3f ms" % (name, 1000 * c["loop"] / c["n"], 1000 * c["other"] / c["n"]))


def median(v):
    v = sorted(v)
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


for name, d in (("off", off), ("on", on)):
    v = sorted(fb_ms.get(d.port, []))
    if v:
        print("feedback answer time, store %-3s: p50 %.1f ms, p90 %.1f ms"
              % (name, v[len(v) // 2], v[int(len(v) * 0.9)]))
m_on = median(res["on"]); m_off = median(res["off"])
pair = median([a / b for a, b in zip(res["on"], res["off"]) if b > 0])
print("median (%s, %d clients): store on %.1f/s, store off %.1f/s, on/off = %.3f (store cost "
      "%.1f%%); median per-round on/off = %.3f"
      % (mode, nthreads, m_on, m_off, m_on / m_off, 100 * (1 - m_on / m_off), pair))
PY
