"""Sends one message of SIZE bytes in 64 KiB writes. Usage: big.py PORT SIZE"""
import sys

from large_message import session

port, size = int(sys.argv[1]), int(sys.argv[2])
line = b"x" * 998 + b"\r\n"
chunk = b"Subject: big\r\n\r\n" + line * 65


def write_content(s):
    sent = 0
    while sent < size:
        s.sendall(chunk)
        sent += len(chunk)


session(port, write_content)
