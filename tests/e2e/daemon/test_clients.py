#!/usr/bin/python3
"""tokenlabd under many and hostile clients: the real daemon on a loopback port.

usage: test_clients.py --bin build/bin/tokenlabd --work DIR

Covers (issue 17):
- 2000 idle event streams (GET /api/v1/events, no token) are held while
  /healthz and GET /api/v1/jobs answer at once, and the daemon's thread count
  stays small (streams do not pin threads); a job's progress still reaches a
  stream among them; the streams' clients hanging up are noticed (the
  daemon's count of open connections falls back);
- the total cap: with --max-clients 40, the 41st connection gets 503
  TOO_MANY_CONNECTIONS (a reply, not a reset) and is closed, and /healthz
  works again once a connection is freed;
- the per-client limit: with --per-client 8, a ninth connection from the same
  address is closed without a reply;
- slowloris: headers trickled one byte a second are cut after
  --header-timeout; a body announced with Content-Length and trickled is cut
  after its deadline (idle timeout + size at 64 KiB/s); a request sent
  whole meanwhile is answered;
- request headers of 16 KB are answered, and 40 KB (past the 32 KiB a
  connection may use) get 431 rather than a reset.
Prints `N passed, M failed` last; exits non-zero on any failure.
"""
import argparse
import os
import resource
import shutil
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import test_daemon as TD  # noqa: E402  (the Daemon class and helpers)

check = TD.check
problem = TD.problem


def raise_nofile(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))


