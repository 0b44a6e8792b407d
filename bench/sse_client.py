#!/usr/bin/python3
"""Open N streaming requests at once and read each to its end (bench/streams.sh).

    sse_client.py --port P --path /api/v1/messages --key cr_... -n 1000 \
        --hold-ms 20000 --events 10 --max-pending 1000 --ready-file F --out result.json

Each connection sends one POST with {"stream":true,...} and the mock's
x-mock-hold-ms / x-mock-events headers, then reads until the server closes.
Counted: admitted (HTTP 200), completed (200 and the body holds
"event: message_stop"), refused (an HTTP error status), failed (connect or read
error, timeout, or a 200 that ended early). When every connection has its
status line (or has failed), --ready-file is written, so the caller knows the
streams are all held. Python 3 standard library only (selectors/epoll).
"""
import argparse
import errno
import json
import selectors
import socket
import statistics
import sys
import time


def dechunk(body):
    out, i = [], 0
    while i < len(body):
        j = body.find(b"\r\n", i)
        if j < 0:
            break
        try:
            size = int(body[i:j].split(b";")[0], 16)
        except ValueError:
            return None
        if size == 0:
            return b"".join(out)
        out.append(body[j + 2:j + 2 + size])
        i = j + 2 + size + 2
    return b"".join(out)


class Conn:
    __slots__ = ("sock", "buf", "sent", "status", "t_status", "t_end", "error", "done")

    def __init__(self):
        self.sock, self.buf, self.sent = None, bytearray(), False
        self.status, self.t_status, self.t_end, self.error, self.done = 0, None, None, None, False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/api/v1/messages")
    ap.add_argument("--key", required=True)
    ap.add_argument("-n", type=int, required=True)
    ap.add_argument("--hold-ms", type=int, default=20000)
    ap.add_argument("--events", type=int, default=10)
    ap.add_argument("--max-pending", type=int, default=1000,
                    help="connections waiting for their status line at most (0: no limit)")
    ap.add_argument("--timeout", type=float, default=0, help="seconds; 0: hold + 60 + n / 100")
    ap.add_argument("--ready-file")
    ap.add_argument("--out")
    a = ap.parse_args()

    body = json.dumps({"model": "claude-sonnet-4-20250514", "max_tokens": 64, "stream": True,
                       "messages": [{"role": "user", "content": "hold this stream"}]}).encode()
    req = (("POST %s HTTP/1.1\r\nHost: %s:%d\r\nx-api-key: %s\r\n"
            "anthropic-version: 2023-06-01\r\ncontent-type: application/json\r\n"
            "accept: text/event-stream\r\nx-mock-hold-ms: %d\r\nx-mock-events: %d\r\n"
            "content-length: %d\r\nconnection: close\r\n\r\n")
           % (a.path, a.host, a.port, a.key, a.hold_ms, a.events, len(body))).encode() + body
    timeout = a.timeout or a.hold_ms / 1000.0 + 60 + a.n / 100.0
    window = a.max_pending if a.max_pending > 0 else a.n

    sel = selectors.DefaultSelector()
    conns = []
    pending = 0  # opened and not yet done
    waiting = 0  # opened, no status line yet and not done
    held = 0  # status 200 and not yet done
    max_held = 0
    unready = a.n  # without a status line and not done, opened or not
    ready_written = False
    t0 = time.monotonic()

    def open_one():
        nonlocal pending, waiting, unready
        c = Conn()
        conns.append(c)
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            rc = s.connect_ex((a.host, a.port))
            if rc not in (0, errno.EINPROGRESS):
                s.close()
                raise OSError(rc, "connect: " + errno.errorcode.get(rc, str(rc)))
            c.sock = s
            sel.register(s, selectors.EVENT_WRITE, c)
            pending += 1
            waiting += 1
        except OSError as e:
            c.error, c.done, c.t_end = str(e), True, time.monotonic()
            unready -= 1

    def top_up():
        while len(conns) < a.n and waiting < window:
            open_one()

    def finish(c, err=None):
        nonlocal pending, waiting, unready, held
        if c.done:
            return
        if c.status == 0:
            unready -= 1
            waiting -= 1
        elif c.status == 200:
            held -= 1
        c.done, c.t_end = True, time.monotonic()
        if err:
            c.error = err
        try:
            sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()
        pending -= 1

    top_up()
    while pending > 0 or len(conns) < a.n:
        top_up()
        now = time.monotonic()
        if now - t0 > timeout:
            for c in conns:
                if not c.done:
                    finish(c, "timeout")
            break
        for key, ev in sel.select(timeout=0.5):
            c = key.data
            if c.done:
                continue
            if not c.sent and ev & selectors.EVENT_WRITE:
                err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    finish(c, "connect: " + errno.errorcode.get(err, str(err)))
                    continue
                try:
                    c.sock.sendall(req)
                except OSError as e:
                    finish(c, "send: %s" % e)
                    continue
                c.sent = True
                sel.modify(c.sock, selectors.EVENT_READ, c)
                continue
            try:
                data = c.sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError as e:
                finish(c, "read: %s" % e)
                continue
            if not data:
                finish(c)
                continue
            c.buf += data
            if c.status == 0 and b"\r\n" in c.buf:
                line = bytes(c.buf[:c.buf.index(b"\r\n")]).split()
                c.status = int(line[1]) if len(line) > 1 and line[1].isdigit() else -1
                c.t_status = time.monotonic()
                unready -= 1
                waiting -= 1
                if c.status == 200:
                    held += 1
                    max_held = max(max_held, held)
        if not ready_written and unready <= 0:
            ready_written = True
            if a.ready_file:
                with open(a.ready_file, "w") as f:
                    json.dump({"t": time.monotonic() - t0, "held": held,
                               "admitted": sum(1 for c in conns if c.status == 200)}, f)

    res = {"n": a.n, "admitted": 0, "completed": 0, "refused": 0, "failed": 0, "statuses": {},
           "errors": {}, "max_held": max_held, "max_pending": window}
    durs, t_stat = [], []
    for c in conns:
        head, _, body_raw = bytes(c.buf).partition(b"\r\n\r\n")
        if c.status:
            res["statuses"][str(c.status)] = res["statuses"].get(str(c.status), 0) + 1
        if c.t_status:
            t_stat.append(c.t_status - t0)
        if c.status == 200:
            res["admitted"] += 1
            text = dechunk(body_raw) if b"chunked" in head.lower() else body_raw
            if text is None:
                text = body_raw
            if b"event: message_stop" in text and not c.error:
                res["completed"] += 1
                durs.append(c.t_end - t0)
            else:
                res["failed"] += 1
                e = c.error or "200 without message_stop"
                res["errors"][e] = res["errors"].get(e, 0) + 1
        elif c.status > 0:
            res["refused"] += 1
        else:
            res["failed"] += 1
            e = c.error or "no status line"
            res["errors"][e] = res["errors"].get(e, 0) + 1
    if len(conns) < a.n:
        res["failed"] += a.n - len(conns)
        res["errors"]["not opened before the timeout"] = a.n - len(conns)
    res["all_statuses_s"] = round(max(t_stat), 3) if t_stat else None
    res["first_end_s"] = round(min(durs), 3) if durs else None
    res["last_end_s"] = round(max(durs), 3) if durs else None
    res["median_end_s"] = round(statistics.median(durs), 3) if durs else None
    out = json.dumps(res)
    if a.out:
        with open(a.out, "w") as f:
            f.write(out + "\n")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
