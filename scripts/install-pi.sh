#!/usr/bin/env bash
# Install Santi on a Raspberry Pi (Raspberry Pi OS / Debian 12 bookworm), from a clone
# or an unpacked release of this repository. Idempotent: run it again after an update
# or a change of site config; what is already in place is left alone, and secrets that
# exist are never regenerated, printed or logged. docs/install.md explains each step.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/install-pi.sh [--config FILE] [--dry-run] [--root DIR] [--skip apt,venv]

Install Santi as a service on this Raspberry Pi (Debian 12 bookworm): apt packages,
the santi user and its groups, the NFC udev rule and kernel-driver blacklist, the
Wi-Fi monitor-interface unit, a production venv in /opt/santi/.venv with `santi` on
PATH, /etc/santi and its secrets (0600, owner santi), the node broker's per-node
users and ACL, and the systemd units, enabled for the site's role.

  --config FILE install FILE as /etc/santi/site.toml (else the one there is used;
                --site FILE, the earlier spelling, still works)
  --dry-run     print every step it would take; change nothing
  --root DIR    install into DIR (a chroot or a staging tree) instead of /;
                nothing is started there, units are enabled by their symlinks
  --skip LIST   leave out steps: apt (packages managed elsewhere), venv
  -h, --help    this help

Each step prints one line: "changed:", "ok:" (already so), "would:" (dry run),
"skip:" or "todo:" (for you to do by hand). Exit 0 when done, 2 on bad input.
Example:
  sudo scripts/install-pi.sh --config examples/fishmonger.toml --dry-run
EOF
}

die() { echo "install-pi: $*" >&2; exit 2; }

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOT=/
SITE=""
DRY_RUN=0
SKIP=","
while [ $# -gt 0 ]; do
    case "$1" in
        --config|--site) [ $# -ge 2 ] || die "$1 needs a FILE"; SITE="$2"; shift 2 ;;
        --config=*|--site=*) SITE="${1#*=}"; shift ;;
        --root) [ $# -ge 2 ] || die "--root needs a DIR"; ROOT="$2"; shift 2 ;;
        --root=*) ROOT="${1#--root=}"; shift ;;
        --skip) [ $# -ge 2 ] || die "--skip needs a LIST"; SKIP=",$2,"; shift 2 ;;
        --skip=*) SKIP=",${1#--skip=},"; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
for step in ${SKIP//,/ }; do
    case "$step" in apt|venv) ;; *) die "--skip: unknown step '$step' (apt, venv)" ;; esac
