"""scripts/install-pi.sh into a staging root (and, opt-in, a Debian 12 chroot).

The staging root holds only the account databases of a fresh Raspberry Pi OS
image after apt installed mosquitto; the script finds no apt-get or python3 in
it, so it skips the packages and the venv (the chroot test runs those) and
does everything else for real: users, groups, files, owners, modes, symlinks.
The node broker it writes is then started as a real mosquitto to show that
each node is confined to its own topics.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from agent.install_site import InstallError, broker_users, hash_matches, passwd_text, read_site
from agent.localbroker import Broker, free_port
from tests.conftest import EXAMPLE_SITE
from tests.helpers.wait import wait_until

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "install-pi.sh"
NODES = ["entrance", "checkout", "aisle1", "fish", "greens", "centre"]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the installer sets owners: run as root")

# A fresh image's accounts once apt has installed mosquitto (its postinst makes the user).
ACCOUNTS = {
    "passwd": "root:x:0:0:root:/root:/bin/bash\nmosquitto:x:101:102::/var/lib/mosquitto:/usr/sbin/nologin\n",
    "group": "root:x:0:\nplugdev:x:46:\nmosquitto:x:102:\n",
    "shadow": "root:*:19000:0:99999:7:::\nmosquitto:!:19000::::::\n",
    "gshadow": "root:*::\nplugdev:!::\nmosquitto:!::\n",
}


def _site(tmp_path: Path, *, wifi: bool = True, secret: bool = True, login: bool = True) -> Path:
    """The example store (its monitor interface dropped unless ``wifi``), with a shared store secret named
    and the locator's node-broker login uncommented (unless ``login``)."""
    text = EXAMPLE_SITE.read_text()
    if login:
        for key in ("username", "password_file"):
            text, found = re.subn(rf"^# ({key} = )", r"\1", text, flags=re.MULTILINE)
            assert found == 1, key
    if secret:
        text = text.replace("salt_rotation_hours = 24", 'secret_file = "/etc/santi/store.secret"\nsalt_rotation_hours = 24')
    if not wifi:
        text, found = re.subn(r'\n\[wifi\]\n(#.*\n)*interface = "wlan1mon"\n', "\n", text)
        assert found == 1
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for name, text in ACCOUNTS.items():
        (root / "etc" / name).write_text(text)
    return root


def _install(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=120, check=False)


def _ok(*args: str | Path) -> list[str]:
    result = _install(*args)
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout.splitlines()


def _ids(root: Path, database: str, name: str) -> int:
    for line in (root / "etc" / database).read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2])
    raise AssertionError(f"{name} not in {database}")


def _tree(root: Path) -> dict[str, tuple[int, int, int, bytes | str]]:
    """Every path under root with its mode, owner, group and content (or link target)."""
    tree: dict[str, tuple[int, int, int, bytes | str]] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        if path.is_symlink():
            content: bytes | str = os.readlink(path)
        elif path.is_file():
            content = path.read_bytes()
        else:
            content = ""
        tree[str(path.relative_to(root))] = (info.st_mode, info.st_uid, info.st_gid, content)
    return tree


def test_help_and_bad_options() -> None:
    result = _install("--help")
    assert result.returncode == 0
    for option in ("--config FILE", "--dry-run", "--root DIR", "--skip"):
        assert option in result.stdout
    bad = _install("--frobnicate")
    assert bad.returncode == 2
    assert bad.stderr == "install-pi: unknown option --frobnicate (see --help)\n"
    for spelling in ("--config", "--site"):  # santi's one spelling, and the installer's earlier one
        missing = _install("--dry-run", spelling, "/nonexistent/site.toml")
        assert (missing.returncode, missing.stderr) == (2, "install-pi: --config /nonexistent/site.toml: no such file\n")


