#!/usr/bin/env python3
"""t_learning — issue 3, acceptance 4: the router learns from /feedback, end to end.

Through the real HTTP path (client -> banditd -> fake upstream) with three arms
whose quality depends on the prompt's type, and a quality oracle in this test
that posts each answer's quality to /feedback right after it arrives:

    arm     price in/out ($/Mtok)   greeting   maths   code
    cheap        0.5 / 1.5             1.0       0.1    0.1
    coder        1.5 / 4.5             0.5       0.2    1.0
    strong       5.0 / 15.0            1.0       1.0    1.0

(plus uniform noise of +-0.05, clipped to [0,1]). The fake upstream answers
every arm the same way (echo); only the oracle knows the qualities, so the
router can learn them only from the feedback. With the preference
`quality=0.8,cost=0.2` the best arm per type is the cheapest one of top quality:
greeting -> cheap, maths -> strong, code -> coder.

Prompts are generated per type from templates with a seeded RNG (all distinct,
so no two requests share a feature vector by accident), interleaved in a
random order, sent sequentially, each followed by its feedback.

Cases:
- converges: in the last window every type goes mostly to its best arm
  (thresholds and their justification next to the constants below), and the
  first window is clearly not converged (the test shows learning, not a
  lucky prior): untried arms all predict mu0, so cost decides and maths/code
  start on the cheap arm.
- stats: /stats pulls and feedback counts equal what the test sent.
- debug_scores: after learning, `X-Bandit-Debug: 1` on a maths prompt shows
  every arm's terms and the strong arm's mean above the cheap arm's.
Env: E2E_LEARN_N (requests, default 450), E2E_LEARN_SEED, E2E_LEARN_VERBOSE=1 prints the
share per window of 50 requests.
"""

import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2elib as E  # noqa: E402

SEED = 20261128
N = int(os.environ.get("E2E_LEARN_N", "450"))
PREF = os.environ.get("E2E_LEARN_PREF", "quality=0.65,cost=0.35")
KEY_ENV = "E2E_KEY_CHEAP"
ALPHA = float(os.environ["E2E_LEARN_ALPHA"]) if os.environ.get("E2E_LEARN_ALPHA") else None

TYPES = ("greeting", "maths", "code")
ARMS = ("cheap", "coder", "strong")
QUALITY = {
    "greeting": {"cheap": 1.0, "coder": 0.5, "strong": 1.0},
    "maths": {"cheap": 0.1, "coder": 0.2, "strong": 1.0},
    "code": {"cheap": 0.1, "coder": 1.0, "strong": 1.0},
}
BEST = {"greeting": "cheap", "maths": "strong", "code": "coder"}

# The last LAST requests (about LAST/3 per type) are judged. Thresholds,
# from measurements (E2E_LEARN_VERBOSE=1, seeds 1..5 and SEED, normal and
# ASan builds; see the report in the commit that added this file): from
# about request 150 on every window of 50 showed the best arm at 100 % for
# maths and >= 95 % for greetings and code. The bandit keeps exploring a
# little (UCB width, optimistic mu0 on prompts unlike the ones seen), so the
# assertion leaves room for a few exploratory pulls per type: >= 0.9 for
# maths (where a wrong pull costs most quality), >= 0.8 for the two others.
LAST = 150
MIN_SHARE = {"maths": 0.9, "greeting": 0.8, "code": 0.8}
# The first FIRST requests: untried arms all predict mu0, so the cheapest
# arm wins everything until its bad rewards pull its estimate down; maths
# and code must therefore start far from their best arm.
FIRST = 30
MAX_EARLY_SHARE = 0.5

NAMES = ["Tom", "Ana", "Li", "Sam", "Maya", "Omar", "Ivy", "Ben", "Zoe", "Raj", "Eva", "Kai"]
ITEMS = ["apples", "marbles", "books", "coins", "pencils", "cookies", "stamps", "cards"]


def gen_greeting(rng):
    hello = rng.choice(["Hi", "Hello", "Hey", "Good morning", "Good evening", "Howdy", "Hiya"])
    tail = rng.choice([
        "how are you doing today?",
        "nice to meet you!",
        "hope you're having a lovely day.",
        "what's up?",
        "how's it going?",
        "just wanted to say thanks, you're great.",
        "long time no see!",
        "happy Friday!",
    ])
    name = rng.choice(NAMES + ["friend", "there", "buddy"])
    return "%s %s, %s" % (hello, name, tail)


