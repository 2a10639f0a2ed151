"""Large messages for benchmarks/large.sh.

    large_message.py make FILE SIZE      a scan of SIZE bytes of MIME: a line of text and a
                                         PDF of random bytes, base64 in 76-character lines
    large_message.py send PORT FILE N    sends FILE to 127.0.0.1:PORT N times at once, one
                                         connection each, streamed from the file
"""
import os
import socket
import sys
import threading

HEAD = (
    b"From: Scanner <scanner@b.example>\r\nTo: sink@d.example\r\nSubject: Scan\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"scan\"\r\n\r\n"
    b"--scan\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nYour scan.\r\n"
    b"--scan\r\nContent-Type: application/pdf; name=\"scan.pdf\"\r\n"
    b"Content-Disposition: attachment; filename=\"scan.pdf\"\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\n"
)
TAIL = b"--scan--\r\n"


def make(path, size):
    import base64

    lines = (size - len(HEAD) - len(TAIL)) // 78
    with open(path, "wb") as f:
        f.write(HEAD)
        while lines > 0:
            n = min(lines, 10000)
            block = base64.b64encode(os.urandom(57 * n))
            f.write(b"".join(block[i:i + 76] + b"\r\n" for i in range(0, len(block), 76)))
            lines -= n
        f.write(TAIL)


def session(port, write_content):
    """One SMTP session that sends one message: `write_content(socket)` writes the content
    (no line of it may start with a dot), then the end of data; asserts every reply."""
    s = socket.create_connection(("127.0.0.1", port))
    f = s.makefile("rb")

    def reply():
        while True:
            line = f.readline()
            if line[3:4] != b"-":
                return line

    reply()
    for cmd in [b"EHLO large.bench", b"MAIL FROM:<scanner@b.example>", b"RCPT TO:<sink@d.example>", b"DATA"]:
        s.sendall(cmd + b"\r\n")
        r = reply()
        assert r[:1] in (b"2", b"3"), r
    write_content(s)
    s.sendall(b".\r\n")
    r = reply()
    assert r.startswith(b"250"), r
    s.sendall(b"QUIT\r\n")
    reply()
    s.close()


def send_one(port, path, errors):
    def write_file(s):
        with open(path, "rb") as m:
            while True:
                chunk = m.read(1 << 16)
                if not chunk:
                    return
                s.sendall(chunk)

    try:
        session(port, write_file)
    except Exception as e:  # noqa: BLE001 - reported by the caller
        errors.append(e)


def send(port, path, count):
    errors = []
    threads = [threading.Thread(target=send_one, args=(port, path, errors)) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        sys.exit(f"send failed: {errors[0]}")


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2], int(sys.argv[3]))
    else:
        send(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
