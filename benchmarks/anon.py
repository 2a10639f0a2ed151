"""Memory and CPU of a process, or of a process and its descendants (Postfix), for the
benchmarks.

    anon.py peak STOPFILE PID [tree]   samples RssAnon (anonymous memory: the heap, not the
                                       page cache) every 5 ms until STOPFILE exists, summed
                                       over PID's descendants too with `tree`; prints the
                                       peak in kB
    anon.py cpu PID [tree]             user+system CPU in ms, with `tree` also that of live
                                       descendants and of those that exited
"""
import os
import sys
import time

HZ = os.sysconf("SC_CLK_TCK")


def children():
    """pid -> list of child pids."""
    tree = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(name))
    return tree


def family(pid, tree):
    if not tree:
        return [pid]
    links = children()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(links.get(p, []))
    return out


def anon_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_ms(pid, waited):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    # fields[0] is field 3 (state): utime 14, stime 15, cutime 16, cstime 17.
    ticks = int(fields[11]) + int(fields[12])
    if waited:
        ticks += int(fields[13]) + int(fields[14])
    return ticks * 1000 // HZ


if __name__ == "__main__":
    tree = sys.argv[-1] == "tree"
    if sys.argv[1] == "peak":
        stop, pid = sys.argv[2], int(sys.argv[3])
        peak, members, last = 0, family(pid, tree), 0.0
        while not os.path.exists(stop):
            if tree and time.monotonic() - last > 0.2:
                members, last = family(pid, tree), time.monotonic()
            peak = max(peak, sum(anon_kb(p) for p in members))
            time.sleep(0.005)
        print(peak)
    else:
        pid = int(sys.argv[2])
        print(sum(cpu_ms(p, p == pid and tree) for p in family(pid, tree)))
