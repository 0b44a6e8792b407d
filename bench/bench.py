#!/usr/bin/python3
"""Helpers of bench/run.sh, bench/streams.sh and bench/scale.sh: parse wrk
and Redis output, keep one line per run, and print the markdown tables.
Python 3 standard library only.

    bench.py record out=RUNS.tsv round=N conns=N case=X wrk=FILE ...   (see measure() in run.sh)
    bench.py monitor CASE WRK.txt MONITOR.txt          -> one line for monitor.tsv
    bench.py summary RUNS.tsv MONITOR.tsv              -> the markdown table
    bench.py stats HOST PORT                           -> INFO commandstats as "cmd calls usec"
    bench.py diff STATS0 STATS1 CMD...                 -> calls delta of each CMD
    bench.py replay HOST PORT MONITOR.txt N [CASE]     -> each script's cost alone, markdown
    bench.py perf REPORT_DSO REPORT_SYM REPORT_CHILDREN -> the module's CPU share, markdown
    bench.py waits RELEASE_WAIT.log RUNS.tsv             -> the release wait per case, markdown
    bench.py slowlog HOST PORT CMD...                  -> µs of each SLOWLOG entry of CMD, a line each
"""
import re
import socket
import statistics
import sys

CASES = {"A": "plain mod_proxy", "B": "relay, limit 100000", "C": "relay, unlimited key",
         "D": "relay, limit 100000, RelayReuseSlots Off, Redis via unix socket",
         "E": "relay, unlimited key, Redis via unix socket",
         "F": "relay, key limit = connections (always near its limit)"}
# commands the harness itself sends to Redis
HARNESS = {"info", "monitor", "ping", "config", "slowlog", "client", "command", "script",
           "dbsize", "hello"}