def gen_maths(rng):
    a, b, c = rng.randint(12, 999), rng.randint(2, 99), rng.randint(2, 19)
    who, what = rng.choice(NAMES), rng.choice(ITEMS)
    t = rng.randrange(4)
    if t == 0:
        return ("%s has %d %s and gives %d to each of %d friends. How many %s are left? "
                "Compute %d - %d * %d." % (who, a, what, b, c, what, a, b, c))
    if t == 1:
        return ("A shop sells %s at %d cents each. %s buys %d of them and pays with %d dollars. "
                "What is the change? (%d * %d = ?)" % (what, b, who, c, a, b, c))
    if t == 2:
        return "Solve for x: %d*x + %d = %d. What is x?" % (c, b, a)
    return ("The sum of %d and %d is multiplied by %d, then divided by %d. "
            "What is the result? (%d + %d) * %d / %d = ?" % (a, b, c, c + 1, a, b, c, c + 1))


def gen_code(rng):
    fn = rng.choice(["parse_items", "merge_lists", "load_config", "count_words", "flatten",
                     "reverse_list", "dedupe", "read_rows"])
    var = rng.choice(["xs", "items", "data", "rows", "values", "lst"])
    lang = rng.choice(["python", "javascript"])
    ask = rng.choice([
        "Why does this function return None?",
        "How do I fix the TypeError in this code?",
        "Can you refactor this to be more idiomatic?",
        "This raises an exception on empty input, why?",
        "How can I make this function faster?",
    ])
    if lang == "python":
        body = "def %s(%s):\n    out = []\n    for v in %s:\n        out.append(v)\n    %s.sort()\n" % (
            fn, var, var, var)
    else:
        body = "function %s(%s) {\n  const out = [];\n  for (const v of %s) out.push(v);\n  %s.sort();\n}\n" % (
            fn, var, var, var)
    return "%s\n```%s\n%s```" % (ask, lang, body)


GEN = {"greeting": gen_greeting, "maths": gen_maths, "code": gen_code}


def oracle(rng, kind, arm_name):
    q = QUALITY[kind][arm_name] + rng.uniform(-0.05, 0.05)
    return min(1.0, max(0.0, q))


def share(rows, kind, arm_name):
    sel = [a for (k, a) in rows if k == kind]
    return (sum(1 for a in sel if a == arm_name) / len(sel)) if sel else float("nan"), len(sel)


def make_daemon(fake):
    arms = [
        E.arm("cheap", fake.base_url, "fake-cheap", KEY_ENV, 0.5, 1.5),
        E.arm("coder", fake.base_url, "fake-coder", KEY_ENV, 1.5, 4.5),
        E.arm("strong", fake.base_url, "fake-strong", KEY_ENV, 5.0, 15.0),
    ]
    # In-memory decisions: this test is about learning; the durable feedback
    # path is exercised by t_feedback_api.py (which runs both ways).
    router = {"alpha": ALPHA} if ALPHA is not None else None
    return E.Banditd(arms, env=E.DEFAULT_KEYS, router=router, extra={"store": {"path": ""}},
                     log_level="warn")


class Run:
    """The learning run, shared by the cases (it is the expensive part)."""

    def __init__(self, d, seed, n):
        self.d = d
        self.rows = []  # (kind, arm) in order
        self.feedback_sent = 0
        rng = random.Random(seed)
        noise = random.Random(seed + 1)
        seen = set()
        t0 = time.monotonic()
        for i in range(n):
            kind = TYPES[rng.randrange(len(TYPES))]
            while True:
                text = GEN[kind](rng)
                if text not in seen:
                    seen.add(text)
                    break
            r = d.request("POST", "/v1/chat/completions",
                          {"model": "auto", "messages": [{"role": "user", "content": text}]},
                          headers={"X-Bandit-Preference": PREF})
            assert r.status == 200, "request %d: %r" % (i, r)
            arm_name = r.header("X-Bandit-Arm")
            rid = r.header("X-Bandit-Request-Id")
            assert arm_name in ARMS, "request %d: X-Bandit-Arm %r" % (i, arm_name)
            reward = oracle(noise, kind, arm_name)
            fb = d.request("POST", "/feedback", {"request_id": rid, "reward": reward})
            assert fb.status == 200, "feedback %d: %r" % (i, fb)
            body = fb.json()
            assert body.get("request_id") == rid and body.get("status") == "applied", body
            self.feedback_sent += 1
            self.rows.append((kind, arm_name))
        self.seconds = time.monotonic() - t0
        d.responses.clear()  # keep memory flat: bodies are not needed any more

    def windows(self, size=50):
        out = []
        for s in range(0, len(self.rows), size):
            w = self.rows[s:s + size]
            cells = []
            for k in TYPES:
                sh, n = share(w, k, BEST[k])
                cells.append("%s %s %3.0f%% of %2d" % (k, BEST[k], 100 * sh, n))
            out.append("  req %3d-%3d  %s" % (s, s + len(w) - 1, " | ".join(cells)))
        return "\n".join(out)


