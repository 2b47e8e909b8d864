"""Local orchestration pieces that need no running service."""

from __future__ import annotations

from pathlib import Path

import milvus

from tagalong.devstack.milvus_server import loopback_config


def test_every_ip_of_the_real_milvus_template_becomes_loopback() -> None:
    template = (Path(milvus.__file__).parent / "data" / "config.yaml.template").read_text()
    empty_ips = [line for line in template.splitlines() if line.strip().startswith("ip:")]
    assert len(empty_ips) >= 6, "the template changed: check which components register an address"
    rendered = loopback_config(template)
    ip_lines = [line.strip() for line in rendered.splitlines() if line.strip().startswith("ip:")]
    assert ip_lines and all(line == "ip: 127.0.0.1" for line in ip_lines)
    # Nothing else changed.
    assert len(rendered.splitlines()) == len(template.splitlines())


def test_loopback_config_keeps_indentation_and_comments_elsewhere() -> None:
    text = "proxy:\n  ip: # if not specify address\n  port: 19530\n# ip: commented\n"
    assert loopback_config(text) == "proxy:\n  ip: 127.0.0.1\n  port: 19530\n# ip: commented\n"
