"""``santi nfc test``: tap a card, see what it holds and what Santi would send.

A technician's tool for the till. The reader is driven by the agent's own
``NfcSource`` (same polling, debounce, loyalty format and pseudonymiser), and
the event shown is built by the agent's own ``Locator`` from the tap, so what
is on screen is what the agent would do with that card. The UID is shown only
by its last two bytes; nothing is logged to disk and nothing leaves the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import ndef
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.status import Status

from agent.cli.config_cmd import site_option
from agent.cli.errors import CliError
from agent.config import ConfigError, NfcReaderConfig, SiteConfig, load_site
from agent.errors import SantiError
from agent.events import CardTapped, topic_for, utc_from_epoch
from agent.locator import Locator
from agent.privacy import GENERATED_SECRET, Pseudonymizer, load_secret
from agent.sources.base import Record
from agent.sources.ndef_loyalty import LoyaltyFormat
from agent.sources.nfc import (
    DEBOUNCE_S,
    CardRead,
    Frontend,
    NfcSource,
    describe_open_error,
    open_nfcpy,
)
from agent.text import Table

EXIT_NO_CARD = 1
TICK_S = 0.1
SHOWN_CHARS = 60


class NoCard(SantiError):
    """The wait ran out: nothing wrong with the setup, just no card (exit 1)."""

    exit_code = EXIT_NO_CARD


@dataclass(frozen=True)
class Secret:
    """The pseudonymiser for cards that are not ours, and whether it is the store's own."""

    pseudonymizer: Pseudonymizer
    store: bool
    why_not: str | None = None


def store_secret(site: SiteConfig, state_dir: Path) -> Secret:
    """The agent's pseudonymiser when its secret can be read, else a throwaway one and why.

    Never creates the secret: a test tool must not decide the store's
    pseudonyms before the agent's first start.
    """
    rotation_s = site.privacy.salt_rotation_hours * 3600.0
    privacy = site.privacy
    if privacy.secret_file is None and privacy.secret_env is None and not (state_dir / GENERATED_SECRET).exists():
        why = f"no store secret in {state_dir} yet: the agent creates it on its first start"
    else:
        try:
            return Secret(Pseudonymizer(load_secret(privacy, state_dir), site.store.id, rotation_s), store=True)
        except ConfigError as exc:
            why = str(exc)
    return Secret(Pseudonymizer(os.urandom(32), site.store.id, rotation_s), store=False, why_not=why)


def pick_reader(site: SiteConfig, reader_id: str | None, device: str | None) -> NfcReaderConfig:
    """The reader to test: the one asked for, or the site's only one; ``--device`` replaces its device."""
    readers = site.nfc_readers
    ids = ", ".join(r.id for r in readers)
    if reader_id is not None:
        chosen = next((r for r in readers if r.id == reader_id), None)
        if chosen is None:
            raise CliError(f"{site.path}: no NFC reader {reader_id!r} (nfc_readers: {ids or 'none'})")
    elif not readers:
        raise CliError(f"{site.path}: no [[nfc_readers]] in this site; add one with its device (e.g. usb)")
    elif len(readers) > 1:
        raise CliError(f"{site.path} has {len(readers)} NFC readers; choose one with --reader ({ids})")
    else:
        chosen = readers[0]
    if device is None:
        return chosen
    try:
        return NfcReaderConfig.model_validate({**chosen.model_dump(), "device": device})
    except ValidationError:
        raise CliError(f"--device {device!r}: expected an nfcpy device path such as usb, usb:001:004, "
                       f"tty:USB0:pn532 or udp:127.0.0.1:54321") from None


def _shown(text: str) -> str:
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS - 1] + "…"


def describe_records(octets: bytes) -> list[dict[str, str]]:
    """The records of an NDEF message as a technician reads them, decoded leniently (a broken message gives [])."""
    try:
        records = list(ndef.message_decoder(octets, errors="relax"))
    except (ndef.DecodeError, ValueError, IndexError, struct.error):
        return []
    described: list[dict[str, str]] = []
    for record in records:
        if isinstance(record, ndef.TextRecord):
            described.append({"type": record.type, "value": _shown(str(record.text)),
                              "language": str(record.language)})
        elif isinstance(record, ndef.UriRecord):
            described.append({"type": record.type, "value": _shown(str(record.iri))})
        else:
            described.append({"type": _shown(str(record.type)), "value": f"{len(bytes(record.data))} bytes"})
    return described


