#!/usr/bin/env bash
# Routing throughput (chat request + its feedback) with the durable store on
# (store.path set: decisions persisted, feedback answered after its fsync'd
# commit) versus off (store.path ""), in the same run, interleaved rounds
# against the same fake upstream. Prints both rates and their ratio.
#   BANDITD=build/banditd bench/store_throughput.sh [ROUNDS] [SECONDS] [THREADS]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
export BANDITD=${BANDITD:-$here/../build/banditd}
exec python3 - "${1:-3}" "${2:-3}" "${3:-8}" <<'PY'
import http.client, json, os, sys, threading, time
sys.path.insert(0, os.path.join(os.environ.get("PWD", "."), "tests", "e2e"))
here = os.path.dirname(os.path.abspath(os.environ["BANDITD"]))
sys.path.insert(0, os.path.join(here, "..", "tests", "e2e"))
import e2elib as L

rounds, secs, nthreads = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
fake = L.FakeUpstream(record=False)
arms = L.default_arms(fake)
on = L.Banditd(arms, env=L.DEFAULT_KEYS, log_level="warn").start()  # store.path in its tmpdir
off = L.Banditd(arms, env=L.DEFAULT_KEYS, log_level="warn", extra={"store": {"path": ""}}).start()

def worker(port, stop, out, tid):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    n = err = 0
    i = 0
    while not stop.is_set():
        i += 1
        try:
            body = json.dumps({"model": "auto", "messages": [
                {"role": "user", "content": "bench %d %d" % (tid, i)}]})
            c.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
            r = c.getresponse(); r.read()
            rid = r.getheader("X-Bandit-Request-Id")
            c.request("POST", "/feedback", json.dumps({"request_id": rid, "reward": 0.5}),
                      {"Content-Type": "application/json"})
            f = c.getresponse(); f.read()
            if r.status == 200 and f.status == 200:
                n += 1
            else:
                err += 1
        except Exception:
            err += 1
            c.close()
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    out[tid] = (n, err)

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

cpu = {"on": {"loop": 0.0, "other": 0.0, "n": 0}, "off": {"loop": 0.0, "other": 0.0, "n": 0}}

def measure(d, name):
    stop = threading.Event(); out = {}
    c0 = threads_cpu(d.pid)
    ts = [threading.Thread(target=worker, args=(d.port, stop, out, t)) for t in range(nthreads)]
    t0 = time.monotonic()
    for t in ts: t.start()
    time.sleep(secs); stop.set()
    for t in ts: t.join()
    wall = time.monotonic() - t0
    c1 = threads_cpu(d.pid)
    for t, v in c1.items():
        # the main thread (tid == pid) runs the event loop; the rest are the
        # store's writer and library threads
        cpu[name]["loop" if t == str(d.pid) else "other"] += v - c0.get(t, 0.0)
    cpu[name]["n"] += sum(v[0] for v in out.values())
    return sum(v[0] for v in out.values()) / wall, sum(v[1] for v in out.values())

res = {"on": [], "off": []}
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
m_on = sorted(res["on"])[len(res["on"]) // 2]; m_off = sorted(res["off"])[len(res["off"]) // 2]
print("median: store on %.1f/s, store off %.1f/s, on/off = %.3f (store cost %.1f%%)"
      % (m_on, m_off, m_on / m_off, 100 * (1 - m_on / m_off)))
PY
