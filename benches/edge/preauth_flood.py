# Pre-authentication memory: 20 connections stop mid-SCRAM and try to send
# 60 MiB frames. Usage: python3 benches/edge/preauth_flood.py GUARD_PORT GUARD_PID
# (the upstream needs a role "scram_user" under scram-sha-256 in pg_hba.conf).
import socket, struct, sys, time, threading
port, pid = int(sys.argv[1]), int(sys.argv[2])
def rss():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"): return l.split()[1] + " kB"
def startup():
    body = b"user\0scram_user\0database\0postgres\0\0"
    return struct.pack("!ii", len(body) + 8, 196608) + body
print("before:", rss())
socks = []
sent = [0]*20
def flood(i):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(startup())
    s.recv(1024)  # AuthenticationSASL
    s.sendall(b"p" + struct.pack("!i", 60 * 1024 * 1024 + 4))
    chunk = b"x" * 65536
    try:
        for _ in range(960):
            s.sendall(chunk); sent[i] += len(chunk)
    except OSError:
        pass
    socks.append(s)
ts = [threading.Thread(target=flood, args=(i,)) for i in range(20)]
[t.start() for t in ts]; time.sleep(3)
print("during:", rss(), "bytes the clients got to send:", sum(sent))
[t.join(timeout=10) for t in ts]
print("after:", rss())
