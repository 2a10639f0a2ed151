"""Opens N idle SMTP connections (each reads its greeting and says EHLO), then reports the
relay's RSS growth per connection. Usage: idle.py PORT N PID"""
import socket
import sys
import time


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


port, count, pid = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
before = rss_kb(pid)
conns = []
for _ in range(count):
    s = socket.create_connection(("127.0.0.1", port))
    s.recv(1024)
    s.sendall(b"EHLO idle.bench\r\n")
    conns.append(s)
for s in conns:
    data = b""
    while b"250 " not in data:
        data += s.recv(4096)
time.sleep(1)
after = rss_kb(pid)
print(f"RSS {before} kB -> {after} kB with {count} idle sessions: {(after - before) / count:.1f} kB each")
for s in conns:
    s.close()
