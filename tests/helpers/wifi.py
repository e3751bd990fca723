"""Wi-Fi for tests: radiotap-framed probe requests, and a TAP interface to inject them into a monitor source."""

from __future__ import annotations

import fcntl
import os
import socket
import struct


def radiotap(*, signal: int | None = -61, freq: int | None = 2437, flags: int | None = None,
             tsft: bool = False) -> bytes:
    """A radiotap header with the chosen fields, aligned as the spec requires."""
    present = 0
    body = b""
    offset = 8
    if tsft:
        present |= 1 << 0
        body += b"\x00" * ((-offset) % 8) + struct.pack("<Q", 123456)
    if flags is not None:
        present |= 1 << 1
        body += bytes([flags])
    if freq is not None:
        present |= 1 << 3
        pad = (-(offset + len(body))) % 2
        body += b"\x00" * pad + struct.pack("<HH", freq, 0x00A0)
    if signal is not None:
        present |= 1 << 5
        body += struct.pack("<b", signal)
    return struct.pack("<BBHI", 0, 0, 8 + len(body), present) + body


def probe(src: bytes = bytes.fromhex("68ecc5240344"), ssid: bytes = b"", subtype_fc: int = 0x40,
          extra_ies: bytes = b"\x01\x04\x02\x04\x0b\x16") -> bytes:
    header = bytes([subtype_fc, 0]) + b"\x00\x00" + b"\xff" * 6 + src + b"\xff" * 6 + b"\x10\x00"
    return header + b"\x00" + bytes([len(ssid)]) + ssid + extra_ies


TUNSETIFF = 0x400454CA

TUNSETLINK = 0x400454CD

IFF_TAP = 0x0002

IFF_NO_PI = 0x1000

SIOCGIFFLAGS = 0x8913

SIOCSIFFLAGS = 0x8914

IFF_UP = 0x1


class Tap:
    """A TAP interface that lives as long as its file descriptor."""

    def __init__(self, name: str, link_type: int | None = 803) -> None:
        self.fd = os.open("/dev/net/tun", os.O_RDWR)
        fcntl.ioctl(self.fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
        if link_type is not None:
            fcntl.ioctl(self.fd, TUNSETLINK, link_type)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            request = struct.pack("16sH", name.encode(), 0)
            flags = struct.unpack("16sH", fcntl.ioctl(sock, SIOCGIFFLAGS, request)[:18])[1]
            fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH", name.encode(), flags | IFF_UP))

    def send(self, frame: bytes) -> None:
        os.write(self.fd, frame)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
