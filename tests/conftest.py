"""Shared test set-up: the suite never reaches the network.

Tests of the dataset loaders' `download=True` path stand torchvision in with fakes that write
local files (tests/test_data.py); this guard makes any real attempt to open a connection
beyond this machine fail at once with a clear message, instead of hanging or needing a
network, so "offline" is enforced rather than assumed.
"""

import ipaddress
import socket

import pytest

_connect = socket.socket.connect


class NetworkBlocked(RuntimeError):
    """A test tried to reach another machine."""


def _local(address) -> bool:
    if not isinstance(address, tuple):  # AF_UNIX paths
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: resolving it would itself use the network
        return False


def _guarded_connect(self, address):
    if not _local(address):
        raise NetworkBlocked(f"tests may not reach the network (connect to {address!r})")
    return _connect(self, address)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)


def defaults(section: str, **overrides):
    """A config section as `config.validate` fills it, with `overrides` merged in (nested dicts
    key by key): stage functions get every key a real run gives them."""
    from ntkpipe import config

    def merge(base, extra):
        out = dict(base)
        for key, value in extra.items():
            out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(
                out.get(key), dict) else value
        return out

    return merge(config.validate({"sweeps": {"w": {}}})[section], overrides)