# --------------------------------------------------------------------------
# Redis, without redis-cli: a tiny RESP2 client
# --------------------------------------------------------------------------
class Resp:
    def __init__(self, host, port):
        self.s = socket.create_connection((host, int(port)), timeout=30)
        self.f = self.s.makefile("rb")

    def call(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.s.sendall(b"".join(out))
        return self.read()

    def read(self):
        line = self.f.readline()
        if not line:
            raise EOFError("Redis closed the connection")
        t, rest = line[:1], line[1:-2]
        if t == b"+":
            return rest.decode()
        if t == b"-":
            raise RuntimeError(rest.decode())
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.f.read(n + 2)[:-2]
            return data.decode(errors="replace")
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise RuntimeError("bad RESP line %r" % line)


def commandstats(host, port):
    """{cmd: (calls, usec)} from INFO commandstats."""
    text = Resp(host, port).call("INFO", "commandstats")
    out = {}
    for line in text.splitlines():
        m = re.match(r"cmdstat_([^:]+):calls=(\d+),usec=(\d+)", line)
        if m:
            out[m.group(1).lower()] = (int(m.group(2)), int(m.group(3)))
    return out


def read_stats(path):
    out = {}
    with open(path) as f:
        for line in f:
            p = line.split()
            if len(p) == 3:
                out[p[0]] = (int(p[1]), int(p[2]))
    return out


def stats_delta(s0, s1):
    d = {}
    for k, (c, u) in s1.items():
        c0, u0 = s0.get(k, (0, 0))
        if c - c0 > 0:
            d[k] = (c - c0, u - u0)
    return d


# --------------------------------------------------------------------------
# wrk
# --------------------------------------------------------------------------
def to_ms(v, unit):
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def parse_wrk(path):
    text = open(path).read()
    r = {"rps": 0.0, "p50": float("nan"), "p99": float("nan"), "requests": 0, "non2xx": 0,
         "sockerr": 0}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if m:
        r["rps"] = float(m.group(1))
    m = re.search(r"(\d+) requests in", text)
    if m:
        r["requests"] = int(m.group(1))
    for pct, key in (("50", "p50"), ("99", "p99")):
        m = re.search(r"^\s+%s(?:\.000)?%%\s+([\d.]+)(us|ms|s|m)\b" % pct, text, re.M)
        if m:
            r[key] = to_ms(m.group(1), m.group(2))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if m:
        r["non2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        r["sockerr"] = sum(int(x) for x in m.groups())
    return r


COLS = ["round", "conns", "case", "rps", "p50_ms", "p99_ms", "requests", "non2xx", "sockerr",
        "redis_cpu_us_per_req", "httpd_cpu_us_per_req", "evalsha_per_req", "evalsha_us_per_req",
        "inner_per_req",
        "redis_clients", "rss_mib", "children", "other_cpu_pct"]


def cmd_record(a):
    """One line of runs.tsv from name=value arguments (see measure() in run.sh)."""
    v = dict(x.split("=", 1) for x in a)
    w = parse_wrk(v["wrk"])
    d = stats_delta(read_stats(v["st0"]), read_stats(v["st1"]))
    n = max(w["requests"], 1)
    evalsha = d.get("evalsha", (0, 0))[0] + d.get("eval", (0, 0))[0]
    top = {"evalsha", "eval"} | HARNESS
    # commandstats counts a command run inside a script like a top-level one; the
    # module's only other top-level command is HGET apikey:hash_map (first sight of
    # a key in a child), so this is the commands inside scripts, give or take that
    inner = sum(c for k, (c, _) in d.items() if k not in top)
    redis_cpu, httpd_cpu = float(v["redis_cpu"]), float(v["httpd_cpu"])
    # what the rest of the machine (not this benchmark) used, in % of all CPUs
    other = (float(v["busy"]) - redis_cpu - httpd_cpu - float(v["wrk_cpu"] or 0)) \
        / (float(v["elapsed"]) * int(v["ncpu"])) * 100
    row = [v["round"], v["conns"], v["case"], "%.1f" % w["rps"], "%.4f" % w["p50"],
           "%.4f" % w["p99"], w["requests"], w["non2xx"], w["sockerr"],
           "%.2f" % (redis_cpu * 1e6 / n), "%.1f" % (httpd_cpu * 1e6 / n), "%.4f" % (evalsha / n),
           "%.2f" % ((d.get("evalsha", (0, 0))[1] + d.get("eval", (0, 0))[1]) / n),
           "%.3f" % (inner / n), v["clients"], "%.1f" % (int(v["rss_kib"]) / 1024.0),
           v["children"], "%.0f" % max(other, 0.0)]
    new = False
    try:
        open(v["out"]).close()
    except FileNotFoundError:
        new = True
    with open(v["out"], "a") as f:
        if new:
            f.write("\t".join(COLS) + "\n")
        f.write("\t".join(str(x) for x in row) + "\n")
    print("round %s c=%s %s: %.0f req/s p50 %.3f ms p99 %.3f ms non-2xx %d; Redis %.1f us/req, "
          "httpd %.0f us/req; other processes %.0f%% of the CPUs"
          % (v["round"], v["conns"], v["case"], w["rps"], w["p50"], w["p99"], w["non2xx"],
             redis_cpu * 1e6 / n, httpd_cpu * 1e6 / n, max(other, 0.0)))


def cmd_monitor(a):
    """Top-level commands per request in a MONITOR capture of one run."""
    case, wrk, mon = a
    w = parse_wrk(wrk)
    counts = {}
    with open(mon, errors="replace") as f:
        for line in f:
            m = re.match(r'^\d+\.\d+ \[\d+ ([^\]]+)\] "([^"]+)"', line)
            if not m or "lua" in m.group(1):
                continue
            cmd = m.group(2).lower()
            if cmd in HARNESS:
                continue
            counts[cmd] = counts.get(cmd, 0) + 1
    n = max(w["requests"], 1)
    total = sum(counts.values())
    detail = ",".join("%s=%.3f" % (k.upper(), v / n) for k, v in sorted(counts.items()))
    print("%s\t%d\t%d\t%.3f\t%s" % (case, w["requests"], total, total / n, detail or "-"))


def med(xs):
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def cmd_summary(a):
    runs_path, mon_path = a
    rows = []
    with open(runs_path) as f:
        head = f.readline().split()
        for line in f:
            rows.append(dict(zip(head, line.split())))
    mon = {}
    try:
        with open(mon_path) as f:
            for line in f:
                p = line.rstrip("\n").split("\t")
                if len(p) == 5:
                    mon[p[0]] = (float(p[3]), p[4])
    except FileNotFoundError:
        pass
    by = {}
    for r in rows:
        by[(int(r["conns"]), r["case"], int(r["round"]))] = r
    conns_list = sorted({k[0] for k in by})
    rounds = sorted({k[2] for k in by})
    t1 = ["| conns | case | req/s (median) | × plain | p50 ms | Δp50 vs plain | p99 ms "
          "| Δp99 vs plain | non-2xx / socket errors | other processes' CPU, % of all CPUs |",
          "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    t2 = ["| conns | case | Redis CPU µs/req | EVALSHA µs/req (commandstats) "
          "| top-level Redis cmds/req (MONITOR) | cmds inside scripts/req (commandstats) "
          "| Redis conns held | httpd CPU µs/req | httpd children RSS MiB |",
          "|---:|---|---:|---:|---|---:|---:|---:|---:|"]
    for c in conns_list:
        for case in ("A", "B", "C", "D", "E", "F"):
            rs = [by[(c, case, i)] for i in rounds if (c, case, i) in by]
            if not rs:
                continue
            pl = {i: by[(c, "A", i)] for i in rounds if (c, "A", i) in by}

            def vals(key, rr=rs):
                return [float(r[key]) for r in rr]

            def vs_plain(key, op, rr=rs, pl=pl):
                return [op(float(r[key]), float(pl[int(r["round"])][key]))
                        for r in rr if int(r["round"]) in pl]

            top = mon.get(case)
            topt = "%.3f (%s)" % top if top else "n/a"
            errs = sum(int(r["non2xx"]) for r in rs), sum(int(r["sockerr"]) for r in rs)
            if case == "A":
                rat, dd50, dd99 = "1.00", "—", "—"
            else:
                rat = "%.2f" % med(vs_plain("rps", lambda x, y: x / y))
                dd50 = "%+.3f" % med(vs_plain("p50_ms", lambda x, y: x - y))
                dd99 = "%+.3f" % med(vs_plain("p99_ms", lambda x, y: x - y))
            other = vals("other_cpu_pct")
            name = "%s %s" % (case, CASES[case])
            t1.append("| %d | %s | %.0f | %s | %.3f | %s | %.3f | %s | %d / %d | %.0f (max %.0f) |"
                      % (c, name, med(vals("rps")), rat, med(vals("p50_ms")), dd50,
                         med(vals("p99_ms")), dd99, errs[0], errs[1], med(other), max(other)))
            t2.append("| %d | %s | %.1f | %.1f | %s | %.1f | %d | %.0f | %.1f |"
                      % (c, name, med(vals("redis_cpu_us_per_req")),
                         med(vals("evalsha_us_per_req")), topt, med(vals("inner_per_req")),
                         max(int(r["redis_clients"]) for r in rs),
                         med(vals("httpd_cpu_us_per_req")), med(vals("rss_mib"))))
    print("\n".join(t1))
    print()
    print("\n".join(t2))


def pct(xs, q):
    """The q-quantile of sorted xs (nearest rank)."""
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, max(0, int(round(q * len(xs) + 0.5)) - 1))]