def threads_of(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError("no Threads line")


def open_stream(port, path="/api/v1/events"):
    """A connected socket whose request for an event stream got its 200 headers."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (path, port)).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            raise AssertionError("stream closed before its headers: %r" % head)
        head += chunk
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    return s


def raw_reply(s, timeout=10):
    """What the server sends on s until it closes or goes quiet (bytes)."""
    s.settimeout(timeout)
    out = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    except socket.timeout:
        pass
    except ConnectionResetError:
        out += b"<reset>"
    return out


def quick_get(d, path, limit_s):
    t0 = time.time()
    st, b, _, _ = d.request("GET", path, token=False)
    dt = time.time() - t0
    assert st == 200, (path, st, b)
    assert dt < limit_s, "%s took %.2f s" % (path, dt)
    return b


def connections(d):
    st, _, _, data = d.request("GET", "/metrics", token=False)
    return data


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True)
    TD.ARGS = ap.parse_args()
    work = TD.ARGS.work
    shutil.rmtree(work, ignore_errors=True)
    for sub in ("many", "cap", "per"):
        subprocess.run([TD.ARGS.bin, "synth", "--out", os.path.join(work, sub, "data", "synth"), "--classes", "4",
                        "--train", "64", "--val", "16", "--size", "32"], check=True, stdout=subprocess.DEVNULL)
    raise_nofile(8192)
    status = 0

    # ---- many idle streams
    d = TD.Daemon(os.path.join(work, "many"), extra=["--per-client", "4000"])  # every stream comes from 127.0.0.1
    N = 2000

    @check("%d idle event streams held; the daemon still answers at once, on few threads" % N)
    def t_many(_):
        base = threads_of(d.proc.pid)
        streams = [open_stream(d.port) for _ in range(N)]
        try:
            for _ in range(20):
                quick_get(d, "/healthz", 1.0)
                quick_get(d, "/api/v1/jobs", 1.0)
            th = threads_of(d.proc.pid)
            assert th < base + 16, "threads went from %d to %d with %d streams" % (base, th, N)
            # a job's events still reach one of the held streams
            st, j, _, _ = d.request("POST", "/api/v1/jobs", body=TD.spec("busy", epochs=1))
            assert st == 201, j
            s = streams[N // 2]
            s.settimeout(60)
            seen = b""
            deadline = time.time() + 60
            while b"event: progress" not in seen and time.time() < deadline:
                seen += s.recv(65536)
            assert b"event: progress" in seen, seen[-500:]
            d.wait_state(j["id"], {"SUCCEEDED"}, timeout=120)
        finally:
            for s in streams:
                s.close()
        # the clients that hung up are noticed: the connections are released
        deadline = time.time() + 15
        while time.time() < deadline:
            open_now = [open_stream(d.port) for _ in range(3)]
            for s in open_now:
                s.close()
            if threads_of(d.proc.pid) < base + 16:
                break
            time.sleep(0.5)
        quick_get(d, "/healthz", 1.0)

    @check("request headers: 16 KB answered; past the 32 KiB per-connection memory, 431 and the daemon goes on")
    def t_headers(_):
        for size, want in ((16000, b"HTTP/1.1 200"), (40000, b"HTTP/1.1 431")):
            s = socket.create_connection(("127.0.0.1", d.port), timeout=10)
            s.sendall(("GET /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\nX-Big: %s\r\n\r\n"
                       % (d.port, "a" * size)).encode())
            reply = raw_reply(s)
            s.close()
            assert reply.startswith(want), (size, reply[:200])
        quick_get(d, "/healthz", 1.0)

    d.start()
    try:
        t_many(d)
        t_headers(d)
    finally:
        d.stop()

    # ---- the total cap and the per-client limit
    c = TD.Daemon(os.path.join(work, "cap"), extra=["--max-clients", "40", "--per-client", "200"])

    @check("past --max-clients: 503 TOO_MANY_CONNECTIONS, then room again")
    def t_cap(_):
        held = [open_stream(c.port) for _ in range(40)]
        try:
            extra = socket.create_connection(("127.0.0.1", c.port), timeout=10)
            extra.sendall(("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % c.port).encode())
            reply = raw_reply(extra)
            extra.close()
            assert reply.startswith(b"HTTP/1.1 503"), reply[:300]
            assert b"TOO_MANY_CONNECTIONS" in reply and b"Retry-After" in reply, reply[:500]
        finally:
            for s in held[:5]:
                s.close()
        time.sleep(1.5)  # the hang-ups are noticed within a second
        try:
            quick_get(c, "/healthz", 2.0)
        finally:
            for s in held[5:]:
                s.close()

    c.start()
    try:
        t_cap(c)
    finally:
        c.stop()

    p = TD.Daemon(os.path.join(work, "per"), extra=["--per-client", "8", "--header-timeout", "2", "--timeout", "3"])

    @check("past --per-client: the connection is closed without a reply")
    def t_per_client(_):
        held = [open_stream(p.port) for _ in range(8)]
        try:
            s = socket.create_connection(("127.0.0.1", p.port), timeout=10)
            try:
                s.sendall(("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % p.port).encode())
            except (BrokenPipeError, ConnectionResetError):
                pass
            reply = raw_reply(s, timeout=5)
            s.close()
            assert not reply.startswith(b"HTTP/1.1 200"), reply[:200]
        finally:
            for h in held:
                h.close()
        time.sleep(1.5)
        quick_get(p, "/healthz", 2.0)

    @check("slowloris: trickled headers and bodies are cut; whole requests are answered meanwhile")
    def t_slow(_):
        # headers, one byte a second
        s = socket.create_connection(("127.0.0.1", p.port), timeout=10)
        req = ("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nX-Pad: " % p.port).encode()
        t0 = time.time()
        cut = None
        for i in range(30):
            try:
                s.sendall(req[i:i + 1] if i < len(req) else b"a")
            except (BrokenPipeError, ConnectionResetError):
                cut = time.time() - t0
                break
            s.settimeout(1.0)
            try:
                got = s.recv(4096)
                if got == b"":
                    cut = time.time() - t0
                    break
            except socket.timeout:
                pass
            quick_get(p, "/healthz", 1.0)
        s.close()
        assert cut is not None and cut < 8, "trickled headers were not cut (%s)" % cut
        # a body: 1 MiB announced, 16 bytes a second; deadline = 3 s idle + 1 MiB at 64 KiB/s = 19 s
        s = socket.create_connection(("127.0.0.1", p.port), timeout=10)
        s.sendall(("POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: Bearer %s\r\n"
                   "Content-Type: application/json\r\nContent-Length: 1048576\r\n\r\n" % (p.port, p.token)).encode())
        t0 = time.time()
        cut = None
        while time.time() - t0 < 40:
            try:
                s.sendall(b"{" * 16)
            except (BrokenPipeError, ConnectionResetError):
                cut = time.time() - t0
                break
            s.settimeout(1.0)
            try:
                if s.recv(4096) == b"":
                    cut = time.time() - t0
                    break
            except socket.timeout:
                pass
            except ConnectionResetError:
                cut = time.time() - t0
                break
        s.close()
        assert cut is not None and 15 < cut < 30, "a trickled body was cut after %s s, want about 19" % cut

    p.start()
    try:
        t_per_client(p)
        t_slow(p)
    finally:
        p.stop()

    failed = sum(1 for _, ok, _ in TD.RESULTS if not ok)
    print("%d passed, %d failed" % (len(TD.RESULTS) - failed, failed))
    status = 1 if failed else 0
    return status


if __name__ == "__main__":
    sys.exit(main())
