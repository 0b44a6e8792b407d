#!/usr/bin/python3
"""Helpers of bench/run.sh and bench/streams.sh: parse wrk and Redis output,
keep one line per run, and print the markdown tables. Python 3 standard
library only.

    bench.py record OUT.tsv ROUND CONNS CASE WRK.txt STATS0 STATS1 CPU0 CPU1 CLIENTS RSS_KIB CHILDREN
    bench.py monitor CASE WRK.txt MONITOR.txt          -> one line for monitor.tsv
    bench.py summary RUNS.tsv MONITOR.tsv              -> the markdown table
    bench.py stats HOST PORT                           -> INFO commandstats as "cmd calls usec"
    bench.py diff STATS0 STATS1 CMD...                 -> calls delta of each CMD
    bench.py slowlog HOST PORT REQUESTS STATS0 STATS1  -> where Redis time goes, markdown
    bench.py perf REPORT_DSO REPORT_SYM REPORT_CHILDREN -> the module's CPU share, markdown
"""
import re
import socket
import statistics
import sys

CASES = {"A": "plain mod_proxy", "B": "relay, limit 100000", "C": "relay, unlimited key"}
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
        "redis_cpu_us_per_req", "evalsha_per_req", "inner_per_req", "redis_clients", "rss_mib",
        "children"]


