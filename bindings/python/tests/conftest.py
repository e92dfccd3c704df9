# SPDX-License-Identifier: MIT
"""Fixtures of the Python binding's tests: quotad and quota-sim started on
names of their own (a segment per test), waited for by their ready line (no
sleeping), and stopped with their segment removed when the test ends, passed
or failed. Paths come from meson test's environment: QUOTAD, QUOTA_SIM,
LD_LIBRARY_PATH (the build's libquota.so.2), PYTHONPATH (this package)."""

import itertools
import json
import os
import pathlib
import select
import signal
import subprocess
import tempfile
import uuid

import pytest

_counter = itertools.count()


def _wait_line(fd, proc, what, timeout=10.0):
    """The first line written to @fd by @proc, within @timeout seconds."""
    buf = b""
    while b"\n" not in buf:
        r, _, _ = select.select([fd], [], [], timeout)
        if not r:
            raise RuntimeError("%s: no ready line within %.0f s" % (what, timeout))
        chunk = os.read(fd, 256)
        if not chunk:
            raise RuntimeError("%s exited (status %s) before it was ready" % (what, proc.poll()))
        buf += chunk
    return buf.split(b"\n", 1)[0].decode()


def _stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Daemons:
    """Starts quotad and quota-sim for one test; stop() undoes everything."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.procs = []
        self.segments = []
        self.configs = {}  # segment -> (config file, its JSON, quotad)

    def quotad(self, quotas, clock="monotonic", max_clients=256):
        """Start quotad serving @quotas (the config's "quotas" object) on a
        fresh segment; returns the segment name."""
        seg = "pyq-%d-%d-%s" % (os.getpid(), next(_counter), uuid.uuid4().hex[:6])
        cfg = self.tmp / ("%s.json" % seg)
        doc = {"segment": seg, "clock": clock, "max_clients": max_clients, "quotas": quotas}
        cfg.write_text(json.dumps(doc))
        r, w = os.pipe()
        log = open(self.tmp / ("%s.log" % seg), "wb")
        self.segments.append(seg)
        p = subprocess.Popen([os.environ["QUOTAD"], "-c", str(cfg), "--segment", seg,
                              "--socket", str(self.tmp / ("%s.sock" % seg)),
                              "--remove-on-exit", "--ready-fd", str(w)],
                             pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=log)
        os.close(w)
        log.close()
        self.procs.append(p)
        try:
            line = _wait_line(r, p, "quotad")
        finally:
            os.close(r)
        assert line == "ready", line
        self.configs[seg] = (cfg, doc, p)
        return seg

    def reload(self, seg, quotas):
        """Give @seg's quotad the quotas @quotas and make it reload (SIGHUP);
        the caller waits for what it expects to see."""
        cfg, doc, p = self.configs[seg]
        cfg.write_text(json.dumps(dict(doc, quotas=quotas)))
        p.send_signal(signal.SIGHUP)

    def sim(self, *args):
        """Start quota-sim with @args on a free port; returns its base URL."""
        p = subprocess.Popen([os.environ["QUOTA_SIM"], "--port", "0", "--quiet", *args],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.procs.append(p)
        port = _wait_line(p.stdout.fileno(), p, "quota-sim")
        return "http://127.0.0.1:%s" % port

    def stop(self):
        for p in reversed(self.procs):
            _stop(p)
        for seg in self.segments:
            try:
                os.unlink("/dev/shm/" + seg)
            except FileNotFoundError:
                pass


@pytest.fixture
def tmp_path():
    """A fresh directory removed when the test ends (pytest's own keeps the
    last runs' directories under /tmp/pytest-of-USER)."""
    with tempfile.TemporaryDirectory(prefix="quota-py-") as d:
        yield pathlib.Path(d)


@pytest.fixture
def daemons(tmp_path):
    d = Daemons(tmp_path)
    try:
        yield d
    finally:
        d.stop()


def pytest_sessionstart(session):
    # Under the sanitizer build meson preloads the runtimes an instrumented
    # libquota.so.2 needs; where it could not find them, skip (status 77)
    # rather than fail on the loader's refusal.
    import libquota._lib
    try:
        libquota._lib.load()
    except OSError as e:
        if os.environ.get("QUOTA_SANITIZE"):
            pytest.exit("SKIP: cannot load the instrumented library here: %s" % e, returncode=77)
        raise


def pytest_report_header(config):
    import libquota._lib
    return "libquota: %s (LD_LIBRARY_PATH=%s)" % (libquota._lib.SONAME,
                                                   os.environ.get("LD_LIBRARY_PATH", ""))
