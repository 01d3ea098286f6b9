#!/usr/bin/env python3
"""fsynccopy.py - the floor for a directory export that is crash-safe file by file: copy every
file below SRC to the same path below DST as a directory export writes it (a temporary name,
write, fsync, rename, fsync of the directory), with no store, hashing or bookkeeping.

  fsynccopy.py SRC DST   -> prints messages=N bytes=B seconds=S
"""
import os
import sys
import time


def main():
    src, dst = sys.argv[1], sys.argv[2]
    files = sorted(os.path.relpath(os.path.join(d, n), src) for d, _, ns in os.walk(src) for n in ns
                   if n.endswith(".eml"))
    n = total = 0
    t0 = time.monotonic()
    made = set()
    for rel in files:
        d = os.path.dirname(os.path.join(dst, rel))
        if d not in made:
            os.makedirs(d, exist_ok=True)
            made.add(d)
        with open(os.path.join(src, rel), "rb") as f:
            data = f.read()
        tmp = os.path.join(d, ".tmp-" + os.path.basename(rel))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        os.close(fd)
        os.rename(tmp, os.path.join(dst, rel))
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(dfd)
        os.close(dfd)
        n += 1
        total += len(data)
    print(f"messages={n} bytes={total} seconds={time.monotonic() - t0:.3f}")


if __name__ == "__main__":
    main()
