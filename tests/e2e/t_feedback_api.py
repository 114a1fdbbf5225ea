#!/usr/bin/env python3
"""t_feedback_api — issue 3, acceptance 5: the /feedback API over real HTTP.

Runs the same cases three times: with the store off (store.path "": feedback
is applied synchronously), with a SQLite store in a temporary directory
(feedback is queued, committed by the writer thread and answered from the
commit callback), and with the shared Redis store (store.redis, a private
redis-server; skipped when redis-server is not installed), so every back end
answers the same statuses and codes. feedback.ttl_s is 2 so that expiry can
be tested.

Cases (each mode):
- single_200: POST /feedback {request_id: X-Bandit-Request-Id, reward} -> 200
  {"request_id","status":"applied","arm": index of X-Bandit-Arm}.
- alias_v1: POST /v1/feedback with reward true -> 200.
- duplicate_409: the same id again (both paths, and by its completion id) -> 409
  duplicate_feedback.
- unknown_404: an id banditd never issued -> 404 unknown_request_id.
- malformed_400: bad/truncated/empty JSON, not an object, reward 1.5 / -0.1 /
  "x" / null / NaN-ish, missing request_id, missing reward, request_id not a
  string or empty, unknown field, duplicate field -> 400 with the documented
  code; the request can still be rated afterwards.
- completion_id: feedback keyed by the body's "id" (what an SDK user sees)
  -> 200 naming banditd's id; then banditd's id -> 409.
- stream: a streamed answer rated by X-Bandit-Request-Id (from the stream's
  headers) and another one by the chunks' "id" -> 200 each.
- batch: {"feedback": [...]} with mixed items (applied, unknown, duplicate
  within the batch, bad reward, missing id, by completion id) -> 200 with a
  per-item result in order, "applied"/"failed" counts; also on /v1/feedback;
  envelope errors (feedback not an array, extra field) -> 400.
- concurrent_once: 12 feedbacks for one request sent at once, by its request
  id and its completion id -> exactly one 200, eleven 409.
- expired_410: after ttl_s, feedback for a request made at the start -> 410
  expired_request_id.
After every case: /stats per-arm "feedback" counts moved by exactly the number
of feedbacks the case expects to be applied (and the sum over arms likewise);
rejected feedback changes nothing.
"""

import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2elib as E  # noqa: E402

TTL_S = 2
ARMS = ("cheap", "strong")


