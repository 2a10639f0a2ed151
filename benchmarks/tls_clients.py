#!/usr/bin/env python3
"""Load for benchmarks/legacy_tls.sh: SMTP sessions with STARTTLS pinned to one TLS version
and cipher, in parallel processes.

    tls_clients.py PORT CA_FILE VERSION CIPHERS SESSIONS PER_SESSION PARALLEL

Each session: EHLO, STARTTLS, EHLO, PER_SESSION messages of 2 KiB, QUIT (a printer sends
one message a session). Prints "<messages sent> <seconds>".
"""
import multiprocessing
import smtplib
import ssl
import sys
import time
import warnings

warnings.simplefilter("ignore", DeprecationWarning)

VERSIONS = {"1.0": ssl.TLSVersion.TLSv1, "1.1": ssl.TLSVersion.TLSv1_1,
            "1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
BODY = b"From: scanner@bench.example\r\nSubject: bench\r\n\r\n" + (b"x" * 76 + b"\r\n") * 26


def worker(args):
    port, ca, version, ciphers, sessions, per_session = args
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(ca)
    context.minimum_version = context.maximum_version = VERSIONS[version]
    context.set_ciphers((ciphers or "DEFAULT") + ":@SECLEVEL=0")
    sent = 0
    for _ in range(sessions):
        smtp = smtplib.SMTP("127.0.0.1", port, timeout=30)
        smtp.ehlo("bench-printer")
        smtp.starttls(context=context)
        smtp.ehlo("bench-printer")
        for _ in range(per_session):
            smtp.sendmail("scanner@bench.example", ["sink@bench.example"], BODY)
            sent += 1
        smtp.quit()
    return sent


def main():
    port, ca, version, ciphers = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    sessions, per_session, parallel = map(int, sys.argv[5:8])
    shares = [sessions // parallel + (1 if i < sessions % parallel else 0) for i in range(parallel)]
    start = time.monotonic()
    with multiprocessing.Pool(parallel) as pool:
        sent = sum(pool.map(worker, [(port, ca, version, ciphers, n, per_session) for n in shares]))
    print(sent, f"{time.monotonic() - start:.3f}")


main()
