"""What ``scripts/install-pi.sh`` reads from a site config, and the node broker it sets up.

The installer is bash, but the site config is read here, with the project's
own model, never with regexes. ``facts`` prints what the script branches on
(role, Wi-Fi interface, secret paths) as shell assignments; ``node-broker``
writes the store's Mosquitto setup for its receiver nodes:

* one user per ``kind = "node"`` receiver (``node-<node_name>``) and one for
  the locator (``santi-locator``), each with a random password in
  ``/etc/santi/node-broker/<user>.password`` (owner the service user, 0600);
  a password that exists is never regenerated;
* Mosquitto's password file of their PBKDF2-SHA512 hashes (mosquitto 2's
  ``$7$`` format, computed here so no password ever appears in a process's
  arguments), and an ACL that confines each node to its own topics: a Santi
  node to ``santi/v1/<store>/nodes/<node_name>/observations``, an ESPresense
  node to its room's ``espresense/...`` topics (the firmware's fixed prefix);
  the locator reads both and may set ESPresense settings;
* a LAN listener on ``[nodes] port`` with anonymous access off.

Every file is written only when its content, owner or mode differs, so a
second run changes nothing. Each step prints one line: ``changed:``, ``ok:``,
``would:`` (with ``--dry-run``) or ``todo:`` (for the technician).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import os
import secrets
import shlex
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pydantic import ValidationError

from agent.config import NodesConfig, SiteConfig, room_slug
from agent.errors import InputError
from agent.firmware import NODE_SECRETS, node_user

ETC = PurePosixPath("/etc/santi")
SITE_PATH = ETC / "site.toml"
MOSQUITTO_DIR = PurePosixPath("/etc/mosquitto/santi")
PASSWD_PATH = MOSQUITTO_DIR / "passwd"
ACL_PATH = MOSQUITTO_DIR / "acl"
LISTENER_PATH = PurePosixPath("/etc/mosquitto/conf.d/santi-nodes.conf")
LOCATOR_USER = "santi-locator"
PBKDF2_ITERATIONS = 101
"""mosquitto_passwd's default for ``$7$`` hashes (mosquitto 2.0, Debian 12)."""
SALT_BYTES = 12
PASSWORD_BYTES = 24


class InstallError(InputError):
    """A problem worded as the one line the installer prints before it stops."""


@dataclass(frozen=True)
class BrokerUser:
    """A node-broker account: its name, where its password lives, what it may touch."""

    name: str
    password_file: PurePosixPath
    acl: tuple[tuple[str, str], ...]


def read_site(text: str, name: str = "site config") -> SiteConfig:
    """The site's model, without requiring the files it names to exist yet.

    The installer creates those files (the store secret, the node passwords),
    so ``load_site``'s existence checks cannot pass before it has run; the
    installer runs ``santi config check`` on the installed file at the end.
    The text comes on stdin, so the file need not be inside a chroot's tree;
    relative paths are taken relative to /etc/santi, where it is installed.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InstallError(f"{name}: not a TOML site config: {exc}") from None
    try:
        return SiteConfig.model_validate({**data, "path": Path(str(SITE_PATH))})
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise InstallError(f"{name}: {where}: {error['msg']} (santi config check says more)") from None


def _target(path: Path | None) -> str:
    """A path the site names, as it will be read on the installed system."""
    if path is None:
        return ""
    return str(path if path.is_absolute() else Path(str(ETC)) / path)


def facts(site: SiteConfig) -> dict[str, str]:
    """What the shell script branches on, as NAME -> value."""
    kinds = {receiver.kind for receiver in site.receivers}
    tty_readers = [reader.id for reader in site.nfc_readers if reader.device.startswith("tty:")]
    return {
        "SITE_STORE_ID": site.store.id,
        "SITE_ROLE": site.agent.role,
        "SITE_WIFI_RECEIVERS": " ".join(r.id for r in site.receivers if r.kind == "wifi"),
        "SITE_WIFI_INTERFACE": (site.wifi.interface or "") if "wifi" in kinds else "",
        "SITE_NODE_RECEIVERS": " ".join(r.node_name or "" for r in site.receivers if r.kind == "node"),
        "SITE_NODES_PORT": "" if site.nodes is None else str(site.nodes.port),
        "SITE_NODES_USERNAME": "" if site.nodes is None else site.nodes.username or "",
        "SITE_NODES_PASSWORD_FILE": "" if site.nodes is None else _target(site.nodes.password_file),
        "SITE_SECRET_FILE": _target(site.privacy.secret_file),
        "SITE_SECRET_ENV": site.privacy.secret_env or "",
        "SITE_UPLINK_PASSWORD_FILE": _target(site.uplink.password_file),
        "SITE_NFC_READERS": str(len(site.nfc_readers)),
        "SITE_TTY_READERS": " ".join(tty_readers),
        # As written in the file: relative to it, and so to /etc/santi once installed.
        "SITE_RADIO_MAP": "" if site.tracking.radio_map is None else str(site.tracking.radio_map),
        "SITE_FINGERPRINT": "" if site.tracking.fingerprint is None else str(site.tracking.fingerprint),
    }


def broker_users(site: SiteConfig) -> list[BrokerUser]:
    """The locator's account and one per node receiver, in config order."""
    store = f"santi/v1/{site.store.id}"
    users = [BrokerUser(LOCATOR_USER, NODE_SECRETS / f"{LOCATOR_USER}.password", (
        ("read", "espresense/devices/+/+"),
        ("readwrite", "espresense/rooms/#"),
        ("read", f"{store}/nodes/+/observations"),
    ))]
    for receiver in site.receivers:
        if receiver.kind != "node" or receiver.node_name is None:
            continue
        room = room_slug(receiver.node_name)
        name = node_user(room)
        users.append(BrokerUser(name, NODE_SECRETS / f"{name}.password", (
            ("write", f"{store}/nodes/{receiver.node_name}/observations"),
            ("write", f"espresense/devices/+/{room}"),
            ("readwrite", f"espresense/rooms/{room}/#"),
            ("read", "espresense/rooms/*/#"),
            ("read", "espresense/settings/#"),
        )))
    seen: set[str] = set()
    for user in users:
        if user.name in seen:
            raise InstallError(f"two node receivers map to broker user {user.name!r}; give them distinct node_name")
        seen.add(user.name)
    return users