done
[ -z "$SITE" ] || [ -f "$SITE" ] || die "--config $SITE: no such file"
[ -d "$ROOT" ] || die "--root $ROOT: no such directory"
ROOT="$(cd "$ROOT" && pwd)"
if [ "$DRY_RUN" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
    die "run as root (sudo), or with --dry-run to see the steps"
fi

USER_NAME=santi
VENV=/opt/santi/.venv
ETC=/etc/santi
SITE_PATH=$ETC/site.toml
UNIT_DIR=/etc/systemd/system
APT_PACKAGES=(bluez libusb-1.0-0 iw iproute2 mosquitto python3-venv)
CHANGES=0

# The target's path for a path on the installed system.
at() { if [ "$ROOT" = / ]; then echo "$1"; else echo "$ROOT$1"; fi; }
skipping() { [[ "$SKIP" == *",$1,"* ]]; }
ok() { echo "ok: $*"; }
changed() { echo "changed: $*"; CHANGES=$((CHANGES + 1)); }
would() { echo "would: $*"; }
skip() { echo "skip: $*"; }
todo() { echo "todo: $*"; }

# A chroot has its own system (apt, python) to run things in; a staging tree has only files.
HAS_SYSTEM=0
if [ "$ROOT" = / ] || [ -x "$ROOT/usr/bin/apt-get" ]; then HAS_SYSTEM=1; fi
in_target() { if [ "$ROOT" = / ]; then "$@"; else chroot "$ROOT" "$@"; fi; }
SYSTEMD_RUNNING=0
if [ "$ROOT" = / ] && [ -d /run/systemd/system ]; then SYSTEMD_RUNNING=1; fi

# id of a user or group in the target's own databases (getent does not take a root).
lookup_id() {  # passwd|group NAME
    if [ "$ROOT" = / ]; then
        getent "$1" "$2" | cut -d: -f3
    else
        awk -F: -v name="$2" '$1 == name { print $3 }' "$ROOT/etc/$1" 2>/dev/null || true
    fi
}
group_members() { awk -F: -v name="$1" '$1 == name { print $4 }' "$(at /etc/group)" 2>/dev/null || true; }
# shadow's tools edit the target's databases themselves with --prefix, no chroot needed.
prefix_args() { if [ "$ROOT" != / ]; then echo "--prefix $ROOT"; fi; }

# -- 1. packages ------------------------------------------------------------------------
step_apt() {
    if skipping apt; then skip "apt packages (--skip apt): ${APT_PACKAGES[*]}"; return; fi
    if [ "$HAS_SYSTEM" -eq 0 ]; then skip "apt packages: $ROOT is a staging tree without apt-get"; return; fi
    local missing=() pkg
    for pkg in "${APT_PACKAGES[@]}"; do
        # shellcheck disable=SC2016  # a dpkg-query format, not a shell expansion
        in_target dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null | grep -qx installed || missing+=("$pkg")
    done
    if [ ${#missing[@]} -eq 0 ]; then ok "apt packages installed: ${APT_PACKAGES[*]}"; return; fi
    if [ "$DRY_RUN" -eq 1 ]; then would "apt-get install --no-install-recommends ${missing[*]}"; return; fi
    # In a chroot nothing may start: a postinst's mosquitto would take the host's port 1883.
    local policy="$ROOT/usr/sbin/policy-rc.d" own_policy=0
    if [ "$ROOT" != / ] && [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod 0755 "$policy"; own_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    # apt's chatter is shown only when it fails.
    local log status=0
    log="$(mktemp)"
    in_target apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null >"$log" 2>&1 \
        || { in_target apt-get update -q </dev/null >>"$log" 2>&1 \
             && in_target apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null >>"$log" 2>&1; } \
        || status=$?
    [ "$own_policy" -eq 0 ] || rm -f "$policy"
    [ "$status" -eq 0 ] || { cat "$log" >&2; rm -f "$log"; die "apt-get install ${missing[*]} failed (above)"; }
    rm -f "$log"
    changed "apt-get installed ${missing[*]}"
}

# -- 2. production venv and `santi` on PATH -------------------------------------------------
source_hash() {
    (cd "$SRC" && find agent positioning simulator hq pyproject.toml README.md -type f \
        \( -name '*.py' -o -name '*.typed' -o -name '*.toml' -o -name '*.md' \) -print0 \
        | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
}
step_venv() {
    if skipping venv; then skip "production venv $VENV (--skip venv)"; return; fi
    if [ "$HAS_SYSTEM" -eq 0 ]; then skip "production venv: $ROOT is a staging tree without python3"; return; fi
    local want stamp
    want="$(source_hash)"
    stamp="$(at $VENV)/.santi-source"
    if [ -x "$(at $VENV)/bin/python" ]; then
        ok "venv $VENV exists"
    elif [ "$DRY_RUN" -eq 1 ]; then
        would "python3 -m venv $VENV"
    else
        mkdir -p "$(at /opt/santi)"
        in_target python3 -m venv "$VENV"
        changed "created venv $VENV"
    fi
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        ok "santi from $SRC already installed in $VENV"
    elif [ "$DRY_RUN" -eq 1 ]; then
        would "pip install $SRC into $VENV (the package and its dependencies; no test tools)"
    else
        # pip runs in the target, so the sources are copied in for it and removed after.
        local tmp
        tmp="$(mktemp -d "$(at /var/tmp)/santi-src.XXXXXX")"
        tar -C "$SRC" --exclude=__pycache__ -cf - pyproject.toml README.md agent positioning simulator hq \
            | tar -C "$tmp" -xf -
        local log
        log="$(mktemp)"
        if ! in_target "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir \
            "${tmp#"${ROOT%/}"}" </dev/null >"$log" 2>&1; then
            rm -rf "$tmp"; cat "$log" >&2; rm -f "$log"
            die "pip install of santi into $VENV failed (above)"
        fi
        rm -rf "$tmp" "$log"
        in_target "$VENV/bin/santi" --version >/dev/null || die "santi does not run from $VENV after pip install"
        echo "$want" > "$stamp"
        changed "pip installed santi from $SRC into $VENV"
    fi
    local link target
    link="$(at /usr/local/bin/santi)"
    target="$VENV/bin/santi"
    if [ "$(readlink "$link" 2>/dev/null)" = "$target" ]; then
        ok "/usr/local/bin/santi -> $target"
    elif [ "$DRY_RUN" -eq 1 ]; then
        would "link /usr/local/bin/santi -> $target"
    else
        mkdir -p "$(dirname "$link")"
        ln -sfn "$target" "$link"
        changed "linked /usr/local/bin/santi -> $target"
    fi
}

# -- 3. what the site says (read by the project's own code) ---------------------------------
SITE_READABLE=""
# A dry run on a fresh Pi has no python that can read the site yet: the steps that
# depend on it are then listed as what they will do, not with the site's values.
SITE_DEFERRED=0
PY=()
PY_ROOT="$ROOT"
find_python() {
    # The installed venv reads the site inside the target; else this checkout's own venv.
    # Either way the site comes on stdin, so it need not be inside the target yet.
    if [ "$HAS_SYSTEM" -eq 1 ] && [ -x "$(at $VENV)/bin/python" ] \
        && in_target "$VENV/bin/python" -c 'import agent.install_site' 2>/dev/null; then
        PY=(in_target "$VENV/bin/python" -m agent.install_site); PY_ROOT=/
    elif [ -x "$SRC/.venv/bin/python" ] && "$SRC/.venv/bin/python" -c 'import agent.install_site' 2>/dev/null; then
        PY=("$SRC/.venv/bin/python" -m agent.install_site); PY_ROOT="$ROOT"
    fi
}
read_site_facts() {
    if [ -n "$SITE" ]; then SITE_READABLE="$SITE"; elif [ -f "$(at $SITE_PATH)" ]; then SITE_READABLE="$(at $SITE_PATH)"; fi
    if [ -z "$SITE_READABLE" ]; then
        todo "no site config: install one with --config FILE (units are installed, not enabled)"
        return
    fi
    find_python
    if [ ${#PY[@]} -eq 0 ]; then
        [ "$DRY_RUN" -eq 1 ] || die "cannot read the site config: no python with santi installed (see --skip venv)"
        would "read $SITE_READABLE with $VENV/bin/python -m agent.install_site once the venv exists (the steps it decides are listed as such below)"
        SITE_READABLE=""; SITE_DEFERRED=1
        return
    fi
    local facts_out
    facts_out="$("${PY[@]}" facts < "$SITE_READABLE")" || die "cannot use the site config $SITE_READABLE (above)"
    eval "$facts_out"
    ok "site config $SITE_READABLE: store $SITE_STORE_ID, role $SITE_ROLE, node receivers: ${SITE_NODE_RECEIVERS:-none}"
}

# -- 4. user and groups ---------------------------------------------------------------------
wanted_groups() {
    # bluetooth: BlueZ's D-Bus policy; plugdev: USB NFC readers (the udev rule below);
    # dialout: serial (tty:) NFC readers. The Wi-Fi capture needs CAP_NET_RAW, not netdev.
    local groups=(bluetooth plugdev)
    [ -z "${SITE_TTY_READERS:-}" ] || groups+=(dialout)
    echo "${groups[*]}"
}
step_user() {
    local group
    for group in $(wanted_groups); do
        if [ -n "$(lookup_id group "$group")" ]; then ok "group $group exists"; continue; fi
        if [ "$DRY_RUN" -eq 1 ]; then would "groupadd --system $group"; continue; fi
        # shellcheck disable=SC2046
        groupadd $(prefix_args) --system "$group"
        changed "created group $group"
    done
    local wanted
    wanted="$(wanted_groups)"
    if [ -z "$(lookup_id passwd $USER_NAME)" ]; then
        if [ "$DRY_RUN" -eq 1 ]; then
            would "useradd --system $USER_NAME (home /var/lib/santi, no login, groups ${wanted// /,})"
            return
        fi
        # shellcheck disable=SC2046
        useradd $(prefix_args) --system --user-group --no-create-home --home-dir /var/lib/santi \
            --shell /usr/sbin/nologin --comment "Santi in-store agent" --groups "${wanted// /,}" "$USER_NAME"
        changed "created system user $USER_NAME (groups ${wanted// /,})"
        return
    fi
    local missing=()
    for group in $wanted; do
        [[ ",$(group_members "$group")," == *",$USER_NAME,"* ]] || missing+=("$group")
    done
    if [ ${#missing[@]} -eq 0 ]; then ok "user $USER_NAME exists, in groups ${wanted// /,}"; return; fi
    if [ "$DRY_RUN" -eq 1 ]; then would "usermod -aG ${missing[*]// /,} $USER_NAME"; return; fi
    local joined="${missing[*]}"
    # shellcheck disable=SC2046
    usermod $(prefix_args) -aG "${joined// /,}" "$USER_NAME"
    changed "added $USER_NAME to ${joined// /,}"
}

# -- files with content, owner and mode, written only when they differ ------------------------
ensure_dir() {  # PATH MODE OWNER:GROUP
    local path mode="$2" owner="$3"
    path="$(at "$1")"
    if [ -d "$path" ] && [ "$(stat -c '%a %u:%g' "$path")" = "${mode#0} $(numeric_owner "$owner")" ]; then
        ok "$1/ exists ($mode, $owner)"; return
    fi
    if [ "$DRY_RUN" -eq 1 ]; then would "create $1/ ($mode, $owner)"; return; fi
    mkdir -p "$path"; chown "$(numeric_owner "$owner")" "$path"; chmod "$mode" "$path"
    changed "created $1/ ($mode, $owner)"
}
ensure_file() {  # PATH MODE OWNER:GROUP WHAT < content
    local path tmp mode="$2" owner="$3" what="$4"
    path="$(at "$1")"
    tmp="$(mktemp)"
    cat > "$tmp"
    if [ -f "$path" ] && cmp -s "$tmp" "$path" \
        && [ "$(stat -c '%a' "$path")" = "${mode#0}" ] && [ "$(stat -c '%u:%g' "$path")" = "$(numeric_owner "$owner")" ]; then
        ok "$1 ($what) unchanged"; rm -f "$tmp"; return
    fi
    local verb=write; [ ! -f "$path" ] || verb=update
    if [ "$DRY_RUN" -eq 1 ]; then would "$verb $1 ($what, $mode)"; rm -f "$tmp"; return; fi
    mkdir -p "$(dirname "$path")"
    chown "$(numeric_owner "$owner")" "$tmp"; chmod "$mode" "$tmp"
    mv -f "$tmp" "$path"
    if [ "$verb" = write ]; then changed "wrote $1 ($what, $mode)"; else changed "updated $1 ($what, $mode)"; fi
}
# OWNER:GROUP by name -> uid:gid in the target (0 for root; the user exists once step_user ran).
numeric_owner() {
    local user="${1%%:*}" group="${1##*:}" uid gid
    if [ "$user" = root ]; then uid=0; else uid="$(lookup_id passwd "$user")"; fi
    if [ "$group" = root ]; then gid=0; else gid="$(lookup_id group "$group")"; fi
    echo "${uid:-0}:${gid:-0}"
}

# -- 5. /etc/santi, the site config and the secrets --------------------------------------------
# A file `santi calibrate fit` wrote beside the config and the config names ([tracking] radio_map, fingerprint):
# a relative name is read beside --config and installed beside the site config, where the agent looks for it.
install_calibration() {  # KEY PATH-AS-WRITTEN
    local key="$1" written="$2" target source=""
    [ -n "$written" ] || return 0
    if [[ "$written" = /* ]]; then target="$written"; else target="$ETC/$written"; fi
    if [ -n "$SITE" ]; then
        if [[ "$written" = /* ]]; then source="$written"; else source="$(dirname "$SITE")/$written"; fi
    fi
    if [ -n "$source" ] && [ -f "$source" ] && [ "$(realpath "$source")" != "$(realpath -m "$(at "$target")")" ]; then
        ensure_file "$target" 0640 "root:$USER_NAME" "[tracking] $key from $source" < "$source"
    elif [ -f "$(at "$target")" ]; then
        ok "$target ([tracking] $key) present"
    else
        todo "[tracking] $key names $target, which is missing: put there the file santi calibrate fit wrote beside the config, or remove the key"
    fi
}
step_etc() {
    ensure_dir $ETC 0750 root:$USER_NAME
    if [ -n "$SITE" ]; then
        ensure_file $SITE_PATH 0640 root:$USER_NAME "site config from $SITE" < "$SITE"
    fi
    if [ "$SITE_DEFERRED" -eq 1 ]; then
        would "generate the store secret at privacy.secret_file if absent (32 random bytes, 0600, owner $USER_NAME)"
        would "check the uplink password at uplink.password_file (0600, owner $USER_NAME; HQ issues it, never generated)"
    fi
    [ -n "$SITE_READABLE" ] || return 0
    install_calibration radio_map "${SITE_RADIO_MAP:-}"
    install_calibration fingerprint "${SITE_FINGERPRINT:-}"
    if [ -n "${SITE_SECRET_FILE:-}" ]; then
        ensure_secret "$SITE_SECRET_FILE" "store secret (privacy.secret_file)"
    elif [ -n "${SITE_SECRET_ENV:-}" ]; then
        todo "the store secret comes from \$$SITE_SECRET_ENV (privacy.secret_env): set it in a drop-in for the units"
    else
        todo "privacy.secret_file is unset: the agent generates its secret in /var/lib/santi; nodes must share it, so set privacy.secret_file = \"$ETC/store.secret\" and rerun"
    fi
    if [ -n "${SITE_UPLINK_PASSWORD_FILE:-}" ]; then
        if [ -f "$(at "$SITE_UPLINK_PASSWORD_FILE")" ]; then
            fix_secret_mode "$SITE_UPLINK_PASSWORD_FILE" "uplink password (uplink.password_file)"
        else
            todo "put HQ's uplink password in $SITE_UPLINK_PASSWORD_FILE (uplink.password_file): install -m 0600 -o $USER_NAME -g $USER_NAME /dev/stdin $SITE_UPLINK_PASSWORD_FILE"
        fi
    fi
}
fix_secret_mode() {  # PATH WHAT: a secret's content is never read, printed or replaced here
    local path
    path="$(at "$1")"
    if [ "$(stat -c '%a %u:%g' "$path")" = "600 $(numeric_owner $USER_NAME:$USER_NAME)" ]; then
        ok "$1 ($2) present, 0600, kept"
    elif [ "$DRY_RUN" -eq 1 ]; then
        would "set $1 ($2) to 0600, owner $USER_NAME (content kept)"
    else
        chown "$(numeric_owner $USER_NAME:$USER_NAME)" "$path"; chmod 0600 "$path"
        changed "set $1 ($2) to 0600, owner $USER_NAME (content kept)"
    fi
}
ensure_secret() {  # PATH WHAT: generated once (32 random bytes as hex), never again
    local path
    path="$(at "$1")"
    if [ -f "$path" ]; then fix_secret_mode "$1" "$2"; return; fi
    if [ "$DRY_RUN" -eq 1 ]; then would "generate $1 ($2, 32 random bytes, 0600, owner $USER_NAME)"; return; fi
    mkdir -p "$(dirname "$path")"
    (umask 077; od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > "$path"; echo >> "$path")
    chown "$(numeric_owner $USER_NAME:$USER_NAME)" "$path"; chmod 0600 "$path"
    changed "generated $1 ($2, 0600, owner $USER_NAME)"
}

# -- 6. the node broker: per-node users, ACL, LAN listener ------------------------------------
step_node_broker() {
    if [ "$SITE_DEFERRED" -eq 1 ]; then
        would "on a locator with kind = \"node\" receivers: generate a password per node and for santi-locator in $ETC/node-broker/ (0600), write /etc/mosquitto/santi/passwd and acl (root:mosquitto, 0640) and /etc/mosquitto/conf.d/santi-nodes.conf (LAN listener on [nodes] port, no anonymous access)"
    fi
    if [ -z "$SITE_READABLE" ]; then return; fi
    if [ "$SITE_ROLE" = node ]; then
        skip "node broker: this Pi is a node; it logs in to the locator's broker with the password file the locator's installer made for it"
        return
    fi
    if [ -z "$SITE_NODE_RECEIVERS" ]; then skip "node broker: the site has no kind = \"node\" receivers"; return; fi
    local mosquitto_gid args out line
    mosquitto_gid="$(lookup_id group mosquitto)"
    if [ -z "$mosquitto_gid" ] && [ "$DRY_RUN" -eq 0 ]; then
        die "no mosquitto group in $ROOT: install the mosquitto package first (not with --skip apt)"
    fi
    args=(node-broker --root "$PY_ROOT" --owner "$(numeric_owner $USER_NAME:$USER_NAME)" --broker-gid "${mosquitto_gid:-0}")
    [ "$DRY_RUN" -eq 0 ] || args+=(--dry-run)
    out="$("${PY[@]}" "${args[@]}" < "$SITE_READABLE")" || { printf '%s\n' "$out"; die "node broker setup failed (above)"; }
    while IFS= read -r line; do
        echo "$line"
        [[ "$line" != changed:* ]] || CHANGES=$((CHANGES + 1))
    done <<< "$out"
    if [[ "$out" == *"changed: "* ]] && [ "$SYSTEMD_RUNNING" -eq 1 ]; then
        systemctl restart mosquitto
        changed "restarted mosquitto (new node broker settings)"
    fi
    # The broker now refuses anonymous clients: the locator logs in like every node.
    local login="$ETC/node-broker/santi-locator.password"
    if [ "$SITE_NODES_USERNAME" = santi-locator ] && [ "$SITE_NODES_PASSWORD_FILE" = "$login" ]; then
        ok "[nodes] logs in to the node broker as santi-locator"
    else
        todo "set [nodes] username = \"santi-locator\" and password_file = \"$login\" in the site config and rerun: the node broker refuses anonymous clients"
    fi
}

# -- 7. NFC: udev rule and kernel-driver blacklist ----------------------------------------------
# The USB readers nfcpy drives (nfc/clf/device.py usb_device_map; tests check the list).
NFC_USB_IDS=(054c:0193 04cc:0531 04cc:2533 04e6:5591 04e6:5593 054c:02e1 054c:06c1 054c:06c3 072f:2200)
step_nfc() {
    local rules="" id
    for id in "${NFC_USB_IDS[@]}"; do
        rules+="SUBSYSTEM==\"usb\", ACTION==\"add\", ATTRS{idVendor}==\"${id%%:*}\", ATTRS{idProduct}==\"${id##*:}\", GROUP=\"plugdev\", MODE=\"0660\""$'\n'
    done
    ensure_file /etc/udev/rules.d/60-santi-nfc.rules 0644 root:root "NFC readers nfcpy drives -> group plugdev" <<EOF
# USB NFC readers that nfcpy drives (nfc/clf/device.py): group plugdev, so the santi
# user opens them without root. Installed by scripts/install-pi.sh.
$rules
EOF
    # The kernel's NFC drivers claim these readers first; nfcpy needs them unbound
    # (nfcpy names the file and the drivers when it finds a reader busy).
    ensure_file /etc/modprobe.d/blacklist-nfc.conf 0644 root:root "pn533/port100 kernel drivers off for nfcpy" <<'EOF'
# Installed by scripts/install-pi.sh: nfcpy drives USB NFC readers from user space,
# so the kernel's NFC drivers must not claim them.
blacklist pn533_usb
blacklist pn533
blacklist port100
EOF
    if [ "$ROOT" = / ] && [ "$DRY_RUN" -eq 0 ]; then
        local module
        for module in pn533_usb port100 pn533; do
            if grep -q "^$module " /proc/modules 2>/dev/null; then
                modprobe -r "$module" && changed "unloaded kernel module $module"
            fi
        done
        if command -v udevadm >/dev/null && [ -d /run/udev ]; then udevadm control --reload; fi
    fi
}

# -- 8. systemd units ------------------------------------------------------------------------
UNITS=(santi-agent.service santi-node.service santi-wifi-monitor@.service)
enable_unit() {  # UNIT (an instance for templates)
    local unit="$1" template="$1" link
    [[ "$unit" != *@?*.service ]] || template="${unit%%@*}@.service"
    link="$UNIT_DIR/multi-user.target.wants/$unit"
    if [ "$(readlink "$(at "$link")" 2>/dev/null)" = "$UNIT_DIR/$template" ]; then
        ok "$unit enabled"; return
    fi
    if [ "$DRY_RUN" -eq 1 ]; then would "enable $unit"; return; fi
    if [ "$SYSTEMD_RUNNING" -eq 1 ]; then
        systemctl enable --quiet "$unit"
    else
        mkdir -p "$(at "$UNIT_DIR/multi-user.target.wants")"
        ln -sfn "$UNIT_DIR/$template" "$(at "$link")"
    fi
    changed "enabled $unit"
}
step_units() {
    local unit before=$CHANGES
    for unit in "${UNITS[@]}"; do
        ensure_file "$UNIT_DIR/$unit" 0644 root:root "systemd unit" < "$SRC/systemd/$unit"
    done
    if [ "$CHANGES" -ne "$before" ] && [ "$SYSTEMD_RUNNING" -eq 1 ]; then systemctl daemon-reload; fi
    if [ "$SITE_DEFERRED" -eq 1 ]; then
        would "enable santi-agent.service and/or santi-node.service for agent.role, and santi-wifi-monitor@<adapter>.service for [wifi] interface = \"<adapter>mon\""
    fi
    [ -n "$SITE_READABLE" ] || return 0
    case "$SITE_ROLE" in
        locator) enable_unit santi-agent.service ;;
        node) enable_unit santi-node.service ;;
        both) enable_unit santi-agent.service; enable_unit santi-node.service ;;
    esac
    if [ -n "$SITE_WIFI_RECEIVERS" ] && [ -z "$SITE_WIFI_INTERFACE" ]; then
        todo "receiver $SITE_WIFI_RECEIVERS is kind = \"wifi\" but [wifi] interface is unset: set interface = \"wlan1mon\" (the adapter's name + mon) and rerun"
    elif [ -n "$SITE_WIFI_INTERFACE" ]; then
        [[ "$SITE_WIFI_INTERFACE" == ?*mon ]] \
            || die "wifi.interface = \"$SITE_WIFI_INTERFACE\": name it <device>mon (e.g. wlan1mon); santi-wifi-monitor@<device> creates it"
        enable_unit "santi-wifi-monitor@${SITE_WIFI_INTERFACE%mon}.service"
    fi
}

# -- 9. the installed config, checked by the installed santi -----------------------------------
step_check() {
    if [ "$SITE_DEFERRED" -eq 1 ]; then would "run santi config check $SITE_PATH as $USER_NAME"; return; fi
    [ -n "$SITE_READABLE" ] || return 0
    if [ "$DRY_RUN" -eq 1 ]; then would "run santi config check $SITE_PATH as $USER_NAME"; return; fi
    if [ "$HAS_SYSTEM" -eq 0 ] || [ ! -x "$(at $VENV)/bin/santi" ]; then
        skip "santi config check $SITE_PATH: no installed santi in $ROOT"; return
    fi
    local why
    # As the service user: a secret it cannot read fails here, not at the first start.
    if why="$(in_target runuser -u $USER_NAME -- "$VENV/bin/santi" config check --quiet --config $SITE_PATH 2>&1)"; then
        ok "santi config check $SITE_PATH passes as $USER_NAME"
    else
        todo "santi config check $SITE_PATH: $why"
    fi
}

echo "install-pi: installing santi from $SRC into $ROOT$([ "$DRY_RUN" -eq 0 ] || echo ' (dry run: nothing changes)')"
step_apt
step_venv
read_site_facts
step_user
step_etc
step_node_broker
step_nfc
step_units
step_check
if [ "$DRY_RUN" -eq 1 ]; then
    echo "install-pi: dry run, nothing changed"
elif [ "$CHANGES" -eq 0 ]; then
    echo "install-pi: nothing to change, already installed"
else
    echo "install-pi: $CHANGES changes"
fi
if [ "$DRY_RUN" -eq 0 ] && [ -n "$SITE_READABLE" ]; then
    service=santi-agent; [ "$SITE_ROLE" != node ] || service=santi-node
    if [ "$SYSTEMD_RUNNING" -eq 0 ]; then
        echo "install-pi: systemd is not running here; on the Pi, start with: systemctl start $service"
    elif [ "$CHANGES" -gt 0 ]; then
        echo "install-pi: to apply: systemctl restart $service (or start it, the first time)"
    fi
fi
