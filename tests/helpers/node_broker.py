"""The store's node broker as ``scripts/install-pi.sh`` sets it up: logins required, the installer's ACL."""

from __future__ import annotations

from pathlib import Path

from agent.config import SiteConfig
from agent.install_site import acl_text, broker_users
from agent.localbroker import Broker
from tests.helpers.pki import password_settings


def installed_node_broker(workdir: Path, site: SiteConfig, users: dict[str, str]) -> Broker:
    """A (not yet started) broker in ``workdir`` that knows ``users`` (name -> password) and the site's ACL."""
    workdir.mkdir()
    (workdir / "acl").write_text(acl_text(site, broker_users(site)), encoding="utf-8")
    settings = password_settings(workdir, users)
    return Broker(workdir, extra_config=f"{settings}\nacl_file {workdir / 'acl'}")
