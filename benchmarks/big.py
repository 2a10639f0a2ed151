"""Sends one message of SIZE bytes in 64 KiB writes. Usage: big.py PORT SIZE"""
import socket
import sys

port, size = int(sys.argv[1]), int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port))
f = s.makefile("rb")


def reply():
    while True:
        line = f.readline()
        if line[3:4] != b"-":
            return line


reply()
for cmd in [b"EHLO big.bench", b"MAIL FROM:<big@b.example>", b"RCPT TO:<c@d.example>", b"DATA"]:
    s.sendall(cmd + b"\r\n")
    reply()
line = b"x" * 998 + b"\r\n"
chunk = b"Subject: big\r\n\r\n" + line * 65
sent = 0
while sent < size:
    s.sendall(chunk)
    sent += len(chunk)
s.sendall(b".\r\n")
r = reply()
assert r.startswith(b"250"), r
s.sendall(b"QUIT\r\n")
