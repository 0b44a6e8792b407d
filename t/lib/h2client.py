#!/usr/bin/python3
"""HTTP/2 (h2c, prior knowledge) client for the relay's tests.

  h2client.py PORT KEY seq N BODY      N requests one after the other on one
                                       connection; prints each status
  h2client.py PORT KEY reset BODY [BODY2]
                                       one streaming request held 20 s by the
                                       mock (an event every 100 ms: an abort
                                       is seen at the next write), reset with
                                       RST_STREAM after its
                                       first data; prints "reset", waits for a
                                       line on stdin, then sends BODY2 on the
                                       same connection and prints its status
"""
import socket
import sys

import h2.config
import h2.connection
import h2.events


def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    c = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    s.sendall(c.data_to_send())
    return s, c


def send(s, c, key, body, hold_ms=0):
    sid = c.get_next_available_stream_id()
    c.send_headers(sid, [(":method", "POST"), (":path", "/api/v1/messages"),
                         (":scheme", "http"), (":authority", "127.0.0.1"),
                         ("x-api-key", key), ("content-type", "application/json"),
                         ("x-mock-hold-ms", str(hold_ms)), ("x-mock-events", "200")])
    c.send_data(sid, body.encode(), end_stream=True)
    s.sendall(c.data_to_send())
    return sid


def events(s, c):
    data = s.recv(65536)
    if not data:
        raise ConnectionError("connection closed")
    evs = c.receive_data(data)
    out = c.data_to_send()
    if out:
        s.sendall(out)
    return evs


def wait_end(s, c, sid):
    status = None
    while True:
        for e in events(s, c):
            if isinstance(e, h2.events.ResponseReceived) and e.stream_id == sid:
                status = dict(e.headers).get(b":status", b"0").decode()
            elif isinstance(e, h2.events.DataReceived) and e.stream_id == sid:
                c.acknowledge_received_data(e.flow_controlled_length, sid)
                s.sendall(c.data_to_send())
            elif isinstance(e, h2.events.StreamEnded) and e.stream_id == sid:
                return status
            elif isinstance(e, h2.events.StreamReset) and e.stream_id == sid:
                return "reset-by-server"


def main():
    port, key, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    s, c = connect(port)
    if mode == "seq":
        n, body = int(sys.argv[4]), sys.argv[5]
        for _ in range(n):
            print(wait_end(s, c, send(s, c, key, body)), flush=True)
    elif mode == "reset":
        body = sys.argv[4]
        sid = send(s, c, key, body, 20000)
        got = False
        while not got:
            for e in events(s, c):
                if isinstance(e, h2.events.DataReceived) and e.stream_id == sid:
                    got = True
        c.reset_stream(sid)
        s.sendall(c.data_to_send())
        print("reset", flush=True)
        sys.stdin.readline()
        print(wait_end(s, c, send(s, c, key, sys.argv[5] if len(sys.argv) > 5 else body)),
              flush=True)
    s.close()


if __name__ == "__main__":
    main()
