#!/usr/bin/env python3
"""Instructions and system calls per request, split by library, from two
callgrind profiles of the same process serving N1 and N2 requests:
per request = (X(N2) - X(N1)) / (N2 - N1), which cancels start-up and
shutdown. Used by bench/profile.sh.

Groups: libcurl, libmicrohttpd, and "own" (the profiled program itself,
statically linked code). Each group's figure is its own instructions plus
everything it calls in the system libraries (libc's malloc, memcpy, memset,
system call wrappers; the dynamic loader; libcurl's dependencies): the cost
that library brings. System-library code reached from nothing of the three
(start-up) is "other"; system-library code called from several places is
shared among its callers in proportion to the instructions of each call. Calls between the three groups are not nested: a
callback into the program is the program's, MHD_resume_connection called
from a curl callback is MHD's. System calls are counted as calls to libc's
wrappers, by the group that made them.

   usage: callgrind_split.py N1 FILE1 N2 FILE2"""
import collections
import os
import re
import sys

SYSCALLS = {"epoll_wait", "epoll_pwait", "epoll_ctl", "recv", "recvfrom", "recvmsg", "read",
            "send", "sendto", "sendmsg", "write", "writev", "accept", "accept4", "close",
            "setsockopt", "getsockopt", "fcntl", "fcntl64", "ioctl", "poll", "ppoll", "socket",
            "connect", "getsockname", "getpeername", "shutdown"}


def group(obj, prog):
    base = os.path.basename(obj)
    if base.startswith("libcurl"):
        return "libcurl"
    if base.startswith("libmicrohttpd"):
        return "libmicrohttpd"
    if os.path.realpath(obj) == prog:
        return "own"
    return None  # a system library: charged to its caller


def plain(fn):
    return re.sub(r"^(__libc_|__GI_|__)", "", fn.split("'")[0])


def parse(path):
    """→ (Ir by group, system calls by (group, name))."""
    names = {"ob": {}, "fn": {}}
    excl = collections.Counter()  # (object, fn) → exclusive Ir
    into = collections.defaultdict(list)  # (object, fn) → [(caller, inclusive Ir, count)]
    prog = ""
    ob = fn = cob = cfn = None
    pending = None  # callee of the last calls= line, and its count
    with open(path) as f:
        for line in f:
            if line.startswith("cmd:"):
                prog = os.path.realpath(line.split()[1])
                continue
            m = re.match(r"(c?)(ob|fn)=(?:\((\d+)\))?\s*(.*)", line.rstrip("\n"))
            if m:
                kind, key, name = m.group(2), m.group(3), m.group(4)
                if key and name:
                    names[kind][key] = name
                value = names[kind].get(key, name) if key else name
                if m.group(1):
                    cob, cfn = (value, cfn) if kind == "ob" else (cob, value)
                elif kind == "ob":
                    ob, cob = value, None
                else:
                    fn, cob = value, None
                continue
            if line.startswith("calls="):
                pending = ((cob or ob, cfn), int(line.split("=")[1].split()[0]))
                continue
            if not line[:1].isdigit() and line[:1] not in "+-*":
                continue
            cost = int(line.split()[-1]) if len(line.split()) > 1 else 0
            if pending:
                into[pending[0]].append(((ob, fn), cost, pending[1]))
                pending, cob = None, None
            else:
                excl[(ob, fn)] += cost
    owners = {}

    def owner(f, seen=()):
        """System-library function f → {group: share}, by who calls it."""
        g = group(f[0], prog)
        if g:
            return {g: 1.0}
        if f in owners:
            return owners[f]
        acc = collections.Counter()
        for caller, cost, _ in into.get(f, ()):
            if caller in seen or caller == f:
                continue
            for k, v in owner(caller, seen + (f,)).items():
                acc[k] += v * max(cost, 1)
        total = sum(acc.values())
        owners[f] = {k: v / total for k, v in acc.items()} if total else {"other": 1.0}
        return owners[f]

    ir = collections.Counter()
    for f, cost in excl.items():
        for k, v in owner(f).items():
            ir[k] += v * cost
    sysc = collections.Counter()
    for f, edges in into.items():
        if group(f[0], prog) or plain(f[1]) not in SYSCALLS:
            continue
        for caller, _, count in edges:
            for k, v in owner(caller).items():
                sysc[(k, plain(f[1]))] += v * count
    return ir, sysc, prog


def main():
    n1, f1, n2, f2 = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    (i1, s1, prog), (i2, s2, _) = parse(f1), parse(f2)
    per = lambda a, b, k: (b.get(k, 0) - a.get(k, 0)) / (n2 - n1)
    total = (sum(i2.values()) - sum(i1.values())) / (n2 - n1)
    own = os.path.basename(prog)
    print("Ir per request by library (own code + the system-library code it calls):")
    for k in ("libcurl", "libmicrohttpd", "own", "other"):
        label = "own (%s)" % own if k == "own" else k
        print("  %-28s %9.0f  %5.1f%%" % (label, per(i1, i2, k), 100 * per(i1, i2, k) / total))
    print("  %-28s %9.0f" % ("total (this thread)", total))
    keys = sorted(set(s1) | set(s2))
    print("system calls per request (libc wrapper calls, by caller):")
    for g in ("libcurl", "libmicrohttpd", "own", "other"):
        calls = [(k[1], per(s1, s2, k)) for k in keys if k[0] == g and per(s1, s2, k) > 0.005]
        if calls:
            detail = ", ".join("%s %.2f" % c for c in sorted(calls, key=lambda c: -c[1]))
            print("  %-28s %5.2f  (%s)" % (g, sum(c[1] for c in calls), detail))


main()