def describe_read(read: CardRead, number: int, device: str, locator: Locator, secret: Secret) -> dict[str, Any]:
    """One presented card as ``--json`` prints it: what it holds, whether it is ours, what the agent sends."""
    tap = read.tap
    event: CardTapped | None = None
    if tap is not None and read.delivered:
        event = next(e for e in locator.window(tap.ts, [], [tap]) if isinstance(e, CardTapped))
    return {
        "card": number,
        "reader_id": read.reader_id,
        "device": device,
        "ts": utc_from_epoch(read.ts).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "tag": {"type": read.tag_type, "product": read.product, "uid": read.uid_tail, "uid_bytes": read.uid_bytes},
        "ndef": {"bytes": len(read.ndef), "records": describe_records(read.ndef)},
        "ours": tap is not None and tap.known,
        "loyalty_id": tap.card if tap is not None and tap.known else None,
        "problems": list(read.problems),
        "error": read.error,
        "sent": event is not None,
        "secret": "store" if secret.store else "throwaway",
        "topic": topic_for(event) if event is not None else None,
        "event": event.model_dump(mode="json", by_alias=True) if event is not None else None,
    }


def _verdict(result: dict[str, Any], debounce_s: float) -> list[tuple[str, str]]:
    """The rows that say, in words, what the agent makes of the card."""
    rows: list[tuple[str, str]] = []
    problems, error = result["problems"], result["error"]
    if "read_error" in problems:
        return [("ours?", "[red]unknown: the card could not be read[/]"), ("problem", escape(error or "")),
                ("Santi sends", "nothing (the read error is counted; present the card again)")]
    if result["ours"]:
        rows.append(("ours?", f"[green]yes[/]: loyalty id [bold]{escape(result['loyalty_id'])}[/] (sent as is)"))
    elif "malformed_ndef" in problems:
        rows.append(("ours?", "[red]no: malformed NDEF message[/], tapped by its UID's pseudonym"))
        rows.append(("problem", escape(error or "")))
    else:
        rows.append(("ours?", "[yellow]no[/]: no record carries one of our loyalty ids; tapped by its UID's pseudonym"))
    if "debounced" in problems:
        rows.append(("Santi sends", f"nothing: the same card again within {debounce_s:g} s is not a new tap"))
    else:
        rows.append(("Santi sends", f"{escape(result['event']['type'])} on {escape(result['topic'])}"))
    return rows


def render(result: dict[str, Any], secret: Secret, debounce_s: float) -> Table:
    """One table per presented card."""
    table = Table(title=f"card {result['card']} at reader {escape(result['reader_id'])} ({escape(result['device'])}), "
                        f"{result['ts']}", title_justify="left", show_header=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    tag = result["tag"]
    table.add_row("tag", f"{escape(tag['product'])} ({escape(tag['type'])}), UID {escape(tag['uid'])} "
                         f"({tag['uid_bytes']} bytes)")
    records, size = result["ndef"]["records"], result["ndef"]["bytes"]
    if not size:
        table.add_row("NDEF", "none")
    else:
        table.add_row("NDEF", f"{size} bytes, " + (f"{len(records)} record{'s' if len(records) != 1 else ''}"
                                                   if records else "no record decodes"))
    for index, record in enumerate(records, 1):
        language = f" ({record['language']})" if "language" in record else ""
        table.add_row(f"  record {index}", f"{escape(record['type'])}  {escape(repr(record['value']))}{language}")
    for name, text in _verdict(result, debounce_s):
        table.add_row(name, text)
    event = result["event"]
    if event is not None:
        table.add_row("event", escape(json.dumps(event, indent=2)))
        notes = ["seq is assigned when the agent stores the event"]
        if event["known"]:
            notes.append("with a shopper tracked near the reader, the agent also sends identity.linked "
                         "and the subject becomes the visit's")
        elif not secret.store:
            notes.append(f"card pseudonym made with a throwaway secret, so the agent's will differ: "
                         f"{escape(secret.why_not or '')}")
        table.add_row("", "[dim]" + "; ".join(notes) + "[/]")
    return table


class _Spinner:
    """A transient status line on stderr while waiting, only where a terminal shows it."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._status: Status | None = None

    def show(self, text: str) -> None:
        if not self._console.is_terminal:
            return
        if self._status is None:
            self._status = self._console.status(text)
            self._status.start()
        else:
            self._status.update(text)

    def hide(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


@dataclass
class Outcome:
    """How a session ended: cards seen, the reader's error if it was down when time ran out, or Ctrl-C."""

    cards: int
    reader_error: str | None
    interrupted: bool


async def read_cards(source: NfcSource, reads: asyncio.Queue[CardRead], *, count: int, timeout_s: float,
                     waiting: Callable[[float], None], shown: Callable[[CardRead, int], None]) -> Outcome:
    """Run the reader until ``count`` cards were presented, one wait ran past ``timeout_s``, or Ctrl-C."""
    stop, interrupt = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGINT, interrupt.set)

    def ignore(_: Record) -> None:
        return None

    task = asyncio.create_task(source.run(ignore, stop))
    cards = 0
    reader_error: str | None = None
    try:
        deadline = time.monotonic() + timeout_s
        while cards < count and not interrupt.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                if source.stats.state != "up":
                    reader_error = source.stats.last_error
                break
            waiting(left)
            try:
                read = await asyncio.wait_for(reads.get(), min(TICK_S, left))
            except TimeoutError:
                continue
            cards += 1
            shown(read, cards)
            deadline = time.monotonic() + timeout_s
    finally:
        stop.set()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGINT)
        await task
    return Outcome(cards, reader_error, interrupted=interrupt.is_set() and cards < count)


