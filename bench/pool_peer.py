#!/usr/bin/env python3
"""Python peers of pool_bench: concurrent.futures.ProcessPoolExecutor and multiprocessing.Pool.

    python3 bench/pool_peer.py MODE [--workers N] [--tasks N] [--in-flight N] [--latency N]
                                    [--map N] [--chunksize N]

Every pool uses the fork start method and --workers (2) worker processes, and runs the
module-level function square(x) = x * x on x = i & 0x7fff (as the C++ side does). Each pool is
started, and each worker has run one task, before the clock starts. Every result is checked
(the sum of the squares). Figures are printed as `name: value unit` lines:

  throughput  --tasks N submissions with --in-flight (64) outstanding: a semaphore taken
              before each submission and released by the completion callback.
                ProcessPoolExecutor: submit() + add_done_callback
                                                     pool_throughput_python_executor (tasks/s)
                multiprocessing.Pool: apply_async(callback=)
                                                     pool_throughput_python_pool (tasks/s)
  latency     --latency N sequential executor.submit(square, i).result() (after N / 10
              warm-up calls), each timed with perf_counter_ns:
                                                     pool_latency_python_executor_p50 / _p99 (us)
  map         multiprocessing.Pool.map(square, range(N), chunksize), the whole list:
                                                     pool_map_python_pool (items/s)
"""
import concurrent.futures as cf
import multiprocessing as mp
import sys
import threading
import time


def square(x):
    return x * x


def expected_sum(n):
    return sum((i & 0x7FFF) * (i & 0x7FFF) for i in range(n))


def check(got, n, what):
    if got != expected_sum(n):
        raise SystemExit('pool_peer: %s: wrong sum of results' % what)


def warm(submit_and_get, workers):
    # Every worker forked and past its first task before timing starts.
    for i in range(4 * workers):
        submit_and_get(i)


def executor_throughput(workers, tasks, in_flight):
    ctx = mp.get_context('fork')
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as ex:
        warm(lambda i: ex.submit(square, i).result(), workers)
        sem = threading.Semaphore(in_flight)
        lock = threading.Lock()
        state = {'sum': 0, 'done': 0}
        finished = threading.Event()

        def on_done(f):
            r = f.result()
            with lock:
                state['sum'] += r
                state['done'] += 1
                last = state['done'] == tasks
            sem.release()
            if last:
                finished.set()

        t0 = time.perf_counter()
        for i in range(tasks):
            sem.acquire()
            ex.submit(square, i & 0x7FFF).add_done_callback(on_done)
        finished.wait()
        dt = time.perf_counter() - t0
    check(state['sum'], tasks, 'executor throughput')
    return tasks / dt


def pool_throughput(workers, tasks, in_flight):
    ctx = mp.get_context('fork')
    with ctx.Pool(workers) as pool:
        warm(lambda i: pool.apply_async(square, (i,)).get(), workers)
        sem = threading.Semaphore(in_flight)
        state = {'sum': 0, 'done': 0}
        finished = threading.Event()

        # Pool runs every callback on its one result-handler thread: no lock needed.
        def on_done(r):
            state['sum'] += r
            state['done'] += 1
            sem.release()
            if state['done'] == tasks:
                finished.set()

        t0 = time.perf_counter()
        for i in range(tasks):
            sem.acquire()
            pool.apply_async(square, (i & 0x7FFF,), callback=on_done)
        finished.wait()
        dt = time.perf_counter() - t0
    check(state['sum'], tasks, 'Pool throughput')
    return tasks / dt


def executor_latency(workers, n):
    ctx = mp.get_context('fork')
    samples = []
    clock = time.perf_counter_ns
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as ex:
        warm(lambda i: ex.submit(square, i).result(), workers)
        for _ in range(n // 10):
            ex.submit(square, 3).result()
        for i in range(n):
            t0 = clock()
            r = ex.submit(square, i).result()
            t1 = clock()
            if r != i * i:
                raise SystemExit('pool_peer: wrong result')
            samples.append(t1 - t0)
    samples.sort()
    return (samples[len(samples) // 2] / 1e3,
            samples[min(len(samples) - 1, len(samples) * 99 // 100)] / 1e3)


def pool_map(workers, n, chunksize):
    ctx = mp.get_context('fork')
    with ctx.Pool(workers) as pool:
        warm(lambda i: pool.apply_async(square, (i,)).get(), workers)
        t0 = time.perf_counter()
        out = pool.map(square, range(n), chunksize)
        dt = time.perf_counter() - t0
    if len(out) != n or out[-1] != (n - 1) * (n - 1) or out[n // 2] != (n // 2) * (n // 2):
        raise SystemExit('pool_peer: wrong map result')
    return n / dt


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    mode = sys.argv[1]
    args = sys.argv[2:]
    opts = {'--workers': 2, '--tasks': 20000, '--in-flight': 64, '--latency': 2000,
            '--map': 1000000, '--chunksize': 10000}
    while args:
        if len(args) < 2 or args[0] not in opts:
            raise SystemExit(__doc__)
        opts[args[0]] = int(args[1])
        args = args[2:]
    workers = opts['--workers']
    if mode == 'throughput':
        print('pool_throughput_python_executor: %.0f tasks/s'
              % executor_throughput(workers, opts['--tasks'], opts['--in-flight']), flush=True)
        print('pool_throughput_python_pool: %.0f tasks/s'
              % pool_throughput(workers, opts['--tasks'], opts['--in-flight']), flush=True)
    elif mode == 'latency':
        p50, p99 = executor_latency(workers, opts['--latency'])
        print('pool_latency_python_executor_p50: %.2f us' % p50, flush=True)
        print('pool_latency_python_executor_p99: %.2f us' % p99, flush=True)
    elif mode == 'map':
        print('pool_map_python_pool: %.0f items/s'
              % pool_map(workers, opts['--map'], opts['--chunksize']), flush=True)
    else:
        raise SystemExit(__doc__)


if __name__ == '__main__':
    main()