def acl_text(site: SiteConfig, users: list[BrokerUser]) -> str:
    """Mosquitto's ACL file: every user confined to its own topics, nothing for anyone else."""
    lines = [f"# Santi node broker ACL for store {site.store.id}; generated by scripts/install-pi.sh.",
             "# Regenerated from /etc/santi/site.toml on every install; edit the site config, not this."]
    for user in users:
        lines.extend(["", f"user {user.name}"])
        lines.extend(f"topic {access} {topic}" for access, topic in user.acl)
    return "\n".join(lines) + "\n"


def _nodes(site: SiteConfig) -> NodesConfig:
    """The site's ``[nodes]`` broker; config check refuses node receivers without one."""
    if site.nodes is None:
        raise InstallError("the site config has no [nodes] section: add [nodes] with the port the nodes use")
    return site.nodes


def listener_text(site: SiteConfig) -> str:
    """The conf.d snippet: a LAN listener for the nodes, passwords and the ACL required."""
    return "\n".join([
        f"# Santi node broker for store {site.store.id}; generated by scripts/install-pi.sh.",
        "# Receiver nodes on the store LAN publish here; each has its own user and ACL.",
        "# ESPresense does not speak TLS, so this listener is plain MQTT: keep it on the store LAN.",
        "per_listener_settings false",
        f"listener {_nodes(site).port}",
        "allow_anonymous false",
        f"password_file {PASSWD_PATH}",
        f"acl_file {ACL_PATH}",
        "",
    ])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, salt: bytes, iterations: int = PBKDF2_ITERATIONS) -> str:
    """Mosquitto 2's ``$7$`` hash: PBKDF2-HMAC-SHA512 of the password, salt and hash in base64."""
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return f"$7${iterations}${_b64(salt)}${_b64(digest)}"


def hash_matches(stored: str, password: str) -> bool:
    """Whether a ``$7$`` hash from an existing password file is this password's."""
    parts = stored.split("$")
    if len(parts) != 5 or parts[1] != "7" or not parts[2].isdigit():
        return False
    try:
        salt = base64.b64decode(parts[3], validate=True)
    except ValueError:
        return False
    return hmac.compare_digest(hash_password(password, salt, int(parts[2])), stored)


def passwd_text(users: list[BrokerUser], passwords: dict[str, str], existing: str) -> str:
    """The password file; a user's line is kept as it is when it still matches, so reruns change nothing."""
    old: dict[str, str] = {}
    for line in existing.splitlines():
        name, sep, stored = line.partition(":")
        if sep:
            old[name] = stored
    lines = []
    for user in users:
        password = passwords[user.name]
        stored = old.get(user.name, "")
        if not hash_matches(stored, password):
            stored = hash_password(password, secrets.token_bytes(SALT_BYTES))
        lines.append(f"{user.name}:{stored}")
    return "\n".join(lines) + "\n"


