# Console reachability: 1000 silent TCP connections, then psql to the console.
# Usage: python3 benches/edge/silent_flood.py GUARD_PORT (ulimit -n 4096 first).
import socket, sys, subprocess, time
port = int(sys.argv[1])
socks = []
for _ in range(1000):
    try:
        socks.append(socket.create_connection(("127.0.0.1", port)))
    except OSError as e:
        print("connect failed:", e); break
time.sleep(0.5)
t = time.time()
r = subprocess.run(["psql", f"postgresql://zgadmin:zgadmin@127.0.0.1:{port}/zoneguard", "-c", "SHOW SWITCHES"], capture_output=True, text=True)
print(f"console with 1000 silent connections open: rc={r.returncode} in {time.time()-t:.2f}s", (r.stdout.splitlines()[2:3] or r.stderr.strip().splitlines()[:1]))
