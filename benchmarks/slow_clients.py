#!/usr/bin/env python3
"""Slow-client probe (issue 13): N connections from one address that trickle a command one
byte a second, against a relay on 127.0.0.1; meanwhile a "printer" on another loopback
address (127.0.0.2) sends a message. Reports how many connections the relay took, how long
until it cut them, and whether the printer got through.

    benchmarks/slow_clients.py PORT [CONNECTIONS]

The relay must listen on 127.0.0.1:PORT with 127.0.0.0/8 trusted (the defaults).
"""
import asyncio
import sys
import time

PORT = int(sys.argv[1])
CONNECTIONS = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
HOLD_AT_MOST = 120  # seconds: the probe gives up on a connection after this


async def trickler(results):
    start = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", PORT)
    except OSError:
        results.append(("refused-tcp", 0.0))
        return
    greeting = await reader.readline()
    if not greeting.startswith(b"220"):
        results.append(("refused-421", time.monotonic() - start))
        writer.close()
        return
    command = b"EHLO slow.example.com and a long tail to keep sending bytes for a while\r\n"
    for byte in command:
        writer.write(bytes([byte]))
        try:
            await writer.drain()
        except OSError:
            break
        try:
            line = await asyncio.wait_for(reader.readline(), 1.0)
            if line:
                results.append(("cut " + line[:3].decode(), time.monotonic() - start))
            else:
                results.append(("cut closed", time.monotonic() - start))
            writer.close()
            return
        except asyncio.TimeoutError:
            pass
        if time.monotonic() - start > HOLD_AT_MOST:
            break
    results.append(("never cut", time.monotonic() - start))
    writer.close()


async def printer():
    await asyncio.sleep(3)
    start = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", PORT, local_addr=("127.0.0.2", 0))
    replies = []

    async def say(line):
        if line:
            writer.write(line + b"\r\n")
            await writer.drain()
        while True:
            reply = await reader.readline()
            if reply[3:4] != b"-":
                replies.append(reply.decode().strip())
                return reply

    greeting = await say(b"")
    if not greeting.startswith(b"220"):
        writer.close()
        return greeting.decode().strip(), time.monotonic() - start
    await say(b"EHLO printer")
    await say(b"MAIL FROM:<scanner@contoso.com>")
    await say(b"RCPT TO:<someone@contoso.com>")
    await say(b"DATA")
    final = await say(b"Subject: scan\r\n\r\nscan\r\n.")
    writer.close()
    return final.decode().strip(), time.monotonic() - start


async def main():
    results = []
    tasks = [asyncio.create_task(trickler(results)) for _ in range(CONNECTIONS)]
    printed = await printer()
    await asyncio.gather(*tasks)
    kinds = {}
    for kind, took in results:
        kinds.setdefault(kind, []).append(took)
    for kind, times in sorted(kinds.items()):
        print(f"{kind:>12}: {len(times):5} connections, after {min(times):.1f}-{max(times):.1f} s")
    print(f"printer from 127.0.0.2: {printed[0]!r} in {printed[1]:.2f} s")


asyncio.run(main())