class Writer:
    """Writes files under a root, only when they differ, and reports each step in one line."""

    def __init__(self, root: Path, *, dry_run: bool, owner: tuple[int, int], broker_gid: int) -> None:
        self.root = root
        self.dry_run = dry_run
        self.owner = owner
        self.broker_gid = broker_gid
        self.changes = 0

    def at(self, path: PurePosixPath) -> Path:
        return self.root / path.relative_to("/")

    def say(self, status: str, message: str) -> None:
        if status == "changed":
            self.changes += 1
        sys.stdout.write(f"{status}: {message}\n")

    def directory(self, path: PurePosixPath, mode: int, owner: tuple[int, int]) -> None:
        real = self.at(path)
        if real.is_dir() and self._attributes_ok(real, mode, owner):
            self.say("ok", f"{path}/ exists ({mode:04o})")
            return
        if self.dry_run:
            self.say("would", f"create {path}/ ({mode:04o})")
            return
        real.mkdir(parents=True, exist_ok=True)
        self._fix(real, mode, owner)
        self.say("changed", f"created {path}/ ({mode:04o})")

    def file(self, path: PurePosixPath, text: str, mode: int, owner: tuple[int, int], what: str) -> None:
        real = self.at(path)
        current = real.read_text(encoding="utf-8") if real.is_file() else None
        if current == text and self._attributes_ok(real, mode, owner):
            self.say("ok", f"{path} ({what}) unchanged")
            return
        verb = "write" if current is None else "update"
        if self.dry_run:
            self.say("would", f"{verb} {path} ({what}, {mode:04o})")
            return
        real.parent.mkdir(parents=True, exist_ok=True)
        temporary = real.with_name(f".{real.name}.new")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        self._fix(temporary, mode, owner)
        temporary.replace(real)
        self.say("changed", f"{'wrote' if current is None else 'updated'} {path} ({what}, {mode:04o})")

    def secret(self, path: PurePosixPath, what: str) -> str | None:
        """A random secret at ``path`` unless one is there; returns it (None in a dry run before it exists)."""
        real = self.at(path)
        if real.is_file():
            if self._attributes_ok(real, 0o600, self.owner):
                self.say("ok", f"{path} ({what}) present, 0600, kept")
            elif self.dry_run:
                self.say("would", f"set {path} ({what}) to 0600, owner the service user (content kept)")
            else:
                self._fix(real, 0o600, self.owner)
                self.say("changed", f"set {path} ({what}) to 0600, owner the service user (content kept)")
            return real.read_text(encoding="utf-8").strip()
        if self.dry_run:
            self.say("would", f"generate {path} ({what}, random, 0600)")
            return None
        value = secrets.token_urlsafe(PASSWORD_BYTES)
        descriptor = os.open(real, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(value + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self._fix(real, 0o600, self.owner)
        self.say("changed", f"generated {path} ({what}, random, 0600)")
        return value

    @staticmethod
    def _attributes_ok(path: Path, mode: int, owner: tuple[int, int]) -> bool:
        info = path.stat()
        return (info.st_mode & 0o7777) == mode and (info.st_uid, info.st_gid) == owner

    @staticmethod
    def _fix(path: Path, mode: int, owner: tuple[int, int]) -> None:
        os.chown(path, *owner)
        path.chmod(mode)


def install_node_broker(site: SiteConfig, writer: Writer) -> None:
    """Per-node credentials, Mosquitto's password file, ACL and LAN listener."""
    users = broker_users(site)
    root_owner = (0, 0)
    broker_owner = (0, writer.broker_gid)
    writer.directory(NODE_SECRETS, 0o700, writer.owner)
    passwords: dict[str, str] = {}
    for user in users:
        password = writer.secret(user.password_file, f"node-broker password of {user.name}")
        if password is not None:
            passwords[user.name] = password
    writer.directory(MOSQUITTO_DIR, 0o750, broker_owner)
    if len(passwords) == len(users):
        passwd = writer.at(PASSWD_PATH)
        existing = passwd.read_text(encoding="utf-8") if passwd.is_file() else ""
        writer.file(PASSWD_PATH, passwd_text(users, passwords, existing), 0o640, broker_owner,
                    f"hashes of {len(users)} node-broker users")
    else:
        writer.say("would", f"write {PASSWD_PATH} (hashes of {len(users)} node-broker users, 0640)")
    writer.file(ACL_PATH, acl_text(site, users), 0o640, broker_owner,
                "ACL: " + ", ".join(user.name for user in users))
    writer.file(LISTENER_PATH, listener_text(site), 0o644, root_owner,
                f"LAN listener on port {_nodes(site).port}, no anonymous access")


def _ids(value: str) -> tuple[int, int]:
    uid, _, gid = value.partition(":")
    return int(uid), int(gid or uid)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.install_site",
                                     description="Read a site config on stdin for scripts/install-pi.sh.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("facts", help="print what the installer needs from the site (stdin) as shell assignments")
    broker_cmd = commands.add_parser("node-broker", help="write the node broker's users, ACL and listener")
    broker_cmd.add_argument("--root", type=Path, default=Path("/"), help="install into this root [/]")
    broker_cmd.add_argument("--owner", type=_ids, default=(0, 0), help="UID:GID of the service user")
    broker_cmd.add_argument("--broker-gid", type=int, default=0, help="GID of the mosquitto group")
    broker_cmd.add_argument("--dry-run", action="store_true", help="say what would change, change nothing")
    args = parser.parse_args(argv)
    try:
        site = read_site(sys.stdin.read())
        if args.command == "facts":
            sys.stdout.write("".join(f"{name}={shlex.quote(value)}\n" for name, value in facts(site).items()))
            return 0
        writer = Writer(args.root, dry_run=args.dry_run, owner=args.owner, broker_gid=args.broker_gid)
        install_node_broker(site, writer)
    except InstallError as exc:
        sys.stderr.write(f"install: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
