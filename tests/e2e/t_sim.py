#!/usr/bin/env python3
"""End-to-end test of banditd-sim ($BANDITD_SIM): logged answers and usage,
streaming, unknown prompts and models, and latency that scales with --speed."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

SIM = os.environ.get("BANDITD_SIM", "build/banditd-sim")
STRONG, CHEAP = "gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1"
# The latency assumptions stated in include/banditd/dataset.h.
LAT = {STRONG: (600.0, 30.0), CHEAP: (300.0, 80.0)}


def latency_ms(model, tokens):
    ttft, rate = LAT[model]
    return ttft + tokens / rate * 1000.0


def make_rows():
    rows = []
    for i in range(20):
        outs = {}
        for m, q in ((STRONG, 1.0), (CHEAP, float(i % 2))):
            ct = 40 + 10 * i if m == STRONG else 20 + i
            o = {"quality": q, "prompt_tokens": 11 + i, "completion_tokens": ct,
                 "cost_usd": 0.001, "latency_ms": None}
            if i < 10:  # rows 10.. have no response text: a placeholder is served
                o["response"] = f"Answer {i} from {m}: " + "naïve café ✓ " * (i + 1)
            outs[m] = o
        rows.append({"id": f"t/{i}", "prompt": f"Question number {i}: why is the sky blue?",
                     "source": "test", "outcomes": outs})
    # a long answer used for the latency check: 300 tokens of GPT-4
    rows.append({"id": "t/slow", "prompt": "slow one", "source": "test", "outcomes": {
        STRONG: {"quality": 1.0, "prompt_tokens": 5, "completion_tokens": 300, "cost_usd": 0.01},
        CHEAP: {"quality": 0.0, "prompt_tokens": 5, "completion_tokens": 300, "cost_usd": 0.001}}})
    return rows


class Sim:
    def __init__(self, data, tmp, *extra):
        self.port_file = os.path.join(tmp, f"port.{len(os.listdir(tmp))}")
        self.p = subprocess.Popen([SIM, "--data", data, "--port", "0", "--port-file",
                                   self.port_file, *extra], stderr=subprocess.PIPE)
        deadline = time.time() + 10
        while not os.path.exists(self.port_file):
            if self.p.poll() is not None:
                raise SystemExit("sim exited: " + self.p.stderr.read().decode())
            if time.time() > deadline:
                raise SystemExit("sim did not start")
            time.sleep(0.02)
        self.base = f"http://127.0.0.1:{int(open(self.port_file).read())}"

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        try:
            rc = self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            raise SystemExit("sim did not stop on SIGTERM")
        assert rc == 0, f"sim exit {rc}"

    def post(self, body, stream=False):
        req = urllib.request.Request(self.base + "/v1/chat/completions",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        t0 = time.monotonic()
        try:
            r = urllib.request.urlopen(req, timeout=30)
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), json.loads(e.read()), time.monotonic() - t0, None
        first = None
        if stream:
            events = []
            for line in r:
                if first is None:
                    first = time.monotonic() - t0
                line = line.decode().rstrip("\n")
                if line.startswith("data: "):
                    events.append(line[6:])
            return r.status, dict(r.headers), events, time.monotonic() - t0, first
        data = json.loads(r.read())
        return r.status, dict(r.headers), data, time.monotonic() - t0, None


def chat(model, prompt, **kw):
    return dict(model=model, messages=[{"role": "system", "content": "be brief"},
                                       {"role": "user", "content": "an earlier turn"},
                                       {"role": "assistant", "content": "ok"},
                                       {"role": "user", "content": prompt}], **kw)


def main():
    if not os.access(SIM, os.X_OK):
        print(f"banditd-sim not built at {SIM}")
        return 1
    rows = make_rows()
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "slice.jsonl")
        with open(data, "w") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        fast = Sim(data, tmp, "--speed", "50")
        try:
            # 1. lookup: the logged response and usage, non-streamed
            for i in (0, 3, 9, 12):
                row = rows[i]
                for m in (STRONG, CHEAP):
                    st, h, d, _, _ = fast.post(chat(m, row["prompt"]))
                    oc = row["outcomes"][m]
                    assert st == 200, (st, d)
                    assert h.get("X-Sim-Row-Id") == row["id"], h
                    assert d["object"] == "chat.completion" and d["model"] == m, d
                    content = d["choices"][0]["message"]["content"]
                    if "response" in oc:
                        assert content == oc["response"], (content, oc["response"])
                    else:  # placeholder of about completion_tokens * 4 characters
                        assert abs(len(content) - 4 * oc["completion_tokens"]) <= 60, len(content)
                    u = d["usage"]
                    assert u["prompt_tokens"] == oc["prompt_tokens"], u
                    assert u["completion_tokens"] == oc["completion_tokens"], u
                    assert u["total_tokens"] == oc["prompt_tokens"] + oc["completion_tokens"]
            # content given as an array of text parts
            st, h, d, _, _ = fast.post({"model": CHEAP, "messages": [{"role": "user", "content": [
                {"type": "text", "text": "Question number 3: "},
                {"type": "text", "text": "why is the sky blue?"}]}]})
            assert st == 200 and h.get("X-Sim-Row-Id") == "t/3", (st, h)

            # 2. streaming with and without the usage chunk
            row = rows[4]
            for include in (True, False):
                body = chat(STRONG, row["prompt"], stream=True)
                if include:
                    body["stream_options"] = {"include_usage": True}
                st, h, events, _, _ = fast.post(body, stream=True)
                assert st == 200 and h["Content-Type"].startswith("text/event-stream"), h
                assert events[-1] == "[DONE]", events[-3:]
                chunks = [json.loads(e) for e in events[:-1]]
                assert all(c["object"] == "chat.completion.chunk" for c in chunks)
                assert chunks[0]["choices"][0]["delta"].get("role") == "assistant"
                text = "".join(c["choices"][0]["delta"].get("content", "")
                               for c in chunks if c["choices"])
                assert text == row["outcomes"][STRONG]["response"], text
                assert len(chunks) > 3, len(chunks)  # really chunked
                finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
                assert finish[-1] == "stop" and all(f is None for f in finish[:-1]), finish
                usage = [c for c in chunks if c.get("usage")]
                if include:
                    assert len(usage) == 1 and usage[0]["choices"] == [], usage
                    assert usage[0]["usage"]["completion_tokens"] == \
                        row["outcomes"][STRONG]["completion_tokens"]
                    assert chunks[-1] is usage[0]  # the last chunk before [DONE]
                else:
                    assert not usage, usage

            # 3. unknown prompt: a generic answer with estimated usage
            st, h, d, _, _ = fast.post(chat(CHEAP, "a prompt that is not in the data"))
            assert st == 200, (st, d)
            assert "X-Sim-Row-Id" not in h, h
            assert d["choices"][0]["message"]["content"], d
            assert d["usage"]["prompt_tokens"] > 0 and d["usage"]["completion_tokens"] > 0

            # 4. unknown model: 404 in OpenAI's error shape
            st, h, d, _, _ = fast.post(chat("no-such-model", rows[0]["prompt"]))
            assert st == 404, st
            assert d["error"]["code"] == "model_not_found" and d["error"]["param"] == "model", d
            assert "no-such-model" in d["error"]["message"], d
            # bad JSON: 400
            req = urllib.request.Request(fast.base + "/v1/chat/completions", data=b"{nope")
            try:
                urllib.request.urlopen(req, timeout=10)
                raise AssertionError("bad JSON accepted")
            except urllib.error.HTTPError as e:
                assert e.code == 400, e.code
                assert "error" in json.loads(e.read())
            # models list
            with urllib.request.urlopen(fast.base + "/v1/models", timeout=10) as r:
                ids = sorted(m["id"] for m in json.loads(r.read())["data"])
            assert ids == sorted([STRONG, CHEAP]), ids
        finally:
            fast.stop()

        # 5. latency follows the model and scales with --speed
        want = latency_ms(STRONG, 300)  # 10,600 ms at speed 1
        took = {}
        for speed in (20.0, 40.0):
            sim = Sim(data, tmp, "--speed", str(speed), "--models", STRONG)
            try:
                st, _, _, dt, _ = sim.post(chat(STRONG, "slow one"))
                assert st == 200
                took[speed] = dt * 1000
                st, _, events, dt_s, first = sim.post(chat(STRONG, "slow one", stream=True),
                                                      stream=True)
                assert st == 200 and events[-1] == "[DONE]"
                # the stream's first byte comes after the TTFT, the end after the total
                assert first * 1000 >= LAT[STRONG][0] / speed * 0.9, (first, speed)
                assert dt_s * 1000 >= want / speed * 0.9, (dt_s, speed)
                assert dt_s * 1000 <= want / speed + 1500, (dt_s, speed)
                # --models restricts what is served
                st, _, d, _, _ = sim.post(chat(CHEAP, "slow one"))
                assert st == 404, st
            finally:
                sim.stop()
        for speed, ms in took.items():
            assert ms >= want / speed * 0.95, (speed, ms, want / speed)
            assert ms <= want / speed + 1000, (speed, ms, want / speed)
        ratio = took[20.0] / took[40.0]
        assert 1.5 <= ratio <= 2.5, took
        print(f"latency at speed 20: {took[20.0]:.0f} ms, at 40: {took[40.0]:.0f} ms "
              f"(model: {want / 20:.0f} / {want / 40:.0f})")

        # 6. SIGTERM does not wait for a long simulated answer (10.6 s at speed 1)
        import threading
        sim = Sim(data, tmp)
        t = threading.Thread(target=lambda: sim.post(chat(STRONG, "slow one", stream=True),
                                                     stream=True), daemon=True)
        t.start()
        time.sleep(0.3)
        t0 = time.monotonic()
        sim.stop()
        assert time.monotonic() - t0 < 3.0, time.monotonic() - t0

        # 7. startup errors: missing data, unknown --models entry
        p = subprocess.run([SIM, "--data", os.path.join(tmp, "none.jsonl"), "--port", "0"],
                           capture_output=True, timeout=10)
        assert p.returncode != 0 and b"none.jsonl" in p.stderr, p
        p = subprocess.run([SIM, "--data", data, "--port", "0", "--models", "zzz"],
                           capture_output=True, timeout=10)
        assert p.returncode == 2 and b"zzz" in p.stderr, p
    print("t_sim: 1 passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