def test_dry_run_lists_every_step_and_changes_nothing(tmp_path: Path, staging: Path) -> None:
    before = _tree(staging)
    lines = _ok("--dry-run", "--config", _site(tmp_path), "--root", staging)
    assert _tree(staging) == before
    assert not [line for line in lines if line.startswith("changed:")]
    would = "\n".join(line for line in lines if line.startswith("would: "))
    expected = [
        "groupadd --system bluetooth", "useradd --system santi", "groups bluetooth,plugdev",
        "create /etc/santi/ (0750, root:santi)", "write /etc/santi/site.toml",
        "generate /etc/santi/store.secret", "create /etc/santi/node-broker/",
        "generate /etc/santi/node-broker/santi-locator.password",
        *[f"generate /etc/santi/node-broker/node-{node}.password" for node in NODES],
        "write /etc/mosquitto/santi/passwd", "write /etc/mosquitto/santi/acl",
        "write /etc/mosquitto/conf.d/santi-nodes.conf (LAN listener on port 1883",
        "write /etc/udev/rules.d/60-santi-nfc.rules", "write /etc/modprobe.d/blacklist-nfc.conf",
        "write /etc/systemd/system/santi-agent.service", "write /etc/systemd/system/santi-node.service",
        "write /etc/systemd/system/santi-wifi-monitor@.service",
        "enable santi-agent.service", "enable santi-wifi-monitor@wlan1.service",
        "run santi config check /etc/santi/site.toml as santi",
    ]
    for step in expected:
        assert step in would, step
    # a staging tree has no apt-get or python3 of its own: those steps are named, not hidden
    assert "skip: apt packages: " in "\n".join(lines)
    assert "skip: production venv: " in "\n".join(lines)
    assert lines[-1] == "install-pi: dry run, nothing changed"


def test_dry_run_on_a_fresh_system_names_the_packages_and_the_venv(tmp_path: Path) -> None:
    """With apt-get in the root (a chroot), the dry run lists the apt and pip steps too."""
    root = tmp_path / "chroot"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "apt-get").write_text("#!/bin/sh\nexit 1\n")
    (root / "usr" / "bin" / "apt-get").chmod(0o755)
    lines = _ok("--dry-run", "--site", _site(tmp_path), "--root", root, "--skip", "apt")
    text = "\n".join(lines)
    assert "skip: apt packages (--skip apt): bluez libusb-1.0-0 iw iproute2 mosquitto python3-venv" in text
    assert "would: python3 -m venv /opt/santi/.venv" in text
    assert f"would: pip install {ROOT} into /opt/santi/.venv (the package and its dependencies; no test tools)" in text
    assert "would: link /usr/local/bin/santi -> /opt/santi/.venv/bin/santi" in text


