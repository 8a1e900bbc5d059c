#!/usr/bin/env python3
"""bench/faults.py - one fault scenario against the real postern binary; run by bench/faults.sh.

    python3 bench/faults.py SCENARIO --bin BIN --dir DIR [options]

SCENARIO is `kill9` (kill -9 under load, restart on the same data_dir), `diskfull` (DIR is
on a small tmpfs: a filler file takes all its room while the load runs, then goes; no restart)
or `journalcut` (messages queued with delivery paused, kill -9, the newest journal file's
tail cut off, restart with delivery on). DIR is a configuration directory made by
bench/postern-dir.sh (data_dir = ".", Maildir mail/example.test/u). The server is started
here (`BIN -C DIR serve`, log in DIR/../<scenario>-<n>.log), killed and restarted as the
scenario says, and stopped at the end.

Every attempt to send a message carries its own token (Subject and Message-ID), so each
Maildir file names the attempt it came from. Printed, one line:

    scenario=S sent=N acked=A delivered_unique=D duplicates=X lost=L reported_lost=R ...

sent: attempts whose data was sent (end of data reached the server); acked: 250 replies;
delivered_unique: distinct tokens in the Maildir; duplicates: Maildir files beyond the first
for a token; lost: acked tokens never delivered once delivery has finished; reported_lost:
queue ids the server named as lost (`recovery` / `damaged` log lines, `postern queue
recovery`). Extra fields: messages (logical messages the clients had to send; a refused or
unanswered attempt is sent again under a new token), refused (4xx/5xx replies at MAIL, RCPT
or end of data), no_reply (connection lost after the data, before a reply: such a message
may be delivered though never acked), unacked_delivered (delivered tokens that were never
acked), gave_up (messages never acked within the time bound), delivered_unlogged (queue
ids found in the Maildir's Received fields with no `delivered` line in any log), then the
scenario's own: killed_at_acked; filled_at_acked, fill_took_s, acked_while_full and
delivered_while_full (after the filler was written, before it was deleted),
refused_while_full, accepting_again_after_s (from deleting the filler to the next 250);
cut_bytes and journal_bytes (the written part of the journal file, which is preallocated).

Exit status 0 when the scenario's expectation holds (lost=0; for diskfull also
duplicates=0; for journalcut, every lost message is among those reported), 1 otherwise.
Standard library only; loopback only (127.0.0.1).
"""

import argparse
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time

HOST = "127.0.0.1"
SENDER = "bench@sender.test"
RCPT = "u@example.test"
TOKEN_RE = re.compile(rb"^Subject: fault (\S+)", re.M)
QID_RE = re.compile(rb"^\s+by \S+ \(postern\) with \S+ id (\S+)", re.M)
QUEUED_RE = re.compile(r"queued as (\S+)")


