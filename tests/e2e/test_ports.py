"""The ports a MooncakeStore bootstrap gives ``mooncake_master``: free, and out of the ephemeral range.

A fixed port (TransferQueue's 50050/50051) inside the kernel's ephemeral range was taken by an
outgoing connection once in CI, and the master exited at start. These tests hold real sockets.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest
import ray

from kvplane.adapters.transfer_queue._deployment import CONTROLLER_NAME, NAMESPACE
from kvplane.adapters.transfer_queue._ports import CANDIDATES, ephemeral_range, unused_ports

from .conftest import Deployment

HOST = "127.0.0.1"


@pytest.fixture
def held() -> Iterator[list[int]]:
    """Two candidate ports, the first held by a listener and the second by a plain bound socket."""
    sockets = []
    for listen in (True, False):
        sock = socket.socket()
        sockets.append(sock)
        sock.bind((HOST, unused_ports(HOST, 1)[0]))
        if listen:
            sock.listen()
    try:
        yield [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def test_ports_are_distinct_free_and_outside_the_ephemeral_range():
    ports = unused_ports(HOST, 5)
    assert len(set(ports)) == 5
    assert all(p in CANDIDATES and p not in ephemeral_range() for p in ports)
    for port in ports:
        with socket.socket() as sock:
            sock.bind((HOST, port))  # free indeed


def test_held_ports_are_passed_over(held: list[int]):
    free = unused_ports(HOST, 1, candidates=[*held, *unused_ports(HOST, 1)])
    assert free[0] not in held
    # None of the candidates free: the OS picks (a port nothing holds, never a held one).
    picked = unused_ports(HOST, 2, candidates=held)
    assert len(set(picked)) == 2 and not set(picked) & set(held)
    for port in picked:
        with socket.socket() as sock:
            sock.bind((HOST, port))


def test_a_host_whose_ephemeral_range_covers_every_candidate_gets_ports_the_os_picks():
    ephemeral = ephemeral_range()
    ports = unused_ports(HOST, 2, candidates=[ephemeral.start, ephemeral.stop - 1])
    assert len(set(ports)) == 2 and all(p in ephemeral for p in ports)  # the OS's picks, not an error


@pytest.mark.parametrize("deployment", ["mooncake_cpu"], indirect=True)
def test_the_running_master_listens_on_its_chosen_ports(deployment: Deployment):
    controller = ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
    store = ray.get(controller.get_config.remote(), timeout=30).backend.MooncakeStore
    addresses = [urlparse("//" + store.metadata_server), urlparse("//" + store.master_server_address)]
    assert all(a.port in CANDIDATES and a.port not in ephemeral_range() for a in addresses)
    for address in addresses:  # the master serves both (the deployment's client talks to it)
        with socket.create_connection((address.hostname, address.port), timeout=5):
            pass
    assert deployment.client.mooncake_master.poll() is None
