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
`quality=0.65,cost=0.35` the best arm per type is the cheapest one of top
quality: greeting -> cheap, maths -> strong, code -> coder (coder is poor at
chit-chat, so no type is a near-tie between two arms).

Prompts are generated per type from templates with a seeded RNG (all distinct,
so no two requests share a feature vector by accident), interleaved in a
random order, sent sequentially, each followed by its feedback.

Cases:
- converges: in the last window every type goes mostly to its best arm
  (thresholds and their justification next to the constants below), and the
  start is clearly not converged (the test shows learning, not a lucky
  prior): untried arms all predict mu0, so cost decides and the first maths
  prompt never reaches the strong arm; best-arm share over the first 30 <= 0.8.
- stats: /stats pulls and feedback counts equal what the test sent.
- debug_scores: after learning, `X-Bandit-Debug: 1` on a maths prompt shows
  every arm's mean/width/cost/latency/score, best first (= X-Bandit-Arm), the
  strong arm's learned mean above the cheap arm's; no header without the flag.
- prior_cold_start: on fresh daemons, arms[].prior_quality 0.2 keeps a
  quality-only preference away from an untried arm that would otherwise win
  the tie (debug header shows its lowered mean).
The router runs with the default settings plus router.alpha_base = 0.8 (see
ALPHA_BASE for why, and for the defaults' measured lock-in).
Env: E2E_LEARN_N (requests, default 450), E2E_LEARN_SEED, E2E_LEARN_ALPHA_BASE,
E2E_LEARN_ALPHA, E2E_LEARN_TEXT_WEIGHT (unset = defaults), E2E_LEARN_PREF;
E2E_LEARN_VERBOSE=1 prints the share per window of 50 requests.
"""

import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2elib as E  # noqa: E402

SEED = 20261128
N = int(os.environ.get("E2E_LEARN_N", "450"))
# Explicit weights (not a profile: profile values are being recalibrated). Cost
# is normalised by the running mean of the priciest arm's estimate, so the
# arms cost about 0.1 / 0.3 / 1.0 in score units: at 0.65/0.35 every type has
# one best arm by a clear margin (>= 0.24 in score), where e.g. quality=0.9
# would leave greetings a near-tie (cheap ahead of strong by 0.09 only).
PREF = os.environ.get("E2E_LEARN_PREF", "quality=0.65,cost=0.35")
KEY_ENV = "E2E_KEY_CHEAP"
# router.alpha_base: 0.8 (default 0, off); everything else at the defaults
# (alpha 0.1, text_weight 0.5). With the defaults alone the router locks the
# cheap arm out of greetings when it happens to fail a few maths/code prompts
# first: the bias slot holds most of every feature vector's norm, so those
# failures pull its predicted quality down for greetings too (1.0 -> ~0.6,
# measured with X-Bandit-Debug), and 0.1 x width (~0.06) cannot win back a
# prompt type it was hardly tried on; the cheap arm's state then never
# changes. Measured (15 seeds: 1..14 and SEED, 450 requests, 04:45 UTC):
# defaults: 8 of 15 runs fail (greeting -> cheap 0.00 in 8, code -> coder 0.00
# in 3); alpha 0.3 + text_weight 1.0 (this test's former setting): 1 of 15
# fails (seed 12, greeting -> cheap 0.00); alpha_base 0.8: 15 of 15 pass.
# alpha_base adds alpha_base * |x0| * sqrt((A^-1)_00), the width of the arm's
# base rate alone, which shrinks only as the arm is pulled; docs/router.md
# ("Lock-in and router.alpha_base") says why it is not the default (it costs
# exploration on the logged RouteLLM/AlpacaEval data).
ALPHA_BASE = float(os.environ.get("E2E_LEARN_ALPHA_BASE", "0.8"))
# Optional overrides for experiments (unset = the daemon's defaults).
ROUTER_EXTRA = {k: float(os.environ[v]) for k, v in
                (("alpha", "E2E_LEARN_ALPHA"), ("text_weight", "E2E_LEARN_TEXT_WEIGHT"))
                if os.environ.get(v)}

TYPES = ("greeting", "maths", "code")
ARMS = ("cheap", "coder", "strong")
QUALITY = {
    "greeting": {"cheap": 1.0, "coder": 0.5, "strong": 1.0},
    "maths": {"cheap": 0.1, "coder": 0.2, "strong": 1.0},
    "code": {"cheap": 0.1, "coder": 1.0, "strong": 1.0},
}
BEST = {"greeting": "cheap", "maths": "strong", "code": "coder"}

# The last LAST requests (about LAST/3 per type) are judged. Measured with
# alpha_base = 0.8 over seeds 1..14 and SEED (normal build; the run is
# deterministic up to the noise RNG): the lowest shares in the last 150 were
# greeting -> cheap 1.00, maths -> strong 0.92, code -> coder 1.00. The UCB bonus keeps exploring a little on prompts unlike
# the ones seen (maths prompts carry fresh numbers, so maths sees the most
# exploratory pulls), so each threshold leaves room for a few more
# exploratory pulls than measured: 0.85 (about 7 of 50 may go elsewhere).
LAST = 150
MIN_SHARE = {"maths": 0.85, "greeting": 0.85, "code": 0.85}
# Learning, not a lucky prior: untried arms all predict mu0, so cost decides
# at first and the cheapest arm gets every type until its bad rewards pull
# its estimate down. The first maths prompt can reach the (most expensive)
# strong arm only after feedback has made both cheaper arms look bad on it,
# and over the first FIRST requests the best-arm share was 0.27..0.73 in the
# same measurements (0.92+ at the end).
FIRST = 30
MAX_EARLY_SHARE = 0.8

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
        body = ("def %s(%s):\n    out = []\n    for v in %s:\n        out.append(v)\n"
                "    %s.sort()\n" % (fn, var, var, var))
    else:
        body = ("function %s(%s) {\n  const out = [];\n  for (const v of %s) out.push(v);\n"
                "  %s.sort();\n}\n" % (fn, var, var, var))
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
    router = dict({"alpha_base": ALPHA_BASE}, **ROUTER_EXTRA)
    return E.Banditd(arms, env=E.DEFAULT_KEYS, router=router,
                     extra={"store": {"path": ""}},
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
    first, last = run.rows[:FIRST], run.rows[-LAST:]
    early = sum(1 for (k, a) in first if a == BEST[k]) / len(first)
    late = {k: share(last, k, BEST[k]) for k in TYPES}
    print("  %d requests + feedback in %.1f s; best-arm share in the first %d: %.2f; "
          "in the last %d: %s" % (len(run.rows), run.seconds, FIRST, early, LAST, ", ".join(
              "%s->%s %.2f (n=%d)" % (k, BEST[k], late[k][0], late[k][1]) for k in TYPES)),
          flush=True)
    for k in TYPES:
        sh, n = late[k]
        assert n >= 20, "too few %s prompts in the last window: %d" % (k, n)
        assert sh >= MIN_SHARE[k], (
            "last %d requests: %s -> %s share %.2f < %.2f\n%s"
            % (LAST, k, BEST[k], sh, MIN_SHARE[k], run.windows()))
    first_maths = next(a for (k, a) in run.rows if k == "maths")
    assert first_maths != "strong", "the very first maths prompt went to the strong arm"
    assert early <= MAX_EARLY_SHARE, (
        "first %d requests: best-arm share %.2f already > %.2f (no learning shown)\n%s"
        % (FIRST, early, MAX_EARLY_SHARE, run.windows()))


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
    terms, order = parse_scores(hdr)
    assert all(len(v) == 5 for v in terms.values()), "want mean/width/cost/latency/score: " + hdr
    assert sorted(order) == sorted(ARMS), hdr
    # listed best first: the first entry is the arm that answered, scores descending
    assert order[0] == r.header("X-Bandit-Arm"), (hdr, r.header("X-Bandit-Arm"))
    scores = [terms[a][4] for a in order]
    assert scores == sorted(scores, reverse=True), "not in score order: %s" % hdr
    assert all(terms[a][1] > 0 and terms[a][3] >= 0 for a in ARMS), hdr
    # without the debug header there is no X-Bandit-Scores
    r2 = d.request("POST", "/v1/chat/completions",
                   {"model": "auto", "messages": [{"role": "user", "content": text + "!"}]},
                   headers={"X-Bandit-Preference": PREF})
    assert r2.status == 200 and r2.header("X-Bandit-Scores") is None, r2.headers
    assert terms["strong"][0] > terms["cheap"][0] + 0.3, "learned means: %s" % hdr
    assert terms["strong"][2] > terms["coder"][2] > terms["cheap"][2] > 0, "costs: %s" % hdr


def parse_scores(hdr):
    """X-Bandit-Scores -> ({arm: [mean, width, cost, latency, score]}, [arms best first])."""
    terms, order = {}, []
    for part in hdr.split(";"):
        name, _, vals = part.partition(":")
        terms[name] = [float(v) for v in vals.split("/")]
        order.append(name)
    return terms, order


def t_prior_cold_start():
    """arms[].prior_quality: an untried arm with a low prior starts low.

    Two arms with the same prices on a fresh daemon; "low" (listed first, so it
    would win every tie) has prior_quality 0.2, "plain" has none. Preference
    1 (quality only): the first requests go to "plain", and the debug header
    shows low's mean at mu0 + (0.2 - mu0) * x[0] for this prompt, i.e. strictly
    between 0.2 and mu0 = 1 (x[0], the bias slot, is < 1 after normalisation),
    while plain's mean is exactly mu0. A second daemon without the prior
    sends the same first request to "low" (the tie goes to the first arm), so
    the prior, not the order, made the difference."""
    fake = state["fake"]
    text = [{"role": "user", "content": "Hello! Could you say something nice?"}]
    for prior, want in ((0.2, "plain"), (None, "low")):
        low = E.arm("low", fake.base_url, "fake-low", KEY_ENV, 1.0, 2.0)
        if prior is not None:
            low["prior_quality"] = prior
        plain = E.arm("plain", fake.base_url, "fake-plain", KEY_ENV, 1.0, 2.0)
        d = E.Banditd([low, plain], env=E.DEFAULT_KEYS, extra={"store": {"path": ""}},
                      log_level="warn")
        d.start()
        try:
            for i in range(3):  # no feedback: the choice stays on the prior
                r = d.request("POST", "/v1/chat/completions",
                              {"model": "auto", "messages": text},
                              headers={"X-Bandit-Preference": "1", "X-Bandit-Debug": "1"})
                assert r.status == 200, r
                assert r.header("X-Bandit-Arm") == want, (prior, r.header("X-Bandit-Scores"))
                terms, order = parse_scores(r.header("X-Bandit-Scores"))
                assert order[0] == want and set(order) == {"low", "plain"}, order
                assert abs(terms["plain"][0] - 1.0) < 1e-9, terms
                if prior is None:
                    assert abs(terms["low"][0] - 1.0) < 1e-9, terms
                else:
                    # measured 0.44..0.60 (x[0] = 0.5..0.7) on a few prompts
                    assert 0.2 < terms["low"][0] < 0.8, terms
                # untried arms: width sqrt(x' x / lambda) = 1 for a unit x
                assert abs(terms["low"][1] - 1.0) < 1e-3, terms
        finally:
            d.finish()


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
    cases_after = [("prior_cold_start", t_prior_cold_start)]

    def need_run(fn):
        def wrapped():
            assert "run" in state, "no learning run (see learning_run)"
            fn()
        return wrapped

    cases += [(name, need_run(fn)) for name, fn in guarded] + cases_after
    E.run_tests(cases, teardown=teardown, title="t_learning")


if __name__ == "__main__":
    main()
