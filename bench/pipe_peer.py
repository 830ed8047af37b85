#!/usr/bin/env python3
"""Python peer of pipe_bench: multiprocessing.Pipe() between this process and a forked child.

    python3 bench/pipe_peer.py [--small N] [--big N] [--pingpong N] [--child-cpu CPU]

Each part runs when its count is > 0 and prints its figures as `name: value unit` lines:

  --small N     the child sends N 64-byte bytes objects with send_bytes(); this process
                receives them with recv_bytes():       pipe_64B_python_pipe (msgs/s)
  --big N       the same with N 1 MiB messages:       pipe_1MiB_python_pipe (MB/s, 10^6 B/s)
  --pingpong N  this process sends 64 bytes, the child echoes them back, N round trips
                (plus 1000 warm-up), each timed with perf_counter_ns:
                                                      pingpong_64B_python_p50 / _p99 (us)

Like the C++ side, the sender or echoer is a forked child (multiprocessing's fork start
method). Throughput is timed from before the child is started to the last message. Every
message carries its sequence number, which the receiver checks. --child-cpu pins the child
to that CPU (pipe_bench --pin split); this process keeps the affinity it was started with.
"""
import multiprocessing as mp
import os
import sys
import time

SMALL = 64
BIG = 1 << 20
WARMUP = 1000
child_cpu = -1


def pin_child():
    if child_cpu >= 0:
        os.sched_setaffinity(0, {child_cpu})


def small_sender(conn, n):
    pin_child()
    buf = bytearray(SMALL)
    for i in range(n):
        buf[0:8] = i.to_bytes(8, 'little')
        conn.send_bytes(buf)
    conn.close()


def big_sender(conn, n):
    pin_child()
    buf = bytearray(BIG)
    for i in range(n):
        buf[0:8] = i.to_bytes(8, 'little')
        conn.send_bytes(buf)
    conn.close()


def echoer(conn, n):
    pin_child()
    for _ in range(n):
        conn.send_bytes(conn.recv_bytes())
    conn.close()


def throughput(sender, n, size):
    ctx = mp.get_context('fork')
    mine, theirs = ctx.Pipe()
    t0 = time.perf_counter()
    p = ctx.Process(target=sender, args=(theirs, n))
    p.start()
    theirs.close()
    for i in range(n):
        b = mine.recv_bytes()
        if len(b) != size or int.from_bytes(b[0:8], 'little') != i:
            raise SystemExit('pipe_peer: wrong message %d' % i)
    dt = time.perf_counter() - t0
    p.join()
    if p.exitcode != 0:
        raise SystemExit('pipe_peer: sender failed')
    return dt


def pingpong(n):
    ctx = mp.get_context('fork')
    mine, theirs = ctx.Pipe()
    p = ctx.Process(target=echoer, args=(theirs, n + WARMUP))
    p.start()
    theirs.close()
    buf = bytearray(SMALL)
    samples = []
    clock = time.perf_counter_ns
    for i in range(n + WARMUP):
        buf[0:8] = i.to_bytes(8, 'little')
        t0 = clock()
        mine.send_bytes(buf)
        b = mine.recv_bytes()
        t1 = clock()
        if len(b) != SMALL or int.from_bytes(b[0:8], 'little') != i:
            raise SystemExit('pipe_peer: wrong echo %d' % i)
        if i >= WARMUP:
            samples.append(t1 - t0)
    p.join()
    if p.exitcode != 0:
        raise SystemExit('pipe_peer: echoer failed')
    samples.sort()
    return samples[len(samples) // 2] / 1e3, samples[min(len(samples) - 1, len(samples) * 99 // 100)] / 1e3


def main():
    global child_cpu
    args = sys.argv[1:]
    counts = {'--small': 0, '--big': 0, '--pingpong': 0, '--child-cpu': -1}
    while args:
        if len(args) < 2 or args[0] not in counts:
            raise SystemExit(__doc__)
        counts[args[0]] = int(args[1])
        args = args[2:]
    child_cpu = counts['--child-cpu']
    if counts['--small'] > 0:
        n = counts['--small']
        print('pipe_64B_python_pipe: %.0f msgs/s' % (n / throughput(small_sender, n, SMALL)),
              flush=True)
    if counts['--big'] > 0:
        n = counts['--big']
        print('pipe_1MiB_python_pipe: %.0f MB/s' % (n * BIG / throughput(big_sender, n, BIG) / 1e6),
              flush=True)
    if counts['--pingpong'] > 0:
        p50, p99 = pingpong(counts['--pingpong'])
        print('pingpong_64B_python_p50: %.2f us' % p50, flush=True)
        print('pingpong_64B_python_p99: %.2f us' % p99, flush=True)


if __name__ == '__main__':
    main()
