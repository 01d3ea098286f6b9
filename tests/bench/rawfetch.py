#!/usr/bin/env python3
"""rawfetch.py - the IMAP server's limit: UID FETCH 1:* (BODY.PEEK[]) of every folder, read to
nowhere. A minimal response reader that skips literals by their announced size (no parsing of
message content, no storage), so the figure is what the server and the loopback can deliver.

  rawfetch.py HOST PORT USER PASSWORD   -> prints messages=N bytes=B seconds=S
"""
import re
import socket
import sys
import time

LIT = re.compile(rb"\{(\d+)\}\r\n$")


class Conn:
    def __init__(self, host, port):
        self.s = socket.create_connection((host, port), timeout=60)
        self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.buf = bytearray()
        self.tag = 0
        self.line()

    def fill(self):
        chunk = self.s.recv(1 << 20)
        if not chunk:
            raise EOFError("server closed the connection")
        self.buf += chunk

    def line(self):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                out = bytes(self.buf[: i + 2])
                del self.buf[: i + 2]
                return out
            self.fill()

    def skip(self, n):
        while len(self.buf) < n:
            n -= len(self.buf)
            self.buf.clear()
            self.fill()
        del self.buf[:n]

    def cmd(self, text, on_line=None):
        self.tag += 1
        t = b"R%d" % self.tag
        self.s.sendall(t + b" " + text.encode() + b"\r\n")
        literal_bytes = 0
        self.literals = 0
        while True:
            l = self.line()
            while True:
                m = LIT.search(l)
                if not m:
                    break
                n = int(m.group(1))
                literal_bytes += n
                self.literals += 1
                self.skip(n)
                l = self.line()
            if on_line:
                on_line(l)
            if l.startswith(t + b" "):
                if not l.startswith(t + b" OK"):
                    raise RuntimeError(l.decode(errors="replace"))
                return literal_bytes


def main():
    host, port, user, pw = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    c = Conn(host, port)
    c.cmd(f'LOGIN "{user}" "{pw}"')
    folders = []

    def on_list(l):
        m = re.match(rb'\* LIST \(([^)]*)\) "[^"]*" (.*)\r\n', l)
        if m and b"\\Noselect" not in m.group(1):
            folders.append(m.group(2).decode().strip('"'))
    c.cmd('LIST "" "*"', on_list)
    t0 = time.monotonic()
    total = 0
    count = 0
    for f in folders:
        c.cmd(f'EXAMINE "{f}"')
        total += c.cmd("UID FETCH 1:* (BODY.PEEK[])")
        count += c.literals
    dt = time.monotonic() - t0
    c.cmd("LOGOUT")
    print(f"messages={count} bytes={total} seconds={dt:.3f}")


if __name__ == "__main__":
    main()