def log(msg):
    print(f"  [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Server:
    """The postern process of one scenario: started, killed and restarted on one DIR."""

    def __init__(self, binary, cdir, port, logbase):
        self.binary, self.cdir, self.port, self.logbase = binary, cdir, port, logbase
        self.proc = None
        self.logs = []

    def start(self, paused=False, wait=30.0):
        env = dict(os.environ)
        env.pop("POSTERN_DELIVERY_PAUSED", None)
        if paused:
            env["POSTERN_DELIVERY_PAUSED"] = "1"
        path = f"{self.logbase}-{len(self.logs) + 1}.log"
        self.logs.append(path)
        out = open(path, "wb")
        self.proc = subprocess.Popen(
            [self.binary, "-C", self.cdir, "serve"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)
        out.close()
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"postern exited with {self.proc.returncode}; see {path}:\n"
                                 + open(path, errors="replace").read()[-3000:])
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                log(f"postern pid {self.proc.pid} listens on {HOST}:{self.port} (log {path})")
                return
            except OSError:
                time.sleep(0.05)
        self.kill9()
        raise SystemExit(f"postern did not listen on {HOST}:{self.port} within {wait} s")

    def kill9(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
            log(f"killed postern pid {self.proc.pid} with SIGKILL")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill9()

    def log_text(self):
        text = ""
        for p in self.logs:
            with open(p, errors="replace") as f:
                text += f.read()
        return text


class Load:
    """Client threads sending their share of messages; every attempt has its own token."""

    def __init__(self, scen, port, threads, messages, size, deadline_s, retry_pause):
        self.scen, self.port, self.threads = scen, port, threads
        self.messages, self.size = messages, size
        self.deadline = time.monotonic() + deadline_s
        self.retry_pause = retry_pause
        self.lock = threading.Lock()
        self.sent = set()  # tokens whose data was sent
        self.acked = {}  # token -> queue id
        self.refused = 0
        self.refusals = {}  # reply -> count
        self.no_reply = set()
        self.gave_up = 0
        self.last_ack = 0.0
        self.stop = threading.Event()

    def body(self, token):
        head = (f"From: <{SENDER}>\r\nTo: <{RCPT}>\r\nSubject: fault {token}\r\n"
                f"Message-ID: <{token}@faults.test>\r\nDate: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}\r\n\r\n")
        line = (token + " ").ljust(76, "x") + "\r\n"
        return (head + line * max(1, self.size // len(line))).encode()

    def refuse(self, code, msg):
        key = f"{code} {msg.decode(errors='replace')[:40]}"
        with self.lock:
            self.refused += 1
            self.refusals[key] = self.refusals.get(key, 0) + 1

    def worker(self, k, share):
        conn = None
        for seq in range(share):
            attempt = 0
            while True:
                if time.monotonic() > self.deadline or self.stop.is_set() or attempt >= 2000:
                    with self.lock:
                        self.gave_up += 1
                    break
                attempt += 1
                token = f"{self.scen}-{k:02d}-{seq:05d}-{attempt}"
                data_sent = False
                try:
                    if conn is None:
                        conn = smtplib.SMTP(HOST, self.port, local_hostname="client.test", timeout=30)
                        conn.ehlo()
                    code, msg = conn.mail(SENDER)
                    if code == 250:
                        code, msg = conn.rcpt(RCPT)
                    if code == 250:
                        code, msg = conn.docmd("DATA")
                    if code == 354:
                        data = smtplib._quote_periods(self.body(token)) + b"\r\n.\r\n"
                        with self.lock:
                            self.sent.add(token)
                        data_sent = True
                        conn.send(data)
                        code, msg = conn.getreply()
                    if code == 250:
                        m = QUEUED_RE.search(msg.decode(errors="replace"))
                        with self.lock:
                            self.acked[token] = m.group(1) if m else "?"
                            self.last_ack = time.monotonic()
                        break
                    self.refuse(code, msg)
                    if code == 421:
                        raise smtplib.SMTPServerDisconnected("421")
                    conn.rset()
                    time.sleep(self.retry_pause)
                except (OSError, smtplib.SMTPException):
                    if data_sent:
                        with self.lock:
                            self.no_reply.add(token)
                    if conn is not None:
                        try:
                            conn.close()
                        except Exception:
                            pass
                    conn = None
                    time.sleep(0.1)
        if conn is not None:
            try:
                conn.quit()
            except Exception:
                pass

    def run(self, watcher=None):
        shares = [self.messages // self.threads + (1 if i < self.messages % self.threads else 0)
                  for i in range(self.threads)]
        ts = [threading.Thread(target=self.worker, args=(i, s), daemon=True)
              for i, s in enumerate(shares)]
        for t in ts:
            t.start()
        if watcher:
            watcher()
        for t in ts:
            t.join(max(1.0, self.deadline - time.monotonic() + 60))

    def acked_count(self):
        with self.lock:
            return len(self.acked)


DELIVERED_IDS = set()  # queue ids seen in the Maildir (Received: ... id X), by maildir_tokens


def maildir_tokens(cdir):
    """token -> number of Maildir files carrying it (new/ and cur/). Also notes each file's
    queue id (from our Received field) in DELIVERED_IDS."""
    counts = {}
    base = os.path.join(cdir, "mail", "example.test", "u")
    for sub in ("new", "cur"):
        d = os.path.join(base, sub)
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            continue
        for n in names:
            try:
                with open(os.path.join(d, n), "rb") as f:
                    head = f.read(4096)
            except FileNotFoundError:
                continue
            q = QID_RE.search(head)
            if q:
                DELIVERED_IDS.add(q.group(1).decode())
            m = TOKEN_RE.search(head)
            if m:
                t = m.group(1).decode()
                counts[t] = counts.get(t, 0) + 1
    return counts


def maildir_files(cdir):
    base = os.path.join(cdir, "mail", "example.test", "u")
    n = 0
    for sub in ("new", "cur"):
        try:
            n += len(os.listdir(os.path.join(base, sub)))
        except FileNotFoundError:
            pass
    return n


def queue_pending(text, lost, cdir):
    """Queue ids the logs show queued and never removed, named lost nor found in the
    Maildir (a crash can cut the log lines of a delivery that was recorded)."""
    queued = set(re.findall(r" queued id=(\S+)", text))
    removed = set(re.findall(r" removed id=(\S+)", text))
    pending = queued - removed - set(lost)
    if pending:
        maildir_tokens(cdir)
        pending -= DELIVERED_IDS
    return pending


def wait_delivered(server, cdir, acked, lost_ids=(), quiet=10.0, cap=120.0):
    """Waits until every queued id was removed (and 2 s passed without a new file), or no
    new Maildir file came for `quiet` s, at most `cap` s."""
    start = time.monotonic()
    last_n, last_change = -1, time.monotonic()
    while True:
        n = maildir_files(cdir)
        now = time.monotonic()
        if n != last_n:
            last_n, last_change = n, now
        pending = queue_pending(server.log_text(), lost_ids, cdir)
        if not pending and now - last_change >= 2.0:
            why = "queue empty (by the log)"
            break
        if now - last_change >= quiet:
            why = f"no new file for {quiet:.0f} s ({len(pending)} ids queued and never removed)"
            break
        if now - start >= cap:
            why = f"time bound of {cap:.0f} s reached ({len(pending)} ids still queued)"
            break
        time.sleep(0.5)
    log(f"delivery wait over after {time.monotonic() - start:.1f} s: {why}")
    return why


def report(scen, load, counts, text, reported=(), extra=""):
    acked = load.acked
    # Delivered (a Maildir file names the id) but no `delivered` line in any log.
    unlogged = sorted(DELIVERED_IDS - set(re.findall(r" delivered id=(\S+)", text)))
    extra = f" delivered_unlogged={len(unlogged)}" + extra
    if unlogged:
        log(f"delivered without a 'delivered' log line: {', '.join(unlogged[:10])}"
            + (" ..." if len(unlogged) > 10 else ""))
        for i in unlogged[:2]:
            for l in text.splitlines():
                if i in l:
                    log(f"  {l[:240]}")
    delivered = set(counts)
    dups = sum(c - 1 for c in counts.values())
    lost = [t for t in acked if t not in delivered]
    unacked_delivered = [t for t in delivered if t not in acked]
    line = (f"scenario={scen} sent={len(load.sent)} acked={len(acked)} "
            f"delivered_unique={len(delivered)} duplicates={dups} lost={len(lost)} "
            f"reported_lost={len(reported)} messages={load.messages} refused={load.refused} "
            f"no_reply={len(load.no_reply)} unacked_delivered={len(unacked_delivered)} "
            f"gave_up={load.gave_up}{extra}")
    print(line, flush=True)
    if load.refusals:
        log("refusals: " + "; ".join(f"{k!r} x{v}" for k, v in sorted(load.refusals.items())))
    for t in lost[:20]:
        log(f"LOST: token {t} queue id {acked[t]}")
    twice = [(t, c) for t, c in counts.items() if c > 1]
    for t, c in twice[:10]:
        log(f"duplicate: token {t} delivered {c} times (queue id {acked.get(t, '-')})")
    if len(twice) > 10:
        log(f"... and {len(twice) - 10} more tokens delivered more than once")
    strange = [t for t in unacked_delivered if t not in load.sent]
    for t in strange[:20]:
        log(f"STRANGE: token {t} delivered but never sent")
    return lost, dups


def scenario_kill9(a, server):
    server.start()
    load = Load("kill9", a.port, a.threads, a.messages, a.size, a.deadline, 0.2)
    killed = {}

    def watcher():
        deadline = time.monotonic() + a.deadline
        while load.acked_count() < a.messages // 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        killed["at"] = load.acked_count()
        server.kill9()
        time.sleep(a.restart_delay)
        server.start()

    load.run(watcher)
    log(f"clients done: acked {len(load.acked)}; killed at {killed.get('at')} acked")
    wait_delivered(server, a.dir, load.acked)
    counts = maildir_tokens(a.dir)
    server.stop()
    lost, dups = report("kill9", load, counts, server.log_text(), extra=f" killed_at_acked={killed.get('at')}")
    return not lost


def fill(path, limit_bytes):
    """Writes `path` until the file system is full (ENOSPC) or `limit_bytes`; bytes written.
    Unbuffered writes, smaller and smaller at the end, so that the disk is really full."""
    block = b"\x55" * (256 << 10)
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (len(block), 64 << 10, 4096, 512):
            for _ in range(1 << 20):
                if written >= limit_bytes:
                    break
                try:
                    n = os.write(fd, block[:size])
                except OSError:
                    break
                written += n
                if n < size:
                    break
    finally:
        os.close(fd)
    return written


def scenario_diskfull(a, server):
    server.start()
    load = Load("diskfull", a.port, a.threads, a.messages, a.size, a.deadline, 0.2)
    filler = os.path.join(a.dir, "filler")
    info = {}

    def watcher():
        deadline = time.monotonic() + a.deadline
        while load.acked_count() < a.messages // 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        info["filled_at_acked"] = load.acked_count()
        start = time.monotonic()
        n = fill(filler, 1 << 34)
        full_acked, full_files = load.acked_count(), maildir_files(a.dir)
        info["fill_took_s"] = round(time.monotonic() - start, 3)
        st = os.statvfs(a.dir)
        log(f"filler: {n >> 10} KiB written, {st.f_bavail * st.f_frsize} bytes left; "
            f"holding it {a.full_secs} s")
        refused0 = load.refused
        time.sleep(a.full_secs)
        info["acked_while_full"] = load.acked_count() - full_acked
        info["delivered_while_full"] = maildir_files(a.dir) - full_files
        info["refused_while_full"] = load.refused - refused0
        os.remove(filler)
        freed = time.monotonic()
        log("filler removed")
        acked0 = load.acked_count()
        while load.acked_count() == acked0 and time.monotonic() < freed + 60:
            time.sleep(0.05)
        info["accepting_again_after_s"] = (
            round(time.monotonic() - freed, 2) if load.acked_count() > acked0 else "never")

    load.run(watcher)
    if os.path.exists(filler):
        os.remove(filler)
    log(f"clients done: acked {len(load.acked)}; {info}")
    wait_delivered(server, a.dir, load.acked)
    counts = maildir_tokens(a.dir)
    server.stop()
    extra = "".join(f" {k}={v}" for k, v in info.items())
    lost, dups = report("diskfull", load, counts, server.log_text(), extra=extra)
    return not lost and not dups


def newest_journal(qdir):
    jnl = [n for n in os.listdir(qdir) if re.fullmatch(r"\d+\.jnl", n)]
    if not jnl:
        raise SystemExit(f"no <n>.jnl file in {qdir}: {os.listdir(qdir)}")
    return os.path.join(qdir, max(jnl, key=lambda n: int(n.split(".")[0])))


def scenario_journalcut(a, server):
    server.start(paused=True)
    load = Load("journalcut", a.port, a.threads, a.messages, a.size, a.deadline, 0.2)
    load.run()
    log(f"queued {len(load.acked)} with delivery paused")
    server.kill9()
    qdir = os.path.join(a.dir, "queue")
    path = newest_journal(qdir)
    # The journal file is preallocated (64 MiB, sparse): its written part ends at the last
    # byte that is not zero. The cut takes the end of that part.
    with open(path, "rb") as f:
        size = len(f.read().rstrip(b"\0"))
    cut = min(size, a.cut_bytes) if a.cut_bytes else size // a.cut_fraction
    os.truncate(path, size - cut)
    log(f"cut the last {cut} of {size} written bytes off {path} "
        f"(the file now ends there, at {size - cut})")
    server.start(paused=False)
    text_lost = []
    time.sleep(1)
    text = server.log_text()
    for m in re.finditer(r" recovery .*?lost_ids=(\S+)", text):
        if m.group(1) != "-":
            text_lost += m.group(1).split(",")
    wait_delivered(server, a.dir, load.acked, lost_ids=text_lost)
    counts = maildir_tokens(a.dir)
    text = server.log_text()
    rec_lines = [l for l in text.splitlines() if " recovery " in l]
    damaged = set(re.findall(r" damaged id=(\S+)", text))
    log_lost = set()
    for l in rec_lines:
        m = re.search(r"lost_ids=(\S+)", l)
        if m and m.group(1) != "-":
            log_lost.update(m.group(1).split(","))
    listing = subprocess.run([a.bin, "-C", a.dir, "queue", "recovery"],
                             capture_output=True, text=True, timeout=60)
    cli_lost = set(re.findall(r"^\s*lost ([0-9A-Za-z]+)", listing.stdout, re.M))
    reported = log_lost | damaged | cli_lost
    server.stop()
    for l in rec_lines:
        log("log: " + l)
    shown = [l for l in listing.stdout.splitlines() if not re.match(r"\s*lost ", l)]
    log(f"postern queue recovery (exit {listing.returncode}), without its {len(cli_lost)} "
        f"'lost ID' lines:\n" + "\n".join(shown)
        + (("\n" + listing.stderr.rstrip()) if listing.stderr.strip() else ""))
    if not (log_lost == damaged == cli_lost):
        log(f"the reports differ: recovery line {len(log_lost)}, damaged lines {len(damaged)}, "
            f"queue recovery {len(cli_lost)}")
    lost, dups = report("journalcut", load, counts, text, reported,
                        extra=f" cut_bytes={cut} journal_bytes={size}")
    unnamed = [t for t in lost if load.acked[t] not in reported]
    for t in unnamed:
        log(f"LOST AND NOT NAMED: token {t} queue id {load.acked[t]}")
    false_alarm = [i for i in reported
                   if any(load.acked[t] == i for t in counts if t in load.acked)]
    if false_alarm:
        log(f"named lost but delivered: {len(false_alarm)} ({', '.join(sorted(false_alarm)[:10])})")
    return not unnamed and len(lost) <= len(reported)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("scenario", choices=["kill9", "diskfull", "journalcut"])
    p.add_argument("--bin", required=True)
    p.add_argument("--dir", required=True, help="configuration directory (data_dir = .)")
    p.add_argument("--port", type=int, default=2525)
    p.add_argument("--threads", type=int, default=20)
    p.add_argument("--messages", type=int, default=3000)
    p.add_argument("--size", type=int, default=2000, help="body bytes per message")
    p.add_argument("--deadline", type=float, default=180.0,
                   help="seconds the clients may take for their share")
    p.add_argument("--restart-delay", type=float, default=1.0)
    p.add_argument("--full-secs", type=float, default=5.0)
    p.add_argument("--cut-fraction", type=int, default=4,
                   help="journalcut: cut 1/N of the newest journal file")
    p.add_argument("--cut-bytes", type=int, default=0, help="journalcut: cut this many bytes instead")
    a = p.parse_args()
    a.dir = os.path.abspath(a.dir)
    server = Server(a.bin, a.dir, a.port, os.path.join(os.path.dirname(a.dir), a.scenario))
    try:
        ok = {"kill9": scenario_kill9, "diskfull": scenario_diskfull,
              "journalcut": scenario_journalcut}[a.scenario](a, server)
    finally:
        server.stop()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
