#!/usr/bin/env python3
"""banditd demo client: send every logged prompt through banditd, post the
logged quality of the arm banditd chose as feedback, print what it cost.

Reads the same jsonl(.gz) file the simulator serves. For each row (in an order
shuffled by --seed with the same generator and Fisher-Yates walk as
`banditd replay`), it POSTs a chat completion with the row's prompt as the
only user message, reads X-Bandit-Arm / X-Bandit-Request-Id, and POSTs
{"request_id", "reward": logged quality of that arm} to /feedback.
Stdlib only (asyncio, raw HTTP/1.1 with keep-alive)."""
import argparse
import asyncio
import gzip
import json
import sys
import time

MASK = (1 << 64) - 1


class Rng:
    """xoshiro256** seeded by splitmix64: the same stream as util_rng in C."""

    def __init__(self, seed):
        x = seed & MASK
        s = []
        for _ in range(4):
            x = (x + 0x9E3779B97F4A7C15) & MASK
            z = x
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
            s.append(z ^ (z >> 31))
        self.s = s

    @staticmethod
    def _rotl(x, k):
        return ((x << k) | (x >> (64 - k))) & MASK

    def next(self):
        s = self.s
        result = (self._rotl((s[1] * 5) & MASK, 7) * 9) & MASK
        t = (s[1] << 17) & MASK
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = self._rotl(s[3], 45)
        return result


def shuffle(rows, seed):
    rng = Rng(seed)
    for i in range(len(rows) - 1, 0, -1):
        j = rng.next() % (i + 1)
        rows[i], rows[j] = rows[j], rows[i]


def load(path):
    opener = gzip.open if path.endswith(".gz") else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    return rows


class Conn:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, host, port):
        self.host, self.port = host, port
        self.r = self.w = None

    async def request(self, method, path, body, headers):
        for attempt in range(2):
            if self.w is None:
                self.r, self.w = await asyncio.open_connection(self.host, self.port)
            data = json.dumps(body).encode()
            head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
            head += "Content-Type: application/json\r\n"
            head += f"Content-Length: {len(data)}\r\n"
            for k, v in headers.items():
                head += f"{k}: {v}\r\n"
            self.w.write(head.encode() + b"\r\n" + data)
            try:
                return await self._read()
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()
                if attempt:
                    raise
        raise RuntimeError("unreachable")

    async def _read(self):
        status_line = await self.r.readuntil(b"\r\n")
        status = int(status_line.split()[1])
        hdrs = {}
        while True:
            line = await self.r.readuntil(b"\r\n")
            if line == b"\r\n":
                break
            k, _, v = line.decode("latin-1").partition(":")
            hdrs[k.strip().lower()] = v.strip()
        if "content-length" in hdrs:
            body = await self.r.readexactly(int(hdrs["content-length"]))
        elif hdrs.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await self.r.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await self.r.readexactly(size + 2)
                if size == 0:
                    break
                parts.append(chunk[:-2])
            body = b"".join(parts)
        else:
            body = await self.r.read()
            self.close()
        if hdrs.get("connection", "").lower() == "close":
            self.close()
        return status, hdrs, body

    def close(self):
        if self.w is not None:
            self.w.close()
        self.r = self.w = None


def pct(values, q):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