def _open(reader: NfcReaderConfig, err: Console) -> Frontend:
    """Open the reader once up front, so a missing or busy one is a one-line exit 2, not a retry loop."""
    with contextlib.ExitStack() as stack:
        if err.is_terminal:
            stack.enter_context(err.status(f"opening NFC reader {reader.id} ({reader.device})"))
        try:
            return open_nfcpy(reader.device)
        except (OSError, ValueError) as exc:
            raise CliError(describe_open_error(reader.device, exc)) from None


@click.group("nfc")
def nfc() -> None:
    """NFC readers at the tills: check a reader and the loyalty cards it reads.

    \b
    Example:
      santi nfc test --config /etc/santi/site.toml
    """


@nfc.command("test")
@site_option("site", positional=True)
@click.option("--reader", "reader_id", help="Reader id from nfc_readers (needed when the site has several).")
@click.option("--device", help="Use this nfcpy device instead of the reader's: usb, usb:BUS:DEV, tty:..., "
                               "udp:HOST:PORT.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.5), default=60.0, show_default=True,
              help="Seconds to wait for each card.")
@click.option("--count", type=click.IntRange(min=1), default=1, show_default=True,
              help="Cards to read before exiting.")
@click.option("--state-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Where the store secret lives (pseudonyms of cards that are not ours); overrides agent.state_dir.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per card on stdout.")
def nfc_test(site: Path, reader_id: str | None, device: str | None, timeout_s: float, count: int,
             state_dir: Path | None, as_json: bool) -> None:
    """Wait for a card on a reader; show what it holds and what Santi would send.

    For each card: tag type, the last two bytes of its UID, its NDEF
    records, whether it carries one of our loyalty ids (the site's [nfc]
    format), and the card.tapped event the agent would publish. Stop the
    agent first if it holds the reader (a USB reader has one owner).

    Exit code 0 after --count cards, 1 when no card came within --timeout,
    2 on bad input or a reader that cannot be opened.

    \b
    Example:
      santi nfc test --config /etc/santi/site.toml
      santi nfc test --config examples/fishmonger.toml --reader till-1 --count 3
      santi nfc test --config site.toml --device udp:127.0.0.1:54321 --timeout 10 --json
    """
    config = load_site(site)
    reader = pick_reader(config, reader_id, device)
    secret = store_secret(config, state_dir or config.agent.state_dir)
    loyalty = LoyaltyFormat(config.nfc.text_prefix, tuple(config.nfc.uri_prefixes))
    err = Console(stderr=True)
    out = Console(soft_wrap=False)
    opened = [_open(reader, err)]

    def open_frontend(path: str) -> Frontend:
        return opened.pop() if opened else open_nfcpy(path)

    locator = Locator(config)
    spinner = _Spinner(err)
    reads: asyncio.Queue[CardRead] = asyncio.Queue()
    source = NfcSource(reader, secret.pseudonymizer, loyalty=loyalty, open_frontend=open_frontend,
                       on_read=reads.put_nowait)

    def waiting(left: float) -> None:
        text = f"waiting for a card on reader {reader.id} ({reader.device}): {left:.0f} s left"
        if source.stats.state != "up" and source.stats.last_error:
            text += f" — reader down: {source.stats.last_error}; retrying"
        spinner.show(escape(text))

    def shown(read: CardRead, number: int) -> None:
        spinner.hide()
        result = describe_read(read, number, reader.device, locator, secret)
        if as_json:
            click.echo(json.dumps(result, ensure_ascii=False))
        else:
            out.print(render(result, secret, DEBOUNCE_S))

    try:
        outcome = asyncio.run(read_cards(source, reads, count=count, timeout_s=timeout_s, waiting=waiting,
                                         shown=shown))
    finally:
        spinner.hide()
        for frontend in opened:
            frontend.close()
    if outcome.cards >= count:
        return
    if outcome.interrupted:
        raise NoCard(f"stopped after {outcome.cards} of {count} card{'s' if count != 1 else ''}")
    if outcome.reader_error is not None:
        raise CliError(outcome.reader_error)
    if outcome.cards == 0:
        raise NoCard(f"no card presented on reader {reader.id} within {timeout_s:g} s")
    raise NoCard(f"only {outcome.cards} of {count} cards on reader {reader.id}: none within {timeout_s:g} s "
                 "of the last")