def cmd_waits(a):
    """The release wait per connection count and case, from the log of
    "ROUND-CONNS-CASE WAIT_US" lines, beside the case's median p50."""
    log_path, runs_path = a
    waits = {}
    with open(log_path, errors="replace") as f:
        for line in f:
            p = line.split()
            if len(p) != 2 or not p[1].isdigit():
                continue
            tag = p[0].split("-")
            if len(tag) != 3 or tag[0] == "0":   # round 0: the warm-up
                continue
            waits.setdefault((int(tag[1]), tag[2]), []).append(int(p[1]))
    p50, total = {}, {}
    with open(runs_path) as f:
        head = f.readline().split()
        for line in f:
            r = dict(zip(head, line.split()))
            key = (int(r["conns"]), r["case"])
            p50.setdefault(key, []).append(float(r["p50_ms"]))
            total[key] = total.get(key, 0) + int(r["requests"])
    out = ["| conns | case | requests that waited | wait p50 µs | p90 µs | p99 µs | mean µs "
           "| wait p50 / the case's p50 latency |",
           "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for key in sorted(set(waits) | {k for k in total if k[1] != "A"}):
        c, case = key
        xs = sorted(waits.get(key, []))
        lat = med(p50.get(key, [])) * 1000.0
        share = "%d of %d (%.1f %%)" % (len(xs), total.get(key, 0),
                                        100.0 * len(xs) / total[key] if total.get(key) else 0)
        if not xs:
            out.append("| %d | %s %s | %s | — | — | — | — | — |"
                       % (c, case, CASES.get(case, "?"), share))
            continue
        out.append("| %d | %s %s | %s | %d | %d | %d | %.0f | %.0f %% |"
                   % (c, case, CASES.get(case, "?"), share, pct(xs, 0.5), pct(xs, 0.9),
                      pct(xs, 0.99), sum(xs) / len(xs), pct(xs, 0.5) / lat * 100 if lat else 0))
    print("\n".join(out))


def cmd_stats(a):
    for k, (c, u) in sorted(commandstats(a[0], a[1]).items()):
        print(k, c, u)


def cmd_slowlog(a):
    """The duration (µs) of every entry of SLOWLOG whose command is one of a[2:] (bench/scale.sh
    sets slowlog-log-slower-than 0, so each call is there: how long it held Redis)."""
    want = {c.lower() for c in a[2:]}
    for entry in Resp(a[0], a[1]).call("SLOWLOG", "GET", "1000000") or []:
        args = entry[3] if len(entry) > 3 else []
        if args and str(args[0]).lower() in want:
            print(entry[2])


def cmd_diff(a):
    """Calls delta of each command named; "_inner" is all but EVALSHA/EVAL and the harness's."""
    d = stats_delta(read_stats(a[0]), read_stats(a[1]))
    inner = sum(c for k, (c, _) in d.items() if k not in HARNESS and k not in ("evalsha", "eval"))
    print(" ".join(str(inner if k == "_inner" else d.get(k.lower(), (0, 0))[0]) for k in a[2:]))


def monitor_args(line):
    """The quoted arguments of one MONITOR line."""
    out = []
    for m in re.finditer(r'"((?:[^"\\]|\\.)*)"', line):
        out.append(re.sub(r"\\(.)", r"\1", m.group(1)))
    return out


def cpu_of(r):
    info = r.call("INFO", "cpu")
    return sum(float(l.split(":")[1]) for l in info.splitlines()
               if l.startswith("used_cpu_user:") or l.startswith("used_cpu_sys:"))


def batch_shape(args):
    """(admissions, releases, lease adds) in one admit/release batch call:
    EVALSHA sha 0 lease_ms now G {id M members}... N {id M members}...
    K {id U usage*8}... A {hash id member}..."""
    try:
        i = 5
        counts = []
        for _ in range(2):             # releases, then lease adds
            n, total = int(args[i]), 0
            i += 1
            for _ in range(n):
                m = int(args[i + 1])
                total += m
                i += 2 + m
            counts.append(total)
        k = int(args[i])
        i += 1
        for _ in range(k):
            u = int(args[i + 1])
            i += 2 + 8 * u
        return int(args[i]), counts[0], counts[1]
    except (IndexError, ValueError):
        return None


def cmd_replay(a):
    """The admit/release batch calls of a MONITOR capture of one case replayed
    alone, one call at a time, N calls in all; their cost read from INFO
    commandstats; as markdown."""
    host, port, mon, n = a[0], a[1], a[2], int(a[3])
    case = a[4] if len(a) > 4 else "B"
    calls = []
    with open(mon, errors="replace") as f:
        for line in f:
            if "lua]" in line or '"EVALSHA"' not in line:
                continue
            args = monitor_args(line)
            if len(args) > 5 and args[2] == "0" and batch_shape(args):
                calls.append(args)
    if not calls:
        print("The MONITOR capture holds no admit/release batch call: no per-script figures.")
        return
    shapes = [batch_shape(c) for c in calls]
    admits = sum(s[0] for s in shapes)
    releases = sum(s[1] for s in shapes)
    adds = sum(s[2] for s in shapes)
    sizes = sorted(s[0] + s[1] + s[2] for s in shapes)
    r = Resp(host, port)
    sha = calls[0][1]
    exists = r.call("SCRIPT", "EXISTS", sha)[0]
    s0, c0 = commandstats(host, port), cpu_of(r)
    for i in range(n):
        r.call(*calls[i % len(calls)])
    c1, s1 = cpu_of(r), commandstats(host, port)
    d = stats_delta(s0, s1)
    es = d.get("evalsha", (n, 0))
    inner = {k: v for k, v in d.items() if k not in HARNESS and k not in ("evalsha", "eval")}
    inner_us = sum(u for _, u in inner.values()) / n
    # the same number of admissions and releases per call as the module sent
    per_call_ops = (admits + releases + adds) / len(calls)
    print("In case %s (MONITOR capture, %d batch calls) one script call carried on average "
          "%.2f admissions, %.2f releases and %.2f lease adds (median %d operations, largest "
          "%d). Those calls replayed %d times alone, one at a time (`usec_per_call` from `INFO "
          "commandstats` times a script including the commands it runs):\n"
          % (case, len(calls), admits / len(calls), releases / len(calls), adds / len(calls),
             sizes[len(sizes) // 2], sizes[-1], n))
    print("| script | sha1 (SCRIPT EXISTS) | operations/call | EVALSHA µs/call | commands "
          "inside/call | µs in those commands | µs in Lua and the call itself | Redis CPU µs/call "
          "(incl. socket I/O) | Redis CPU µs per operation |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    cpu = (c1 - c0) * 1e6 / n
    print("| admit/release batch | %s… (%d) | %.2f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f |"
          % (sha[:12], exists, per_call_ops, es[1] / es[0],
             sum(c for c, _ in inner.values()) / n, inner_us, es[1] / es[0] - inner_us, cpu,
             cpu / per_call_ops if per_call_ops else 0))
    print("\n| command inside | calls per script call | µs/call | µs per script call |")
    print("|---|---:|---:|---:|")
    for k, (c, u) in sorted(inner.items(), key=lambda kv: -kv[1][1]):
        print("| %s | %.2f | %.2f | %.1f |" % (k.upper(), c / n, u / c, u / n))
    # floors: what any round trip, and any script call, costs here
    c0 = cpu_of(r)
    for i in range(n):
        r.call("GET", "bench:no-such-key")
    get_cpu = (cpu_of(r) - c0) * 1e6 / n
    args = list(calls[0])
    args[1] = r.call("SCRIPT", "LOAD", "return 1")
    s0, c0 = commandstats(host, port), cpu_of(r)
    for i in range(n):
        r.call(*args)
    c1, s1 = cpu_of(r), commandstats(host, port)
    es = stats_delta(s0, s1).get("evalsha", (n, 0))
    print("\nFloors here: a GET round trip costs Redis %.1f µs of CPU (reading, parsing, "
          "replying, event loop); an EVALSHA of `return 1` with a batch's %d arguments costs "
          "%.1f µs inside Redis and %.1f µs of Redis CPU with its I/O."
          % (get_cpu, len(args) - 3, es[1] / es[0], (c1 - c0) * 1e6 / n))


def cmd_perf(a):
    """Shares from perf report --stdio outputs: by DSO, module symbols self and inclusive."""
    dso_path, sym_path, child_path = a

    def rows(path):
        out = []
        for line in open(path, errors="replace"):
            if line.startswith("#") or not line.strip():
                continue
            m = re.match(r"^\s+([\d.]+)%\s+(?:([\d.]+)%\s+)?(.*\S)\s*$", line)
            if m:
                out.append((float(m.group(1)), m.group(2), m.group(3)))
        return out

    print("| where (self time, by shared object) | share of the children's CPU samples |")
    print("|---|---:|")
    for pct, _, name in rows(dso_path)[:12]:
        print("| %s | %.1f%% |" % (name.split()[-1], pct))
    mod = re.compile(r"\b(relay_\w+|usage_filter|release_lease|keeper_\w+|cache_\w+|lookup_id|"
                     r"now_iso|reply_int|conn_make|eval|swap_credentials|presented_key|"
                     r"json_answer|initial_request|set_tokens_note)\b")
    print("\n| module function (mod_claude_relay.so) | self | self + callees (incl. hiredis, "
          "libc, kernel I/O it causes) |")
    print("|---|---:|---:|")
    selfs = {}
    for pct, _, name in rows(sym_path):
        sym = name.split()[-1]
        if "mod_claude_relay" in name or mod.fullmatch(sym):
            selfs[sym] = selfs.get(sym, 0.0) + pct
    incl = {}
    for pct, selfpct, name in rows(child_path):
        sym = name.split()[-1]
        if mod.fullmatch(sym) or "mod_claude_relay" in name:
            incl[sym] = max(incl.get(sym, 0.0), pct)
    keys = sorted(set(selfs) | set(incl), key=lambda k: -incl.get(k, selfs.get(k, 0)))
    for k in keys[:15]:
        print("| %s | %.2f%% | %s |" % (k, selfs.get(k, 0.0),
                                        "%.2f%%" % incl[k] if k in incl else "—"))
    # the module's entry points from httpd: their call trees are all its work
    entry = ("relay_check_access", "release_lease", "usage_filter", "relay_insert_filter",
             "relay_lease_keeper", "keeper_main")
    total = sum(incl.get(k, 0.0) for k in entry)
    print("\nThe module's hooks (%s), with all they call: %.1f%% of the httpd children's CPU; "
          "every Redis round trip (relay_redis_script with all it calls, from admit, release "
          "and renewal): %.1f%%; the module's own code (self time in mod_claude_relay.so): "
          "%.1f%%. DWARF unwinding does not always reach a hook's frame from deep in the "
          "kernel, so the hooks' figure is a lower bound." % (
              ", ".join(k for k in entry if k in incl), total,
              incl.get("relay_redis_script", 0.0), sum(selfs.values())))


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    fn = {"record": cmd_record, "monitor": cmd_monitor, "summary": cmd_summary,
          "stats": cmd_stats, "diff": cmd_diff, "replay": cmd_replay, "perf": cmd_perf,
          "waits": cmd_waits, "slowlog": cmd_slowlog}
    fn[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    main()