state = {}


def t_converges():
    run = state["run"]
    if os.environ.get("E2E_LEARN_VERBOSE"):
        print("learning run: %d requests + feedback in %.1f s\n%s"
              % (len(run.rows), run.seconds, run.windows()), flush=True)
    last = run.rows[-LAST:]
    for k in TYPES:
        sh, n = share(last, k, BEST[k])
        assert n >= 20, "too few %s prompts in the last window: %d" % (k, n)
        assert sh >= MIN_SHARE[k], (
            "last %d requests: %s -> %s share %.2f < %.2f\n%s"
            % (LAST, k, BEST[k], sh, MIN_SHARE[k], run.windows()))
    first = run.rows[:FIRST]
    early = sum(1 for (k, a) in first if a == BEST[k]) / len(first)
    late = sum(1 for (k, a) in last if a == BEST[k]) / len(last)
    assert early <= MAX_EARLY_SHARE, (
        "first %d requests: best-arm share %.2f already > %.2f (no learning shown)\n%s"
        % (FIRST, early, MAX_EARLY_SHARE, run.windows()))
    print("  %d requests + feedback in %.1f s; best-arm share first %d: %.2f, last %d: %.2f; %s"
          % (len(run.rows), run.seconds, FIRST, early, LAST, late,
        ", ".join("%s->%s %.2f" % (k, BEST[k], share(last, k, BEST[k])[0]) for k in TYPES)),
        flush=True)


def t_stats():
    run = state["run"]
    st = state["d"].request("GET", "/stats")
    assert st.status == 200, st
    arms = {a["name"]: a for a in st.json()["arms"]}
    for name in ARMS:
        pulls = sum(1 for (_, a) in run.rows if a == name)
        assert arms[name]["pulls"] == pulls, "%s pulls %r != %d" % (name, arms[name]["pulls"],
                                                                    pulls)
        assert arms[name]["feedback"] == pulls, "%s feedback %r != %d" % (
            name, arms[name]["feedback"], pulls)
    # the cheap arm answered greetings (1.0) and early maths/code (~0.1): its
    # mean reward lies strictly between; the strong arm's is near 1
    assert arms["strong"]["pulls"] > 0 and arms["strong"]["mean_reward"] > 0.9, arms["strong"]
    assert 0.2 < arms["cheap"]["mean_reward"] < 0.99, arms["cheap"]


def t_debug_scores():
    d = state["d"]
    rng = random.Random(SEED + 7)
    text = gen_maths(rng) + " (debug)"
    r = d.request("POST", "/v1/chat/completions",
                  {"model": "auto", "messages": [{"role": "user", "content": text}]},
                  headers={"X-Bandit-Preference": PREF, "X-Bandit-Debug": "1"})
    assert r.status == 200, r
    hdr = r.header("X-Bandit-Scores")
    assert hdr, "no X-Bandit-Scores: %r" % r.headers
    terms = {}
    for part in hdr.split(";"):
        name, _, vals = part.partition(":")
        nums = [float(v) for v in vals.split("/")]
        assert len(nums) == 5, "want mean/width/cost/latency/score, got %r" % part
        terms[name] = nums
    assert set(terms) == set(ARMS), hdr
    chosen = hdr.split(":", 1)[0]
    assert chosen == r.header("X-Bandit-Arm") == "strong", (hdr, r.header("X-Bandit-Arm"))
    assert terms["strong"][0] > terms["cheap"][0] + 0.3, "learned means: %s" % hdr
    assert terms["strong"][2] > terms["coder"][2] > terms["cheap"][2] > 0, "costs: %s" % hdr


def t_learning_run():
    state["run"] = Run(state["d"], int(os.environ.get("E2E_LEARN_SEED", SEED)), N)


def teardown():
    state["d"].finish()
    state["fake"].stop()


def main():
    fake = E.FakeUpstream(record=False)
    state["fake"] = fake
    d = make_daemon(fake)
    d.start()
    state["d"] = d
    cases = [("learning_run", t_learning_run)]
    # the checks below read the run; without it they would only repeat its failure
    guarded = [("converges", t_converges), ("stats", t_stats), ("debug_scores", t_debug_scores)]

    def need_run(fn):
        def wrapped():
            assert "run" in state, "no learning run (see learning_run)"
            fn()
        return wrapped

    cases += [(name, need_run(fn)) for name, fn in guarded]
    E.run_tests(cases, teardown=teardown, title="t_learning")


if __name__ == "__main__":
    main()