def cmd_record(a):
    out, rnd, conns, case, wrk, st0, st1, cpu0, cpu1, clients, rss_kib, children = a
    w = parse_wrk(wrk)
    d = stats_delta(read_stats(st0), read_stats(st1))
    n = max(w["requests"], 1)
    evalsha = d.get("evalsha", (0, 0))[0] + d.get("eval", (0, 0))[0]
    top = {"evalsha", "eval"} | HARNESS
    # commandstats counts a command run inside a script like a top-level one; the
    # module's only other top-level command is HGET apikey:hash_map (first sight of
    # a key in a child), so this is the commands inside scripts, give or take that
    inner = sum(c for k, (c, _) in d.items() if k not in top)
    row = [rnd, conns, case, "%.1f" % w["rps"], "%.4f" % w["p50"], "%.4f" % w["p99"],
           w["requests"], w["non2xx"], w["sockerr"],
           "%.2f" % ((float(cpu1) - float(cpu0)) * 1e6 / n), "%.4f" % (evalsha / n),
           "%.3f" % (inner / n), clients, "%.1f" % (int(rss_kib) / 1024.0), children]
    new = False
    try:
        open(out).close()
    except FileNotFoundError:
        new = True
    with open(out, "a") as f:
        if new:
            f.write("\t".join(COLS) + "\n")
        f.write("\t".join(str(x) for x in row) + "\n")
    print("round %s c=%s %s: %.0f req/s p50 %.3f ms p99 %.3f ms non-2xx %d redis %.1f us/req"
          % (rnd, conns, case, w["rps"], w["p50"], w["p99"], w["non2xx"],
             (float(cpu1) - float(cpu0)) * 1e6 / n))


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
    print("| conns | case | req/s (median) | × plain | p50 ms | Δp50 vs plain | p99 ms "
          "| Δp99 vs plain | Redis CPU µs/req | top-level Redis cmds/req (MONITOR) "
          "| cmds inside scripts/req | Redis conns | httpd RSS MiB | non-2xx / errors |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in conns_list:
        for case in ("A", "B", "C"):
            rs = [by[(c, case, i)] for i in rounds if (c, case, i) in by]
            if not rs:
                continue
            pl = {i: by[(c, "A", i)] for i in rounds if (c, "A", i) in by}

            def vals(key, rr=rs):
                return [float(r[key]) for r in rr]

            rps = med(vals("rps"))
            ratios = [float(r["rps"]) / float(pl[int(r["round"])]["rps"])
                      for r in rs if int(r["round"]) in pl]
            d50 = [float(r["p50_ms"]) - float(pl[int(r["round"])]["p50_ms"])
                   for r in rs if int(r["round"]) in pl]
            d99 = [float(r["p99_ms"]) - float(pl[int(r["round"])]["p99_ms"])
                   for r in rs if int(r["round"]) in pl]
            top = mon.get(case)
            topt = "%.3f (%s)" % top if top else "n/a"
            errs = sum(int(r["non2xx"]) for r in rs), sum(int(r["sockerr"]) for r in rs)
            if case == "A":
                rat, dd50, dd99 = "1.00", "—", "—"
            else:
                rat = "%.2f" % med(ratios)
                dd50 = "%+.3f" % med(d50)
                dd99 = "%+.3f" % med(d99)
            print("| %d | %s %s | %.0f | %s | %.3f | %s | %.3f | %s | %.1f | %s | %.1f | %d | %.1f | %d / %d |"
                  % (c, case, CASES[case], rps, rat, med(vals("p50_ms")), dd50,
                     med(vals("p99_ms")), dd99, med(vals("redis_cpu_us_per_req")), topt,
                     med(vals("inner_per_req")), max(int(r["redis_clients"]) for r in rs),
                     med(vals("rss_mib")), errs[0], errs[1]))


def cmd_stats(a):
    for k, (c, u) in sorted(commandstats(a[0], a[1]).items()):
        print(k, c, u)


def cmd_diff(a):
    d = stats_delta(read_stats(a[0]), read_stats(a[1]))
    print(" ".join(str(d.get(k.lower(), (0, 0))[0]) for k in a[2:]))


# which script runs which command (see relay_lease.c)
SCRIPT_OF = {"hmget": "admit", "time": "admit (+renew)", "zremrangebyscore": "admit",
             "zcard": "admit", "zadd": "admit (+renew)", "pexpire": "admit (+renew)",
             "hget": "admit when the key has a token limit; top-level id lookup",
             "zrem": "release", "exists": "release", "hset": "release", "hincrby": "release",
             "sadd": "release"}


def cmd_slowlog(a):
    """SLOWLOG (every command logged) + commandstats of one run, as markdown."""
    host, port, requests, st0, st1 = a
    n = max(int(requests), 1)
    r = Resp(host, port)
    entries = r.call("SLOWLOG", "GET", "-1") or []
    groups = {}
    first_seen = {}
    for e in entries:
        dur, args = int(e[2]), e[3]
        if not args:
            continue
        cmd = args[0].lower()
        if cmd in HARNESS:
            continue
        if cmd in ("evalsha", "eval") and len(args) > 2:
            sha = args[1][:40] if cmd == "evalsha" else "(source)"
            nk = args[2]
            key = (cmd.upper(), sha, nk)
            first_seen[key] = min(first_seen.get(key, 1 << 62), int(e[0]))
        else:
            key = (cmd.upper(), "", "")
        groups.setdefault(key, []).append(dur)
    names = {"3": "admit", "7": "release"}
    print("Top-level commands, from SLOWLOG with slowlog-log-slower-than 0 "
          "(execution time inside Redis, inner commands included; %d requests):\n" % n)
    print("| command | script (by its number of keys; first use order) | calls/req | µs/call mean | µs/call p50 | µs/call p99 | µs/req |")
    print("|---|---|---:|---:|---:|---:|---:|")
    order = sorted(first_seen, key=lambda k: first_seen[k])
    for key, durs in sorted(groups.items(), key=lambda kv: -sum(kv[1])):
        durs.sort()
        cmd, sha, nk = key
        label = "-"
        if sha:
            exists = r.call("SCRIPT", "EXISTS", sha)[0] if sha != "(source)" else 1
            label = "%s %s… (%s keys, used #%d%s)" % (names.get(nk, "renew"), sha[:12], nk,
                                                    order.index(key) + 1,
                                                    "" if exists else ", not cached")
        print("| %s | %s | %.3f | %.1f | %d | %d | %.1f |"
              % (cmd, label, len(durs) / n, sum(durs) / len(durs), durs[len(durs) // 2],
                 durs[min(len(durs) - 1, int(len(durs) * 0.99))], sum(durs) / n))
    d = stats_delta(read_stats(st0), read_stats(st1))
    print("\nCommands inside the scripts, from INFO commandstats (which counts them like "
          "top-level ones):\n")
    print("| command | run by | calls/req | µs/call | µs/req |")
    print("|---|---|---:|---:|---:|")
    inner_total = 0.0
    for k, (c, u) in sorted(d.items(), key=lambda kv: -kv[1][1]):
        if k in HARNESS or k in ("evalsha", "eval"):
            continue
        inner_total += u / n
        print("| %s | %s | %.3f | %.2f | %.1f |" % (k.upper(), SCRIPT_OF.get(k, "?"), c / n,
                                                   u / c, u / n))
    es = d.get("evalsha", (0, 1))
    print("\nEVALSHA in commandstats: %.3f calls/req, %.1f µs/call, %.1f µs/req in all, of which "
          "%.1f µs/req is spent in the commands above and %.1f µs/req in Lua and the "
          "script call itself." % (es[0] / n, es[1] / max(es[0], 1), es[1] / n, inner_total,
                                   es[1] / n - inner_total))


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


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    fn = {"record": cmd_record, "monitor": cmd_monitor, "summary": cmd_summary,
          "stats": cmd_stats, "diff": cmd_diff, "slowlog": cmd_slowlog, "perf": cmd_perf}
    fn[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    main()
