"""A minimal /dev/log listener so Postfix can report start-up errors on a machine without a
syslog daemon. Writes every record to the file named on the command line."""
import os
import socket
import sys

try:
    os.unlink("/dev/log")
except FileNotFoundError:
    pass
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind("/dev/log")
with open(sys.argv[1], "ab", buffering=0) as out:
    while True:
        out.write(sock.recv(65536) + b"\n")