async def run(args):
    rows = load(args.data)
    shuffle(rows, args.seed)
    if args.limit:
        rows = rows[: args.limit]
    models = list(rows[0]["outcomes"].keys())
    q_mean = {m: sum(r["outcomes"][m]["quality"] for r in rows) / len(rows) for m in models}
    c_sum = {m: sum(r["outcomes"][m]["cost_usd"] for r in rows) for m in models}
    strong = max(models, key=lambda m: q_mean[m])

    queue = asyncio.Queue()
    for r in rows:
        queue.put_nowait(r)
    res = {"n": 0, "ok": 0, "fail": 0, "quality": 0.0, "cost": 0.0, "arms": {}, "lat": [],
           "fb_ok": 0, "fb_fail": 0, "errors": {}}
    headers = {"X-Bandit-Preference": args.preference}
    if args.key:
        headers["Authorization"] = f"Bearer {args.key}"
    total = len(rows)
    t0 = time.monotonic()

    def progress(final=False):
        if args.quiet:
            return
        done = res["n"]
        width = 30
        filled = int(width * done / max(1, total))
        el = time.monotonic() - t0
        bar = "#" * filled + "." * (width - filled)
        sys.stderr.write(f"\r[{bar}] {done}/{total} {done / max(el, 1e-9):.0f} req/s")
        if final:
            sys.stderr.write("\n")
        sys.stderr.flush()

    async def worker():
        conn = Conn(args.host, args.port)
        while True:
            try:
                row = queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            body = {"model": args.model,
                    "messages": [{"role": "user", "content": row["prompt"]}]}
            t = time.monotonic()
            try:
                status, hdrs, _ = await conn.request("POST", "/v1/chat/completions", body, headers)
            except Exception as e:  # noqa: BLE001 - counted and reported
                status, hdrs = 0, {}
                res["errors"][type(e).__name__] = res["errors"].get(type(e).__name__, 0) + 1
                conn.close()
            res["lat"].append((time.monotonic() - t) * 1000)
            res["n"] += 1
            arm = hdrs.get("x-bandit-arm")
            if status != 200 or arm not in row["outcomes"]:
                res["fail"] += 1
                res["errors"][status] = res["errors"].get(status, 0) + 1
            else:
                res["ok"] += 1
                out = row["outcomes"][arm]
                res["quality"] += out["quality"]
                res["cost"] += out["cost_usd"]
                res["arms"][arm] = res["arms"].get(arm, 0) + 1
                fb = {"request_id": hdrs["x-bandit-request-id"], "reward": out["quality"]}
                try:
                    fst, _, _ = await conn.request("POST", "/feedback", fb, {})
                except Exception:  # noqa: BLE001
                    fst = 0
                    conn.close()
                res["fb_ok" if fst == 200 else "fb_fail"] += 1
            if res["n"] % 200 == 0 and res["n"] != res.get("shown"):
                res["shown"] = res["n"]
                progress()
        conn.close()

    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    progress(final=True)
    wall = time.monotonic() - t0
    ok = max(1, res["ok"])
    mq = res["quality"] / ok
    summary = {
        "requests": res["n"], "ok": res["ok"], "failed": res["fail"],
        "feedback_ok": res["fb_ok"], "feedback_failed": res["fb_fail"],
        "mean_quality": mq, "total_cost_usd": res["cost"],
        "strong_model": strong,
        "always_strong_quality": q_mean[strong], "always_strong_cost_usd": c_sum[strong],
        "quality_retention": mq / q_mean[strong],
        "cost_saving": 1 - res["cost"] / c_sum[strong],
        "arm_share": {m: res["arms"].get(m, 0) / ok for m in models},
        "latency_p50_ms": pct(res["lat"], 0.5), "latency_p99_ms": pct(res["lat"], 0.99),
        "wall_s": wall, "errors": {str(k): v for k, v in res["errors"].items()},
        "preference": args.preference, "seed": args.seed,
    }
    return summary


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--preference", default="balanced")
    ap.add_argument("--model", default="auto")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--key", default="")
    ap.add_argument("--json", help="write the summary as JSON to this file")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    s = asyncio.run(run(args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(s, f, indent=1)
    print(f"requests          {s['requests']}  (ok {s['ok']}, failed {s['failed']}; "
          f"feedback ok {s['feedback_ok']}, failed {s['feedback_failed']})")
    print(f"preference        {s['preference']}")
    print(f"mean quality      {s['mean_quality']:.4f}  (always {s['strong_model']}: "
          f"{s['always_strong_quality']:.4f})")
    print(f"quality retention {100 * s['quality_retention']:.1f}%")
    print(f"cost              ${s['total_cost_usd']:.4f}  (always-strong "
          f"${s['always_strong_cost_usd']:.4f})")
    print(f"cost saving       {100 * s['cost_saving']:.1f}%")
    for m, share in s["arm_share"].items():
        print(f"share {m:<28} {100 * share:.1f}%")
    print(f"latency p50/p99   {s['latency_p50_ms']:.1f} / {s['latency_p99_ms']:.1f} ms "
          f"(wall {s['wall_s']:.1f} s)")
    if s["errors"]:
        print(f"errors            {s['errors']}")
    return 0 if s["failed"] == 0 and s["feedback_failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