class Mode:
    def __init__(self, name, store):
        self.name = name
        self.store = store  # None, "sqlite" or "redis"
        self.redis = None
        self.fake = None
        self.d = None
        self.seq = 0
        self.expiring = None  # (request id, time of the answer)
        self.counts = None  # per-arm feedback counts expected now

    # ---- plumbing ----
    def start(self):
        self.fake = E.FakeUpstream(record=False)
        extra = {"feedback": {"ttl_s": TTL_S}}
        d = E.Banditd(E.default_arms(self.fake), env=E.DEFAULT_KEYS, extra=extra,
                      log_level="warn")
        # Banditd puts a store in its temporary dir by default; set it explicitly.
        d.config["store"] = {"path": os.path.join(d.dir, "state.db")
                             if self.store == "sqlite" else ""}
        if self.store == "redis":
            self.redis = E.RedisServer().start()
            # no snapshot (and so no stream trim) during the run: stop() counts events
            d.config["store"] = {"redis": self.redis.url(), "snapshot_interval_s": 3600}
        with open(d.config_path, "w") as f:
            json.dump(d.config, f, indent=2)
        d.start()
        self.d = d
        self.counts = self.stats_counts()
        assert all(v == 0 for v in self.counts.values()), self.counts

    def stop(self):
        try:
            self.d.finish()
            if self.store == "sqlite":
                db = self.d.config["store"]["path"]
                assert os.path.exists(db), "store mode wrote no database at %s" % db
            if self.redis:
                n = int(self.redis.cmd("XLEN", "{banditd}:feedback"))
                assert n == sum(self.counts.values()), \
                    "redis stream holds %d feedback events, %d applied" % (
                        n, sum(self.counts.values()))
        finally:
            self.fake.stop()
            if self.redis:
                self.redis.kill()

    def prompt(self, tag):
        self.seq += 1
        return "%s %s #%d" % (self.name, tag, self.seq)  # unique: completion ids differ

    def chat(self, tag, stream=False, pref=None):
        text = self.prompt(tag)
        if stream:
            text = "@fake stream:3 " + text
        body = {"model": "auto", "messages": [{"role": "user", "content": text}]}
        if stream:
            body["stream"] = True
        hdrs = {"X-Bandit-Preference": pref} if pref else None
        r = self.d.request("POST", "/v1/chat/completions", body, headers=hdrs)
        assert r.status == 200, "chat: %r" % r
        rid = r.header("X-Bandit-Request-Id")
        arm = r.header("X-Bandit-Arm")
        assert rid and len(rid) == 32 and arm in ARMS, r.headers
        if stream:
            ev = [e for e in E.parse_sse(r.body) if e != "[DONE]"]
            assert ev and E.parse_sse(r.body)[-1] == "[DONE]", r.body[-200:]
            cid = json.loads(ev[0])["id"]
        else:
            cid = r.json()["id"]
        return rid, arm, cid

    def fb(self, obj, path="/feedback"):
        body = obj if isinstance(obj, (bytes, str)) else json.dumps(obj)
        return self.d.request("POST", path, body, headers={"Content-Type": "application/json"})

    def stats_counts(self):
        st = self.d.request("GET", "/stats")
        assert st.status == 200, st
        return {a["name"]: a["feedback"] for a in st.json()["arms"]}

    def expect_applied(self, *arms):
        """/stats feedback counts moved by exactly these arms (one per entry)."""
        for a in arms:
            self.counts[a] += 1
        now = self.stats_counts()
        # Redis: a 200 means "in the stream"; every replica (this one too)
        # applies it when its stream reader gets it, a moment later
        deadline = time.monotonic() + (10 if self.store == "redis" else 0)
        while now != self.counts and time.monotonic() < deadline:
            time.sleep(0.02)
            now = self.stats_counts()
        assert now == self.counts, "feedback counts %r, want %r" % (now, self.counts)

    def ok(self, resp, rid, arm):
        assert resp.status == 200, "want 200: %r" % resp
        body = resp.json()
        assert body == {"request_id": rid, "status": "applied", "arm": ARMS.index(arm)}, body

    # ---- cases ----
    def t_single_200(self):
        # made first, rated last (expired_410)
        rid_old, _, _ = self.chat("expiring")
        self.expiring = (rid_old, time.monotonic())
        rid, arm, _ = self.chat("single")
        self.ok(self.fb({"request_id": rid, "reward": 0.75}), rid, arm)
        self.expect_applied(arm)
        rid, arm, _ = self.chat("integer reward")
        self.ok(self.fb({"request_id": rid, "reward": 0, "comment": "bad answer"}), rid, arm)
        self.expect_applied(arm)

    def t_alias_v1(self):
        rid, arm, _ = self.chat("alias")
        self.ok(self.fb({"request_id": rid, "reward": True}, "/v1/feedback"), rid, arm)
        self.expect_applied(arm)
        rid, arm, _ = self.chat("alias false")
        self.ok(self.fb({"request_id": rid, "reward": False}, "/v1/feedback"), rid, arm)
        self.expect_applied(arm)

    def t_duplicate_409(self):
        rid, arm, cid = self.chat("dup")
        self.ok(self.fb({"request_id": rid, "reward": 1}), rid, arm)
        self.expect_applied(arm)
        for path, key, rw in (("/feedback", rid, 1), ("/v1/feedback", rid, 0.2),
                              ("/feedback", cid, 0.5)):
            e = E.assert_openai_error(self.fb({"request_id": key, "reward": rw}, path), 409)
            assert e["code"] == "duplicate_feedback", e
        self.expect_applied()

    def t_unknown_404(self):
        for key in ("0" * 32, "f" * 32, "chatcmpl-nonexistent", "x"):
            e = E.assert_openai_error(self.fb({"request_id": key, "reward": 1}), 404)
            assert e["code"] == "unknown_request_id", e
            assert e["param"] == "request_id", e
        self.expect_applied()

    def t_malformed_400(self):
        rid, arm, _ = self.chat("malformed")
        bad = [
            (b"{", "invalid_json"),
            (b'{"request_id": "%s", "reward": 1' % rid.encode(), "invalid_json"),
            (b'{"request_id": "%s", "reward": 1} x' % rid.encode(), "invalid_json"),
            (b"", "invalid_json"),
            (b"not json", "invalid_json"),
            (b"[1, 2]", "invalid_body"),
            (b'"just a string"', "invalid_body"),
            ({"request_id": rid, "reward": 1.5}, "invalid_reward"),
            ({"request_id": rid, "reward": -0.1}, "invalid_reward"),
            ({"request_id": rid, "reward": "x"}, "invalid_reward"),
            ({"request_id": rid, "reward": "0.5"}, "invalid_reward"),
            ({"request_id": rid, "reward": None}, "invalid_reward"),
            ({"request_id": rid, "reward": [1]}, "invalid_reward"),
            (b'{"request_id": "%s", "reward": 1e999}' % rid.encode(), "invalid_reward"),
            ({"reward": 1}, "missing_request_id"),
            ({"request_id": rid}, "missing_reward"),
            ({"request_id": 5, "reward": 1}, "invalid_request_id"),
            ({"request_id": "", "reward": 1}, "invalid_request_id"),
            ({"request_id": rid, "reward": 1, "score": 1}, "unknown_field"),
            ({"request_id": rid, "reward": 1, "comment": 7}, "invalid_comment"),
            (b'{"request_id": "%s", "reward": 1, "reward": 0}' % rid.encode(),
             "duplicate_field"),
        ]
        for body, code in bad:
            resp = self.fb(body)
            e = E.assert_openai_error(resp, 400)
            assert e["code"] == code, "body %r: want code %s, got %r" % (body, code, e)
        self.expect_applied()
        # nothing was consumed: the request can still be rated, once
        self.ok(self.fb({"request_id": rid, "reward": 0.5}), rid, arm)
        self.expect_applied(arm)

    def t_completion_id(self):
        rid, arm, cid = self.chat("by completion id")
        assert cid.startswith("chatcmpl-") and cid != rid, cid
        self.ok(self.fb({"request_id": cid, "reward": 0.9}), rid, arm)  # names banditd's id
        self.expect_applied(arm)
        e = E.assert_openai_error(self.fb({"request_id": rid, "reward": 0.9}), 409)
        assert e["code"] == "duplicate_feedback", e
        self.expect_applied()

    def t_stream(self):
        rid, arm, _ = self.chat("stream by header", stream=True)
        self.ok(self.fb({"request_id": rid, "reward": 0.8}), rid, arm)
        self.expect_applied(arm)
        rid, arm, cid = self.chat("stream by chunk id", stream=True)
        self.ok(self.fb({"request_id": cid, "reward": 0.3}, "/v1/feedback"), rid, arm)
        self.expect_applied(arm)
        e = E.assert_openai_error(self.fb({"request_id": rid, "reward": 0.3}), 409)
        assert e["code"] == "duplicate_feedback", e
        self.expect_applied()

    def t_batch(self):
        a, arm_a, _ = self.chat("batch a")
        b, arm_b, _ = self.chat("batch b")
        c, arm_c, cid_c = self.chat("batch c")
        items = [
            {"request_id": a, "reward": 1},
            {"request_id": "0" * 32, "reward": 1},
            {"request_id": a, "reward": 0},          # second for a, same batch
            {"request_id": b, "reward": 2},          # bad reward: b stays unrated
            {"reward": 1},
            {"request_id": cid_c, "reward": 0.25},   # c by its completion id
            {"request_id": c, "reward": 0.25},       # c again by banditd's id
            "not an object",
        ]
        resp = self.fb({"feedback": items})
        assert resp.status == 200, resp
        doc = resp.json()
        assert doc.get("object") == "list", doc
        assert doc.get("applied") == 2 and doc.get("failed") == 6, doc
        data = doc["data"]
        assert len(data) == len(items), doc
        want = [(200, a, None), (404, "0" * 32, "unknown_request_id"),
                (409, a, "duplicate_feedback"), (400, b, "invalid_reward"),
                (400, None, "missing_request_id"), (200, c, None),
                (409, c, "duplicate_feedback"), (400, None, "invalid_body")]
        for i, (it, (st, key, code)) in enumerate(zip(data, want)):
            if st == 200:
                arm = arm_a if key == a else arm_c
                assert it == {"request_id": key, "status": "applied",
                              "arm": ARMS.index(arm)}, (i, it)
            else:
                assert it.get("status") == "error" and it.get("request_id") == key, (i, it)
                assert it["error"]["code"] == code, (i, it)
        self.expect_applied(arm_a, arm_c)
        # b was not consumed by the bad item; a batch on the alias rates it
        resp = self.fb({"feedback": [{"request_id": b, "reward": 0.6}]}, "/v1/feedback")
        assert resp.status == 200, resp
        doc = resp.json()
        assert doc["applied"] == 1 and doc["failed"] == 0, doc
        assert doc["data"] == [{"request_id": b, "status": "applied",
                                "arm": ARMS.index(arm_b)}], doc
        self.expect_applied(arm_b)
        # an all-failed batch is still 200 with per-item errors
        resp = self.fb({"feedback": [{"request_id": b, "reward": 1}]})
        assert resp.status == 200 and resp.json()["failed"] == 1, resp
        assert resp.json()["data"][0]["error"]["code"] == "duplicate_feedback", resp
        resp = self.fb({"feedback": []})
        assert resp.status == 200 and resp.json()["applied"] == 0, resp
        for body, code in (({"feedback": "x"}, "invalid_batch"),
                           ({"feedback": [], "request_id": a}, "unknown_field")):
            e = E.assert_openai_error(self.fb(body), 400)
            assert e["code"] == code, (body, e)
        self.expect_applied()

    def t_concurrent_once(self):
        """Many feedbacks for one request at once (by both of its ids): exactly one
        is applied, the others get 409 (with the store, the later ones arrive
        while the first waits for its commit)."""
        import threading

        rid, arm, cid = self.chat("concurrent")
        results = []
        lock = threading.Lock()
        go = threading.Event()

        def one(i):
            go.wait()
            key = rid if i % 2 == 0 else cid
            r = E.request(self.d.port, "POST", "/feedback" if i % 3 else "/v1/feedback",
                          {"request_id": key, "reward": 0.5})
            with lock:
                results.append(r)

        th = [threading.Thread(target=one, args=(i,)) for i in range(12)]
        for t in th:
            t.start()
        go.set()
        for t in th:
            t.join(30)
        assert len(results) == 12, results
        statuses = sorted(r.status for r in results)
        assert statuses == [200] + [409] * 11, statuses
        for r in results:
            if r.status == 200:
                self.ok(r, rid, arm)
            else:
                assert E.assert_openai_error(r, 409)["code"] == "duplicate_feedback", r
        self.expect_applied(arm)

    def t_expired_410(self):
        rid, t_answer = self.expiring
        # expired once older than ttl_s; tombstones answer 410 for another ttl_s
        # (after that the id is unknown: 404). A slow run (valgrind, Redis
        # lookups of unknown ids) may have used up that window: start anew.
        if time.monotonic() - t_answer > 2 * TTL_S - 0.7:
            rid, _, _ = self.chat("expiring again")
            t_answer = time.monotonic()
        wait = TTL_S + 0.5 - (time.monotonic() - t_answer)
        if wait > 0:
            time.sleep(wait)
        e = E.assert_openai_error(self.fb({"request_id": rid, "reward": 1}), 410)
        assert e["code"] == "expired_request_id", e
        self.expect_applied()

    def cases(self):
        names = ["single_200", "alias_v1", "duplicate_409", "unknown_404", "malformed_400",
                 "completion_id", "stream", "batch", "concurrent_once", "expired_410"]
        out = [("%s:start" % self.name, self.start)]
        for n in names:
            fn = getattr(self, "t_" + n)

            def wrapped(fn=fn):
                assert self.d is not None and self.d.alive(), "daemon not running"
                fn()
            out.append(("%s:%s" % (self.name, n), wrapped))
        out.append(("%s:stop" % self.name, self.stop))
        return out


def main():
    cases = Mode("nostore", None).cases() + Mode("sqlite", "sqlite").cases()
    if shutil.which("redis-server"):
        cases += Mode("redis", "redis").cases()
    else:
        print("SKIP redis mode: redis-server not installed")
    E.run_tests(cases, title="t_feedback_api")


if __name__ == "__main__":
    main()
