#!/usr/bin/env python3
"""rawappend.py - the floor for an IMAP export: APPEND every .eml file below a directory to an
IMAP user, one command at a time (each waits for its tagged OK, as an export does), folder by
folder (ROOT, then the file's directory with the server's delimiter). No flags, no date, no
duplicate check, no store: the bytes are read from the files and written to the socket.

  rawappend.py HOST PORT USER PASSWORD DIR ROOT [--literal-plus]
      -> prints messages=N bytes=B seconds=S (from after LOGIN to the last tagged OK)
  rawappend.py HOST PORT USER PASSWORD --count ROOT
      -> prints messages=N: the messages in ROOT and every folder below it

Without --literal-plus each APPEND uses a synchronising literal (waits for the server's "+"),
with it a non-synchronising one ({n+}, RFC 7888; the server must offer LITERAL+).
"""
import os
import re
import socket
import sys
import time

TAGGED = re.compile(rb"^(R\d+) (OK|NO|BAD)")


class Conn:
    def __init__(self, host, port):
        self.s = socket.create_connection((host, port), timeout=60)
        self.s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.f = self.s.makefile("rb")
        self.tag = 0
        self.f.readline()  # greeting

    def start(self, text):
        self.tag += 1
        t = b"R%d" % self.tag
        self.s.sendall(t + b" " + text + b"\r\n")
        return t

    def finish(self, t):
        """Read to the tagged response of t; return the untagged lines."""
        lines = []
        while True:
            line = self.f.readline()
            if not line:
                raise EOFError("server closed the connection")
            m = TAGGED.match(line)
            if m and m.group(1) == t:
                if m.group(2) != b"OK":
                    raise RuntimeError(line.decode(errors="replace").strip())
                return lines
            lines.append(line)

    def cmd(self, text):
        return self.finish(self.start(text))


def quote(s):
    return b'"' + s.replace("\\", "\\\\").replace('"', '\\"').encode() + b'"'


def main():
    host, port, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    c = Conn(host, port)
    c.cmd(b"LOGIN " + quote(user) + b" " + quote(password))
    delim = c.cmd(b'LIST "" ""')[0].split(b'"')[1].decode()
    if sys.argv[5] == "--count":
        root, n = sys.argv[6], 0
        for line in c.cmd(b'LIST "" ' + quote(root)) + c.cmd(b'LIST "" ' + quote(root + delim + "*")):
            if b"\\Noselect" in line or b"\\NonExistent" in line:
                continue
            name = line.decode().rsplit(f' "{delim}" ', 1)[1].strip().strip('"')
            for s in c.cmd(b"STATUS " + quote(name) + b" (MESSAGES)"):
                n += int(s.decode().rsplit("MESSAGES ", 1)[1].split(")")[0])
        print(f"messages={n}")
        return
    top, root = sys.argv[5], sys.argv[6]
    plus = "--literal-plus" in sys.argv[7:]
    files = []
    for d, _, names in os.walk(top):
        rel = os.path.relpath(d, top)
        folder = root if rel == "." else root + delim + rel.replace(os.sep, delim)
        files += [(folder, os.path.join(d, n)) for n in sorted(names) if n.endswith(".eml")]
    files.sort()
    n = total = 0
    t0 = time.monotonic()
    made = set()
    for folder, path in files:
        if folder not in made:
            try:
                c.cmd(b"CREATE " + quote(folder))
            except RuntimeError as e:
                if "ALREADYEXISTS" not in str(e).upper():
                    raise
            made.add(folder)
        with open(path, "rb") as f:
            data = f.read()
        if plus:
            t = c.start(b"APPEND " + quote(folder) + b" {%d+}" % len(data))
            c.s.sendall(data + b"\r\n")
        else:
            t = c.start(b"APPEND " + quote(folder) + b" {%d}" % len(data))
            line = c.f.readline()
            if not line.startswith(b"+"):
                raise RuntimeError(f"no continuation: {line!r}")
            c.s.sendall(data + b"\r\n")
        c.finish(t)
        n += 1
        total += len(data)
    seconds = time.monotonic() - t0
    c.cmd(b"LOGOUT")
    print(f"messages={n} bytes={total} seconds={seconds:.3f}")


if __name__ == "__main__":
    main()