def test_dry_run_before_santi_can_read_the_site_still_lists_every_step(tmp_path: Path) -> None:
    """A fresh Pi: no venv yet, and a source tree without one. The site's steps are named, not skipped."""
    source = tmp_path / "santi"
    for part in ["scripts", "systemd", "agent", "positioning", "simulator", "hq"]:
        shutil.copytree(ROOT / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
    for part in ["pyproject.toml", "README.md"]:
        shutil.copy(ROOT / part, source / part)
    root = tmp_path / "pi"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "apt-get").write_text("#!/bin/sh\nexit 1\n")
    (root / "usr" / "bin" / "apt-get").chmod(0o755)
    result = subprocess.run(["bash", str(source / "scripts/install-pi.sh"), "--dry-run", "--site", str(_site(tmp_path)),
                             "--root", str(root), "--skip", "apt"], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    would = [line.removeprefix("would: ") for line in result.stdout.splitlines() if line.startswith("would: ")]
    for start in ["python3 -m venv", "pip install", "link /usr/local/bin/santi", "read ", "groupadd --system bluetooth",
                  "useradd --system santi", "create /etc/santi/", "write /etc/santi/site.toml",
                  "generate the store secret at privacy.secret_file", "check the uplink password",
                  "on a locator with kind = \"node\" receivers: generate a password per node",
                  "write /etc/udev/rules.d/60-santi-nfc.rules", "write /etc/modprobe.d/blacklist-nfc.conf",
                  "write /etc/systemd/system/santi-agent.service", "enable santi-agent.service and/or",
                  "run santi config check"]:
        assert sum(line.startswith(start) for line in would) == 1, start


def test_install_into_staging_root_sets_owners_and_modes(tmp_path: Path, staging: Path) -> None:
    site = _site(tmp_path)
    lines = _ok("--site", site, "--root", staging)
    uid, gid = _ids(staging, "passwd", "santi"), _ids(staging, "group", "santi")
    mosquitto_gid = _ids(staging, "group", "mosquitto")
    groups = {line.split(":")[0]: line.split(":")[3] for line in (staging / "etc/group").read_text().splitlines()}
    assert groups["bluetooth"] == "santi"
    assert groups["plugdev"] == "santi"
    account = next(line for line in (staging / "etc/passwd").read_text().splitlines() if line.startswith("santi:"))
    assert account.endswith(":/var/lib/santi:/usr/sbin/nologin")

    def attributes(path: str) -> tuple[int, int, int]:
        info = (staging / path.lstrip("/")).lstat()
        return stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid

    secrets = ["/etc/santi/store.secret", *[f"/etc/santi/node-broker/{user}.password"
                                            for user in ["santi-locator", *[f"node-{n}" for n in NODES]]]]
    for path in secrets:
        assert attributes(path) == (0o600, uid, gid), path
    assert attributes("/etc/santi") == (0o750, 0, gid)
    assert attributes("/etc/santi/node-broker") == (0o700, uid, gid)
    assert attributes("/etc/santi/site.toml") == (0o640, 0, gid)
    assert (staging / "etc/santi/site.toml").read_text() == site.read_text()
    assert attributes("/etc/mosquitto/santi/passwd") == (0o640, 0, mosquitto_gid)
    assert attributes("/etc/mosquitto/santi/acl") == (0o640, 0, mosquitto_gid)
    for path in ["/etc/mosquitto/conf.d/santi-nodes.conf", "/etc/udev/rules.d/60-santi-nfc.rules",
                 "/etc/modprobe.d/blacklist-nfc.conf", "/etc/systemd/system/santi-agent.service",
                 "/etc/systemd/system/santi-node.service", "/etc/systemd/system/santi-wifi-monitor@.service"]:
        assert attributes(path) == (0o644, 0, 0), path
    for unit in ["santi-agent.service", "santi-node.service", "santi-wifi-monitor@.service"]:
        assert (staging / "etc/systemd/system" / unit).read_text() == (ROOT / "systemd" / unit).read_text()
    wants = staging / "etc/systemd/system/multi-user.target.wants"
    assert {path.name: os.readlink(path) for path in wants.iterdir()} == {
        "santi-agent.service": "/etc/systemd/system/santi-agent.service",
        "santi-wifi-monitor@wlan1.service": "/etc/systemd/system/santi-wifi-monitor@.service",
    }
    assert (staging / "etc/modprobe.d/blacklist-nfc.conf").read_text().count("\nblacklist ") == 3
    store_secret = (staging / "etc/santi/store.secret").read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", store_secret)
    # No secret reaches the output.
    output = "\n".join(lines)
    for path in secrets:
        assert (staging / path.lstrip("/")).read_text().strip() not in output
    assert lines[-2] == f"install-pi: {sum(line.startswith('changed:') for line in lines)} changes"


def test_second_run_changes_nothing_and_keeps_secrets(tmp_path: Path, staging: Path) -> None:
    site = _site(tmp_path)
    _ok("--site", site, "--root", staging)
    first = _tree(staging)
    lines = _ok("--site", site, "--root", staging)
    assert _tree(staging) == first
    assert [line for line in lines if line.startswith("changed:")] == []
    assert "install-pi: nothing to change, already installed" in lines


def test_a_secret_with_a_loose_mode_is_tightened_not_replaced(tmp_path: Path, staging: Path) -> None:
    site = _site(tmp_path)
    _ok("--site", site, "--root", staging)
    secret = staging / "etc/santi/node-broker/node-fish.password"
    content = secret.read_bytes()
    secret.chmod(0o644)
    os.chown(secret, 0, 0)
    lines = _ok("--site", site, "--root", staging)
    assert [line for line in lines if line.startswith("changed:")] == [
        ("changed: set /etc/santi/node-broker/node-fish.password (node-broker password of node-fish) "
         "to 0600, owner the service user (content kept)")]
    assert secret.read_bytes() == content
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert secret.stat().st_uid == _ids(staging, "passwd", "santi")


def test_what_is_left_to_do_is_said(tmp_path: Path, staging: Path) -> None:
    """The shipped example has a wifi receiver without an interface and no shared secret file."""
    lines = _ok("--site", _site(tmp_path, wifi=False, secret=False, login=False), "--root", staging)
    todo = [line for line in lines if line.startswith("todo:")]
    assert any('receiver pi-wifi is kind = "wifi" but [wifi] interface is unset' in line for line in todo)
    assert any("privacy.secret_file is unset" in line for line in todo)
    assert ('todo: set [nodes] username = "santi-locator" and password_file = '
            '"/etc/santi/node-broker/santi-locator.password" in the site config and rerun: '
            "the node broker refuses anonymous clients") in todo
    logged_in = _ok("--site", _site(tmp_path), "--root", staging)
    assert "ok: [nodes] logs in to the node broker as santi-locator" in logged_in
    assert not [line for line in logged_in if line.startswith("todo:")]
    assert not (staging / "etc/systemd/system/multi-user.target.wants/santi-wifi-monitor@wlan1.service").exists()


def test_the_uplink_password_is_never_invented(tmp_path: Path, staging: Path) -> None:
    """HQ issues it: missing, it is a todo; present, only its owner and mode are set."""
    site = _site(tmp_path)
    site.write_text(site.read_text().replace("inflight = 20", 'inflight = 20\npassword_file = "/etc/santi/uplink.password"'))
    lines = _ok("--site", site, "--root", staging)
    assert any(line.startswith("todo: put HQ's uplink password in /etc/santi/uplink.password") for line in lines)
    password = staging / "etc/santi/uplink.password"
    assert not password.exists()
    password.write_text("from-hq\n")
    password.chmod(0o644)
    lines = _ok("--site", site, "--root", staging)
    assert [line for line in lines if line.startswith("changed:")] == [
        "changed: set /etc/santi/uplink.password (uplink password (uplink.password_file)) to 0600, owner santi (content kept)"]
    assert password.read_text() == "from-hq\n"
    assert (stat.S_IMODE(password.stat().st_mode), password.stat().st_uid) == (0o600, _ids(staging, "passwd", "santi"))


def test_a_tty_reader_puts_the_user_in_dialout(tmp_path: Path, staging: Path) -> None:
    site = _site(tmp_path)
    site.write_text(site.read_text().replace('device = "usb"', 'device = "tty:USB0:pn532"'))
    _ok("--site", site, "--root", staging)
    groups = {line.split(":")[0]: line.split(":")[3] for line in (staging / "etc/group").read_text().splitlines()}
    assert groups["dialout"] == "santi"


def test_nfc_usb_ids_are_nfcpys() -> None:
    from nfc.clf.device import usb_device_map  # noqa: PLC0415  (nfcpy is slow to import)

    match = re.search(r"^NFC_USB_IDS=\((.*)\)$", SCRIPT.read_text(), re.MULTILINE)
    assert match
    assert set(match.group(1).split()) == {f"{vid:04x}:{pid:04x}" for vid, pid in usb_device_map}


def _connect(port: int, user: str | None, password: str | None) -> tuple[mqtt.Client, int]:
    """An MQTT 5 client, for the CONNACK reason codes."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{user}", protocol=mqtt.MQTTv5)
    if user is not None:
        client.username_pw_set(user, password)
    connected = threading.Event()
    result: list[int] = []

    def on_connect(client: mqtt.Client, userdata: object, flags: object, reason: ReasonCode, props: object) -> None:
        result.append(reason.value)
        connected.set()

    client.on_connect = on_connect
    client.connect("127.0.0.1", port)
    client.loop_start()
    assert connected.wait(10), "no CONNACK"
    return client, result[0]


def test_node_broker_confines_each_node_to_its_topics(tmp_path: Path, staging: Path) -> None:
    """A real mosquitto with the generated password file and ACL (on loopback, not the LAN listener)."""
    _ok("--site", _site(tmp_path), "--root", staging)
    etc = staging / "etc"
    broker = Broker(tmp_path / "broker", extra_config="\n".join([
        "allow_anonymous false",
        f"password_file {etc / 'mosquitto/santi/passwd'}",
        f"acl_file {etc / 'mosquitto/santi/acl'}",
    ]))
    broker.start()
    clients: list[mqtt.Client] = []
    try:
        def password(user: str) -> str:
            return (etc / "santi/node-broker" / f"{user}.password").read_text().strip()

        locator, code = _connect(broker.port, "santi-locator", password("santi-locator"))
        clients.append(locator)
        assert code == 0
        received: list[str] = []
        got = threading.Event()

        def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
            received.append(message.topic)
            if message.payload == b"last":
                got.set()

        locator.on_message = on_message
        subscribed = threading.Event()
        locator.on_subscribe = lambda *args: subscribed.set()
        locator.subscribe([("espresense/devices/+/+", 1), ("santi/v1/fishmonger-01/nodes/+/observations", 1)])
        assert subscribed.wait(10)

        fish, code = _connect(broker.port, "node-fish", password("node-fish"))
        clients.append(fish)
        assert code == 0
        # QoS 0, as ESPresense publishes: a refused message is dropped without a word, and the
        # allowed one sent last, after them on the same connection, shows they had their turn.
        for topic in ["santi/v1/fishmonger-01/nodes/fish/observations", "espresense/devices/tag-1/fish",
                      # another node's topics and another store's: refused by the ACL
                      "santi/v1/fishmonger-01/nodes/greens/observations", "espresense/devices/tag-1/greens",
                      "santi/v1/other-store/nodes/fish/observations", "espresense/rooms/greens/status"]:
            fish.publish(topic, b"[]", qos=0)
        fish.publish("espresense/devices/tag-2/fish", b"last", qos=1).wait_for_publish(10)
        assert got.wait(10)
        assert received == ["santi/v1/fishmonger-01/nodes/fish/observations", "espresense/devices/tag-1/fish",
                            "espresense/devices/tag-2/fish"]

        _, refused = _connect(broker.port, "node-fish", password("node-greens"))
        assert refused == 135  # not authorised (mosquitto 2.0 says so for a wrong password too)
        _, anonymous = _connect(broker.port, None, None)
        assert anonymous == 135
    finally:
        for client in clients:
            client.loop_stop()
            client.disconnect()
        broker.stop(kill=True)


def test_mosquitto_passwd_hashes_are_understood(tmp_path: Path) -> None:
    """Our $7$ hashes and mosquitto_passwd's are the same scheme both ways."""
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.skip("mosquitto_passwd is not installed")
    path = tmp_path / "passwd"
    subprocess.run([tool, "-c", "-b", str(path), "alice", "correct horse"], check=True, timeout=30)
    stored = path.read_text().strip().split(":", 1)[1]
    assert hash_matches(stored, "correct horse")
    assert not hash_matches(stored, "correct horse ")
    assert not hash_matches("$6$abc$def", "correct horse")


def test_passwd_keeps_lines_that_still_match() -> None:
    site = read_site(EXAMPLE_SITE.read_text())
    users = broker_users(site)
    passwords = {user.name: f"pw-{user.name}" for user in users}
    first = passwd_text(users, passwords, "")
    assert passwd_text(users, passwords, first) == first
    changed = passwd_text(users, {**passwords, "node-fish": "new"}, first)
    differing = [(a, b) for a, b in zip(first.splitlines(), changed.splitlines(), strict=True) if a != b]
    assert [b.split(":")[0] for _, b in differing] == ["node-fish"]
    assert hash_matches(differing[0][1].split(":", 1)[1], "new")


def test_site_errors_are_one_line() -> None:
    with pytest.raises(InstallError, match=r"^site config: store: Field required \(santi config check says more\)$"):
        read_site('[agent]\nid = "x"\n')
    with pytest.raises(InstallError, match=r"^site config: not a TOML site config: "):
        read_site("[store\n")
    text = EXAMPLE_SITE.read_text().replace('node_name = "fish"', 'node_name = "Entrance"')
    with pytest.raises(InstallError, match="two node receivers map to broker user 'node-entrance'"):
        broker_users(read_site(text))


CHROOT_ENV = "SANTI_TEST_CHROOT"
CHROOT_CA = "/etc/ssl/santi-test-ca.crt"


@pytest.fixture
def bookworm(tmp_path: Path) -> Path:
    """A copy of a pristine Debian 12 minbase tree ($SANTI_TEST_CHROOT; built with debootstrap if absent)."""
    pristine = os.environ.get(CHROOT_ENV)
    if not pristine:
        pytest.skip(f"set {CHROOT_ENV}=DIR to run the installer in a Debian 12 chroot (debootstrap builds DIR once)")
    source = Path(pristine)
    if not (source / "usr/bin/apt-get").exists():
        debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
        if not Path(debootstrap).exists():
            pytest.skip("debootstrap is not installed (apt-get install debootstrap)")
        subprocess.run([debootstrap, "--variant=minbase", "bookworm", str(source), "http://deb.debian.org/debian"],
                       check=True, capture_output=True, timeout=1800)
    root = tmp_path / "bookworm"
    subprocess.run(["cp", "-a", str(source), str(root)], check=True, timeout=600)
    # The Pi's network as this machine has it: its resolver, and the CA bundle pip is told to
    # use here (it may sit behind a proxy), under a name that apt's ca-certificates leaves alone.
    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
    bundle = os.environ.get("PIP_CERT")
    if bundle:
        (root / CHROOT_CA.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(bundle, root / CHROOT_CA.lstrip("/"))
    return root


def _chroot_env() -> dict[str, str]:
    """This environment, with every CA-bundle variable that names the host's bundle naming the copy."""
    env = dict(os.environ)
    for name in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        if env.get(name):
            env[name] = CHROOT_CA
    return env


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_install_in_a_debian_12_chroot(tmp_path: Path, bookworm: Path) -> None:
    """Everything but systemd itself: apt, pip, the user, the config check as santi, the broker's files."""
    site = _site(tmp_path)
    first = subprocess.run(["bash", str(SCRIPT), "--site", str(site), "--root", str(bookworm)],
                           capture_output=True, text=True, timeout=1700, check=False, env=_chroot_env())
    assert first.returncode == 0, first.stderr[-3000:] + first.stdout[-3000:]
    assert "changed: apt-get installed bluez libusb-1.0-0 iw iproute2 mosquitto python3-venv" in first.stdout
    assert "ok: santi config check /etc/santi/site.toml passes as santi" in first.stdout
    version = subprocess.run(["chroot", str(bookworm), "/usr/local/bin/santi", "--version"],
                             capture_output=True, text=True, timeout=120, check=True)
    assert version.stdout.startswith("santi ")
    # production venv: the package, no test tools
    pip_list = subprocess.run(["chroot", str(bookworm), "/opt/santi/.venv/bin/pip", "list", "--format=freeze"],
                              capture_output=True, text=True, timeout=120, check=True).stdout
    names = {line.split("==")[0].lower() for line in pip_list.splitlines()}
    assert {"santi", "numpy", "nfcpy", "paho-mqtt"} <= names
    assert not names & {"pytest", "hypothesis", "ruff", "mypy"}

    # Debian's own mosquitto, dropping to its mosquitto user, reads the generated files.
    port = free_port()
    conf = (bookworm / "etc/mosquitto/conf.d/santi-nodes.conf").read_text()
    (bookworm / "tmp/santi-test.conf").write_text(conf.replace("listener 1883\n", f"listener {port} 127.0.0.1\n"))
    log = tmp_path / "mosquitto.log"
    with log.open("wb") as output:
        broker = subprocess.Popen(["chroot", str(bookworm), "/usr/sbin/mosquitto", "-c", "/tmp/santi-test.conf"],
                                  stdout=output, stderr=subprocess.STDOUT)
    try:
        password = (bookworm / "etc/santi/node-broker/node-fish.password").read_text().strip()

        def answered() -> list[int] | None:
            """The CONNACK code once the chrooted broker listens; None while it is starting."""
            try:
                client, code = _connect(port, "node-fish", password)
            except OSError:
                broker.poll()
                assert broker.returncode is None, log.read_text()
                return None
            client.loop_stop()
            client.disconnect()
            return [code]

        assert wait_until(answered, 10, "the chrooted mosquitto accepting node-fish") == [0]
    finally:
        broker.kill()
        broker.wait(10)

    second = subprocess.run(["bash", str(SCRIPT), "--site", str(site), "--root", str(bookworm)],
                            capture_output=True, text=True, timeout=600, check=False, env=_chroot_env())
    assert second.returncode == 0, second.stderr
    assert [line for line in second.stdout.splitlines() if line.startswith("changed:")] == []
    assert "install-pi: nothing to change, already installed" in second.stdout


def test_the_calibration_files_the_site_names_are_installed_beside_it(tmp_path: Path, staging: Path) -> None:
    """`calibrate fit` writes the radio map and the fingerprint beside the config it writes, named relative to it;
    installed as /etc/santi/site.toml, the config looks for them in /etc/santi."""
    site = _site(tmp_path)
    site.write_text(site.read_text().replace(
        "[tracking]\n", '[tracking]\nradio_map = "store.radiomap.npz"\nfingerprint = "maps/store.fingerprint.npz"\n'))
    (tmp_path / "store.radiomap.npz").write_bytes(b"the map")
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "store.fingerprint.npz").write_bytes(b"the fingerprint")
    lines = _ok("--site", site, "--root", staging)
    gid = _ids(staging, "group", "santi")
    for name, content in (("store.radiomap.npz", b"the map"), ("maps/store.fingerprint.npz", b"the fingerprint")):
        installed = staging / "etc/santi" / name
        assert installed.read_bytes() == content
        info = installed.stat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o640, 0, gid)
    assert (f"changed: wrote /etc/santi/store.radiomap.npz ([tracking] radio_map from {tmp_path}/store.radiomap.npz, "
            "0640)") in lines
    assert [line for line in _ok("--site", site, "--root", staging) if line.startswith("changed:")] == []
    (tmp_path / "maps" / "store.fingerprint.npz").unlink()
    (staging / "etc/santi/maps/store.fingerprint.npz").unlink()
    lines = _ok("--site", site, "--root", staging)
    assert ("todo: [tracking] fingerprint names /etc/santi/maps/store.fingerprint.npz, which is missing: put there "
            "the file santi calibrate fit wrote beside the config, or remove the key") in lines
    assert (f"ok: /etc/santi/store.radiomap.npz ([tracking] radio_map from {tmp_path}/store.radiomap.npz) "
            "unchanged") in lines
    # Without --site the installed config is checked as it is: its files must be in place.
    assert "ok: /etc/santi/store.radiomap.npz ([tracking] radio_map) present" in _ok("--root", staging)
