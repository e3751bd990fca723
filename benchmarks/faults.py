"""Reliability under faults: nothing lost, nothing stored twice, and poison that wedges nothing.

Everything on loopback, as separate processes: a private mosquitto (started
here on a free port, persistence on, its files in the temp dir), ``santi run
--replay`` on the example store fed by a simulated crowd (``agent.status``
every second keeps events flowing even between shoppers; the agent is
restarted whenever its recording ends), and ``santi hq run`` into a fresh
SQLite file (``--db postgres``: a fresh schema in the local PostgreSQL).

Faults. ``--cycles`` times (default 100), after 0.5-2 s of events flowing,
one of: ``kill -9`` of the agent (back after 0.2-2 s), ``kill -9`` of HQ
(back after 0.2-3 s), a clean broker restart (SIGTERM, down 1-10 s) or an
unclean one (SIGKILL, down 1-10 s), drawn with weights 3:3:2:2 from a seeded
generator. Then the agent is stopped with SIGTERM, ``santi buffer drain``
sends what is left (until HQ has acknowledged everything or
``--drain-timeout``), and HQ gets up to 30 s to store what it received.

Accounting. The outbox assigns every event a seq, gap-free from 1 within its
epoch, so "generated" is every (epoch, seq) up to each epoch's ``last_seq``
(read from the outbox files, the current one and any moved aside), less what
the bounds evicted (the benchmark's bounds are large: nothing should be).
HQ's ``events`` table is read for the agent's (epoch, seq) pairs: stored
once, lost (generated, never stored) and duplicated (one (epoch, seq) stored
under two event ids). Any lost or duplicated event makes the exit code 1.

Poison. Each message of issue 15's list, sent on its own: to a fresh HQ
(fresh database, fresh process) the HQ cases, to the agent's node ingest
(``NodesSource``, in this process, on the same broker) the node cases; then
100 valid messages, and the row says whether all 100 were stored (HQ) or
accepted (node path), and whether the receiver was still alive. Some of
these fail until the poison fixes are merged; the table says so honestly.

Runtime: about 9-10 minutes with the defaults on a quiet 2-core machine.
Run: ``.venv/bin/python benchmarks/faults.py [--cycles 100] [--seed 1]
[--db sqlite|postgres] [--drain-timeout 120] [--ack hq|broker] [--skip-poison] [--json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E402
from rich.table import Table  # noqa: E402

from agent.config import load_site  # noqa: E402
from agent.events import SectorEntered, VisitEnded, utc_from_epoch, uuid7  # noqa: E402
from agent.localbroker import Broker  # noqa: E402
from agent.mqttclient import BrokerConfig  # noqa: E402
from agent.observations import Observation  # noqa: E402
from agent.privacy import Pseudonymizer  # noqa: E402
from agent.sources.base import Record  # noqa: E402
from agent.sources.node_ingest import NodeIngest, encode_batch, santi_topic  # noqa: E402
from agent.sources.node_subscriber import NodesSource  # noqa: E402
from simulator.run import SimConfig, simulate  # noqa: E402

EXAMPLE = ROOT / "examples" / "fishmonger.toml"
STORE, AGENT = "fishmonger-01", "pi-backoffice"
FAULTS = {"agent kill -9": 3, "hq kill -9": 3, "broker SIGTERM restart": 2, "broker SIGKILL restart": 2}
VALID = 100
"""Valid messages after each poison one."""
POISON_WAIT_S = 15.0
POISON_SEQ = VALID + 1
"""The seq of a poison event that is not about seq: clear of the valid ones (1..VALID)."""
HQ_SETTLE_S = 30.0
REPLAY_SPEED = 4.0
"""The crowd replayed this much faster than real time: more events per second between faults."""
PG_SERVER = "postgresql://{user}@127.0.0.1:5432/test"

err = Console(stderr=True)


def santi() -> str:
    script = Path(sys.executable).with_name("santi")
    if not script.is_file():
        raise SystemExit(f"no santi console script beside {sys.executable}: pip install -e . first")
    return str(script)


# -- the parts -----------------------------------------------------------------------------------


def write_site(workdir: Path, port: int, ack: str) -> Path:
    """The example store, uplink on our mosquitto with ``ack``, state in the temp dir, status every second."""
    text = EXAMPLE.read_text(encoding="utf-8")
    text = re.sub(r'(\[uplink\]\nhost = )"[^"]*"\nport = \d+', f'\\1"127.0.0.1"\nport = {port}\nack = "{ack}"', text)
    text = text.replace('state_dir = "/var/lib/santi"', f'state_dir = "{workdir / "state"}"')
    text = text.replace("status_interval_s = 60", "status_interval_s = 1")
    path = workdir / "site.toml"
    path.write_text(text, encoding="utf-8")
    return path


def recording(workdir: Path, shoppers: int, minutes: float, seed: int) -> Path:
    site = load_site(EXAMPLE)
    out = workdir / "recording"
    simulate(site, SimConfig(shoppers=shoppers, minutes=minutes, seed=seed), out)
    return out / "observations.jsonl"


class Child:
    """One ``santi`` process, restartable, its output appended to a log file."""

    def __init__(self, name: str, command: list[str], log: Path) -> None:
        self.name = name
        self.command = command
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.unexpected_exits: list[int] = []

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                         env={**os.environ, "NOTIFY_SOCKET": ""})
        self.starts += 1

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = 60.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def tail(self, n: int = 1500) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


class Database:
    """Where HQ writes: a fresh SQLite file, or a fresh PostgreSQL schema (dropped at the end)."""

    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind = kind
        self.workdir = workdir
        self.server: str | None = None
        self.schemas: list[str] = []
        if kind == "postgres":
            self.server = self._pg_server()

    @staticmethod
    def _pg_server() -> str:
        import psycopg  # noqa: PLC0415 - only for --db postgres

        for user in ("postgres", "root"):
            with contextlib.suppress(psycopg.Error), psycopg.connect(PG_SERVER.format(user=user), connect_timeout=3):
                return PG_SERVER.format(user=user)
        raise SystemExit("no PostgreSQL at 127.0.0.1:5432 (database test, user postgres or root)")

    def fresh(self) -> str:
        name = f"faults_{uuid.uuid4().hex[:10]}"
        if self.server is None:
            return f"sqlite:///{self.workdir / name}.sqlite"
        self.schemas.append(name)
        return f"{self.server}?schema={name}"

    def query(self, url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` in the database at ``url``; [] while HQ has not created its tables yet."""
        if self.server is None:
            path = Path(url.removeprefix("sqlite:///"))
            if not path.exists():
                return []
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
            try:
                return db.execute(sql, params).fetchall()
            except sqlite3.OperationalError:
                return []
            finally:
                db.close()
        import psycopg  # noqa: PLC0415

        schema = url.rsplit("schema=", 1)[1]
        with psycopg.connect(self.server) as conn:
            conn.execute(f'SET search_path TO "{schema}"')
            try:
                return list(conn.execute(sql.replace("?", "%s"), params).fetchall())
            except psycopg.errors.UndefinedTable:
                return []

    def cleanup(self) -> None:
        """Drop every schema this run made, in one statement."""
        if self.server is None or not self.schemas:
            return
        import psycopg  # noqa: PLC0415

        names = ", ".join(f'"{name}"' for name in self.schemas)
        with psycopg.connect(self.server, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {names} CASCADE")


def hq_command(port: int, url: str, name: str) -> list[str]:
    """``santi hq run`` as its own client and shared-subscription group: the broker would share a group's
    messages with the persistent sessions of earlier HQs of the same group."""
    return [santi(), "hq", "run", "--broker", f"mqtt://127.0.0.1:{port}", "--db", url, "--client-id", name,
            "--group", name, "--report-s", "1"]


# -- what was generated, what HQ stored ----------------------------------------------------------


def generated(state_dir: Path) -> tuple[dict[str, int], int, set[tuple[str, int]]]:
    """Each epoch's last seq, from every outbox file there (moved-aside ones too), the evictions, what is left."""
    epochs: dict[str, int] = {}
    evicted = 0
    left: set[tuple[str, int]] = set()
    for path in sorted(p for p in state_dir.glob("outbox.sqlite*") if p.suffix not in (".spare", ".tmp")):
        if path.name.endswith(("-wal", "-shm")):
            continue
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            epoch, last_seq, evicted_total = db.execute(
                "SELECT epoch, last_seq, evicted_total FROM state WHERE id = 1").fetchone()
            left.update((str(epoch), int(seq)) for (seq,) in db.execute("SELECT seq FROM outbox"))
        except sqlite3.Error as exc:
            err.print(f"[yellow]{path.name}: not readable ({exc}); its events are not counted[/]")
            continue
        finally:
            db.close()
        epochs[str(epoch)] = max(epochs.get(str(epoch), 0), int(last_seq))
        evicted += int(evicted_total)
    return epochs, evicted, left


def stored(database: Database, url: str) -> Counter[tuple[str, int]]:
    """How many rows HQ holds for each (epoch, seq) of the agent."""
    counts: Counter[tuple[str, int]] = Counter()
    for seq, payload in database.query(url, "SELECT seq, payload FROM events WHERE agent_id = ?", (AGENT,)):
        counts[(str(json.loads(payload).get("epoch")), int(seq))] += 1
    return counts


@dataclass
class Accounting:
    generated: int
    stored_once: int
    lost: int
    """Generated and not stored at HQ when the run ended."""
    lost_still_in_outbox: int
    """Of those, still in the agent's outbox (undelivered, not gone: a later drain sends them)."""
    duplicated: int
    unexpected: int
    evicted: int
    epochs: int
    lost_examples: list[str] = field(default_factory=list)


def account(epochs: dict[str, int], evicted: int, left: set[tuple[str, int]],
            counts: Counter[tuple[str, int]]) -> Accounting:
    wanted = _keys(epochs)
    lost = sorted(wanted - set(counts))
    return Accounting(
        generated=len(wanted),
        stored_once=sum(1 for key in wanted if counts.get(key) == 1),
        lost=len(lost),
        lost_still_in_outbox=len(left.intersection(lost)),
        duplicated=sum(1 for key in wanted if counts.get(key, 0) > 1),
        unexpected=sum(1 for key in counts if key not in wanted),
        evicted=evicted,
        epochs=len(epochs),
        lost_examples=[f"{epoch}:{seq}" for epoch, seq in lost[:10]],
    )


# -- the fault run -------------------------------------------------------------------------------


@dataclass
class FaultRun:
    cycles: dict[str, int]
    accounting: Accounting
    agent_starts: int
    hq_starts: int
    drain: dict[str, Any]
    seconds: float
    unexpected_exits: dict[str, list[int]]


class Supervisor:
    """Keeps the agent and HQ running between faults (the recording ends; a crash is noted and restarted)."""

    def __init__(self, agent: Child, hq: Child) -> None:
        self.agent = agent
        self.children = [agent, hq]

    def release(self, child: Child) -> None:
        """Stop restarting ``child`` (the agent once it is stopped for the final drain)."""
        self.children.remove(child)

    def pause(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            for child in self.children:
                code = child.exited()
                if code is not None:
                    if not (child is self.agent and code == 0):  # 0: the recording ended
                        child.unexpected_exits.append(code)
                    child.start()
            time.sleep(0.1)


def fault_run(args: argparse.Namespace, workdir: Path, database: Database, obs: Path) -> FaultRun:
    rng = random.Random(args.seed)
    broker = Broker(workdir / "broker")
    broker.workdir.mkdir()
    broker.start()
    site = write_site(workdir, broker.port, args.ack)
    url = database.fresh()
    agent = Child("agent", [santi(), "run", "--config", str(site), "--replay", str(obs), "--speed", str(REPLAY_SPEED)],
                  workdir / "agent.log")
    hq = Child("hq", hq_command(broker.port, url, "faults-hq"), workdir / "hq.log")
    supervisor = Supervisor(agent, hq)
    cycles: Counter[str] = Counter()
    started = time.monotonic()
    try:
        hq.start()
        agent.start()
        supervisor.pause(3.0)
        names, weights = list(FAULTS), list(FAULTS.values())
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=err, transient=True, disable=args.json and not sys.stderr.isatty()) as progress:
            task = progress.add_task("faults", total=args.cycles)
            for _ in range(args.cycles):
                kind = rng.choices(names, weights)[0]
                progress.update(task, description=f"faults: {kind}")
                supervisor.pause(rng.uniform(0.5, 2.0))
                if kind == "agent kill -9":
                    agent.kill()
                    time.sleep(rng.uniform(0.2, 2.0))
                    agent.start()
                elif kind == "hq kill -9":
                    hq.kill()
                    time.sleep(rng.uniform(0.2, 3.0))
                    hq.start()
                else:
                    broker.stop(kill=kind == "broker SIGKILL restart")
                    supervisor.pause(rng.uniform(1.0, 10.0))
                    broker.start()
                cycles[kind] += 1
                progress.advance(task)
            supervisor.pause(2.0)
        err.print(f"faults done in {time.monotonic() - started:.0f} s; stopping the agent, draining the outbox")
        supervisor.release(agent)
        code = agent.stop()
        if code not in (0, None):
            agent.unexpected_exits.append(code)
        drain = drain_outbox(site, args.drain_timeout)
        err.print(f"drain: {drain.get('stopped', drain)}; waiting up to {HQ_SETTLE_S:g} s for HQ to store the rest")
        epochs, evicted, _ = generated(workdir / "state")
        want = sum(epochs.values())
        deadline = time.monotonic() + HQ_SETTLE_S
        while time.monotonic() < deadline and len(stored(database, url).keys() & _keys(epochs)) < want:
            supervisor.pause(0.5)
        counts = stored(database, url)
        left = generated(workdir / "state")[2]
    finally:
        agent.kill()
        hq.stop()
        broker.stop(kill=True)
    return FaultRun(cycles=dict(cycles), accounting=account(epochs, evicted, left, counts), agent_starts=agent.starts,
                    hq_starts=hq.starts, drain=drain, seconds=time.monotonic() - started,
                    unexpected_exits={"agent": agent.unexpected_exits, "hq": hq.unexpected_exits})


def _keys(epochs: dict[str, int]) -> set[tuple[str, int]]:
    return {(epoch, seq) for epoch, last in epochs.items() for seq in range(1, last + 1)}


def drain_outbox(site: Path, timeout: float) -> dict[str, Any]:
    """``santi buffer drain``: the agent's own uplink on the stopped agent's outbox, until HQ acknowledged all."""
    result = subprocess.run([santi(), "buffer", "drain", str(site), "--json", "--timeout", f"{timeout:g}"],
                            capture_output=True, text=True, timeout=timeout + 60, check=False, cwd=ROOT)
    try:
        outcome: dict[str, Any] = json.loads(result.stdout)
    except ValueError:
        return {"stopped": f"santi buffer drain failed ({result.returncode}): {result.stderr.strip()[-300:]}"}
    return outcome


# -- poison --------------------------------------------------------------------------------------


def _event(agent: str, seq: int, **update: Any) -> dict[str, Any]:
    ts = time.time()
    event = SectorEntered(event_id=uuid7(int(ts * 1000)), store_id=STORE, agent_id=agent, ts=utc_from_epoch(ts),
                          subject=f"{random.getrandbits(64):016x}", visit_id=f"v{seq}", sector_id="fish",
                          probability=0.9)
    data: dict[str, Any] = json.loads(event.model_copy(update={"seq": seq, "epoch": "poison"}).to_json())
    data.update(update)
    return data


def _visit_ended(agent: str, **update: Any) -> dict[str, Any]:
    ts = time.time()
    event = VisitEnded(event_id=uuid7(int(ts * 1000)), store_id=STORE, agent_id=agent, ts=utc_from_epoch(ts),
                       subject=f"{random.getrandbits(64):016x}", visit_id="v1", duration_s=60.0,
                       dwell_s={"fish": 60.0}, reason="exit")
    data: dict[str, Any] = json.loads(event.model_copy(update={"seq": POISON_SEQ, "epoch": "poison"}).to_json())
    data.update(update)
    return data


def _topic(data: dict[str, Any]) -> str:
    return f"santi/v1/{data['store_id']}/{data['agent_id']}/events/{data['type']}"


def hq_poison(agent: str) -> dict[str, list[tuple[str, bytes]]]:
    """Issue 15's poison for HQ, each as the messages to send, for an agent of its own."""
    def one(data: dict[str, Any]) -> list[tuple[str, bytes]]:
        return [(_topic(data), json.dumps(data).encode())]

    garbage_topic = f"santi/v1/{STORE}/{agent}/events/sector.entered"
    rng = random.Random(7)
    return {
        "seq = 2^70": one(_event(agent, 2**70)),
        "seq = 2^63": one(_event(agent, 2**63)),
        "visit_id of 10,000 chars": one(_event(agent, POISON_SEQ, visit_id="v" * 10_000)),
        "visit_id of 1 MB": one(_event(agent, POISON_SEQ, visit_id="v" * 1_000_000)),
        "visit.ended with 200k dwell keys": one(_visit_ended(agent, dwell_s={f"s{i}": 1.0 for i in range(200_000)})),
        "duration_s Infinity": one(_visit_ended(agent, duration_s=float("inf"))),
        "2,000 garbage messages": [(garbage_topic, rng.randbytes(rng.randint(1, 2000))) for _ in range(2000)],
    }


def node_poison() -> dict[str, tuple[str, bytes]]:
    nested = b"[" * 50_000 + b"]" * 50_000
    huge = b'{"rssi": 1' + b"0" * 394 + b"}"
    return {
        "100 KB nested JSON (ESPresense)": ("espresense/devices/abc/fish", nested),
        "405-byte huge-int rssi (ESPresense)": ("espresense/devices/abc/fish", huge),
        "100 KB nested JSON (Santi node)": (santi_topic(STORE, "greens"), nested),
        "405-byte huge-int rssi (Santi node)": (santi_topic(STORE, "greens"), huge),
    }


@contextlib.contextmanager
def publisher(port: int) -> Iterator[mqtt.Client]:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


def send(client: mqtt.Client, messages: list[tuple[str, bytes]]) -> None:
    infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(30)


def wait(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@dataclass
class PoisonRow:
    path: str
    case: str
    valid_ok: int
    alive: bool
    note: str = ""

    @property
    def passed(self) -> bool:
        return self.valid_ok == VALID and self.alive


def poison_hq_case(case: str, messages: list[tuple[str, bytes]], agent: str, broker: Broker, database: Database,
                   workdir: Path) -> PoisonRow:
    """A fresh HQ; a probe proves it subscribed; the poison; then ``VALID`` events that must all be stored."""
    url = database.fresh()
    hq = Child("hq", hq_command(broker.port, url, f"poison-{agent}"), workdir / f"hq-{agent}.log")
    hq.start()
    count = "SELECT count(*) FROM events WHERE agent_id = ?"
    try:
        with publisher(broker.port) as client:
            probe = _event(f"probe-{agent}", 1)
            deadline = time.monotonic() + 30
            while database.query(url, count, (probe["agent_id"],)) != [(1,)]:  # HQ subscribed and storing
                if time.monotonic() > deadline:
                    return PoisonRow("HQ", case, 0, hq.exited() is None, "HQ never stored a probe: " + hq.tail(200))
                send(client, [(_topic(probe), json.dumps(probe).encode())])
                time.sleep(0.5)
            send(client, messages)
            valid = [_event(agent, seq) for seq in range(1, VALID + 1)]
            send(client, [(_topic(v), json.dumps(v).encode()) for v in valid])
            ids = [v["event_id"] for v in valid]

            def stored_valid() -> int:
                rows = database.query(url, "SELECT event_id FROM events WHERE agent_id = ?", (agent,))
                return len({row[0] for row in rows} & set(ids))

            wait(lambda: stored_valid() == VALID or hq.exited() is not None, POISON_WAIT_S)
            got = stored_valid()
            rows = database.query(url, "SELECT count(*) FROM events WHERE agent_id = ? AND seq > ?", (agent, VALID))
            letters = database.query(url, "SELECT count(*) FROM dead_letters")
        alive = hq.exited() is None
        started = time.monotonic()
        hq.stop(timeout=30)
        notes = [f"poison stored as events: {rows[0][0] if rows else '?'}",
                 f"dead letters: {letters[0][0] if letters else '?'}"]
        if time.monotonic() - started > 5:
            notes.append(f"SIGTERM took {time.monotonic() - started:.0f} s")
        return PoisonRow("HQ", case, got, alive, "; ".join(notes))
    finally:
        hq.kill()


def poison_node_case(case: str, topic: str, payload: bytes, broker: Broker) -> PoisonRow:
    """The agent's node ingest on our broker: the poison, then ``VALID`` ESPresense messages that must be accepted."""
    site = load_site(EXAMPLE)
    ingest = NodeIngest(site.receivers, Pseudonymizer(b"k" * 32, STORE, 86_400.0), STORE)
    source = NodesSource(ingest, BrokerConfig(broker.host, broker.port))
    received: list[Record] = []
    pseudo = Pseudonymizer(b"k" * 32, STORE, 86_400.0)

    async def main() -> tuple[int, bool, str]:
        stop = asyncio.Event()
        task = asyncio.create_task(source.run(received.append, stop))
        try:
            await _until(lambda: source.stats.state == "up", 15)
            with publisher(broker.port) as client:
                send(client, [(topic, payload)])
                await asyncio.sleep(0.5)
                now = time.time()
                valid = []
                for i in range(VALID):
                    if topic.startswith("espresense"):
                        valid.append((topic, json.dumps({"rssi": -60 - i % 20}).encode()))
                    else:
                        obs = Observation(ts=now, receiver_id="x", emitter_id=pseudo.pseudonym("ble", f"e{i}", now),
                                          tech="ble", rssi_dbm=-55.0)
                        valid.append((topic, encode_batch([obs])))
                send(client, valid)
                await _until(lambda: len(received) >= VALID, POISON_WAIT_S)
            # The source's own network thread ("nodes-HOST:PORT"), or paho's in sources that let paho run it.
            alive = any(t.is_alive() and (t.name.startswith("nodes-") or t.name.startswith("paho-mqtt-client-"))
                        for t in threading.enumerate()) and source.stats.state == "up"
            return len(received), alive, source.stats.state
        finally:
            stop.set()
            await asyncio.wait_for(task, 15)

    accepted, alive, state = asyncio.run(main())
    return PoisonRow("node ingest", case, accepted, alive, f"source says {state}; dropped {dict(source.stats.dropped)}")


async def _until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def poison_run(workdir: Path, database: Database, quiet: bool) -> list[PoisonRow]:
    broker = Broker(workdir / "poison-broker")
    broker.workdir.mkdir()
    broker.start()
    rows: list[PoisonRow] = []
    hq_cases = hq_poison("placeholder")
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=err, transient=True, disable=quiet) as progress:
            nodes = node_poison()
            task = progress.add_task("poison", total=len(hq_cases) + len(nodes))
            for n, case in enumerate(hq_cases):
                progress.update(task, description=f"poison, HQ: {case}")
                agent = f"poison-{n}"
                rows.append(poison_hq_case(case, hq_poison(agent)[case], agent, broker, database, workdir))
                progress.advance(task)
            for case, (topic, payload) in nodes.items():
                progress.update(task, description=f"poison, node ingest: {case}")
                try:
                    rows.append(poison_node_case(case, topic, payload, broker))
                except Exception as exc:  # noqa: BLE001 - the benchmark reports a crash as a failed row
                    rows.append(PoisonRow("node ingest", case, 0, False, f"crashed: {exc!r}"[:200]))
                progress.advance(task)
    finally:
        broker.stop(kill=True)
    return rows


# -- output --------------------------------------------------------------------------------------


def table(run: FaultRun | None, poison: list[PoisonRow]) -> list[Table]:
    tables = []
    if run is not None:
        acc = run.accounting
        t = Table("figure", "value", "target", title=f"Faults: {sum(run.cycles.values())} cycles in "
                                                        f"{run.seconds:.0f} s", title_justify="left")
        for kind, n in sorted(run.cycles.items()):
            t.add_row(f"cycles: {kind}", str(n), "")
        t.add_row("events generated (outbox seqs)", f"{acc.generated:,}", "")
        t.add_row("stored once at HQ", f"{acc.stored_once:,}", f"{acc.generated:,}")
        t.add_row("lost (not at HQ at the end)", _mark(acc.lost), "0")
        t.add_row("  of which still in the agent's outbox", f"{acc.lost_still_in_outbox:,}", "0")
        t.add_row("stored twice or more", _mark(acc.duplicated), "0")
        t.add_row("stored, never generated", _mark(acc.unexpected), "0")
        t.add_row("evicted by outbox bounds", f"{acc.evicted:,}", "0")
        t.add_row("outbox epochs", str(acc.epochs), "1")
        t.add_row("agent / HQ starts", f"{run.agent_starts} / {run.hq_starts}", "")
        t.add_row("unexpected exits (agent, HQ)", f"{run.unexpected_exits['agent']} {run.unexpected_exits['hq']}", "")
        t.add_row("final drain", str(run.drain.get("stopped", "?")), "all acknowledged")
        if acc.lost_examples:
            t.add_row("first lost (epoch:seq)", ", ".join(acc.lost_examples), "")
        tables.append(t)
    if poison:
        p = Table("receiver", "poison", f"valid of {VALID} after it", "process / thread alive", "", "note",
                  title="Poison", title_justify="left")
        for row in poison:
            p.add_row(row.path, row.case, str(row.valid_ok), "yes" if row.alive else "[red]no[/]",
                      "[green]ok[/]" if row.passed else "[bold red]FAIL[/]", row.note[:120])
        tables.append(p)
    return tables


def _mark(n: int) -> str:
    return f"[bold red]{n:,}[/]" if n else "0"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--drain-timeout", type=float, default=120.0,
                        help="Seconds `santi buffer drain` waits for HQ to acknowledge everything at the end.")
    parser.add_argument("--shoppers", type=int, default=60, help="Simulated shoppers in the replayed recording.")
    parser.add_argument("--keep", type=Path, default=None, help="Work here and keep the logs and files.")
    parser.add_argument("--ack", choices=["hq", "broker"], default="hq",
                        help="The agent's [uplink] ack: 'broker' shows what deletion at PUBACK loses.")
    parser.add_argument("--skip-poison", action="store_true")
    parser.add_argument("--skip-faults", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="santi-faults-") as tmp:
        workdir = Path(tmp) if args.keep is None else args.keep
        workdir.mkdir(parents=True, exist_ok=True)
        database = Database(args.db, workdir)
        run: FaultRun | None = None
        poison: list[PoisonRow] = []
        try:
            if not args.skip_faults:
                err.print(f"simulating {args.shoppers} shoppers for the replay...")
                obs = recording(workdir, args.shoppers, 3.0, args.seed)
                run = fault_run(args, workdir, database, obs)
            if not args.skip_poison:
                poison = poison_run(workdir, database, args.json and not sys.stderr.isatty())
        finally:
            database.cleanup()
    failed = bool(run is not None and (run.accounting.lost or run.accounting.duplicated))
    if args.json:
        print(json.dumps({
            "faults": None if run is None else {
                "cycles": run.cycles, "seconds": round(run.seconds, 1), "agent_starts": run.agent_starts,
                "hq_starts": run.hq_starts, "unexpected_exits": run.unexpected_exits, "drain": run.drain,
                **run.accounting.__dict__},
            "poison": [{**row.__dict__, "passed": row.passed} for row in poison],
        }, indent=2))
    else:
        for t in table(run, poison):
            Console().print(t)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
