"""Issue 17 spike: one object per column on three engines, against raw TransferQueue SimpleStorage.

Run from the repository root (2 cores: nothing else of yours running)::

    PYTHONPATH=$PWD python benchmarks/spike_columnar.py [--mooncake] [--yuanrong /tmp/yr_site]

Contenders, interleaved in rotating order per round (``kvplane_tools.bench.tq.interleave``), on
the GRPO batch (512 x [4096] int64 + f32 + a f32 scalar, 24 MiB):

- ``raw_simple``: TransferQueue ``kv_batch_put``/``kv_batch_get`` on SimpleStorage (one unit);
- ``ray_zero_copy``/``clone``: the physical references of the KV bench;
- ``ray_columnar``: each column one object owned by a long-lived actor (the actor ``ray.put``s the
  producer's column: two copies; Ray 2.56 removed ``ray.put(_owner=)``), so the producer may exit; get = ``ray.get`` of the column refs, zero-copy NumPy views, then a slice;
- ``mooncake_columnar``: a ``mooncake_master`` this script starts on its own ports (never through
  TransferQueue's auto-init, which kills every master on the host); each column one object,
  ``batch_put_from``/``batch_get_into`` through buffers registered once;
- ``yuanrong_columnar``: an openYuanrong datasystem worker started by ``dscli`` on its own ports from
  a throwaway install (``pip install --target``); each column one object, ``mcreate``/``mset_buffer``
  and ``get_buffers`` (view) or a copy out of it.

Not part of the package: a record of the measurement behind docs/decisions.md (issue 17).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Any

import numpy as np
import torch

from kvplane_tools.batches import grpo_batch
from kvplane_tools.bench.tq import _clone_contender, _ray_contenders, _summaries, _timed, interleave


def ray_columnar(td: Any) -> Any:
    import ray

    @ray.remote(num_cpus=0)
    class ColumnOwner:
        def ping(self) -> bool:
            return True

        def store(self, *columns: Any) -> list[Any]:
            # Arguments arrive as zero-copy views of the caller's objects; the actor's own ray.put
            # makes it the owner (Ray >= 2.56 removed ray.put(_owner=...)).
            return [ray.put(c) for c in columns]

    owner = ColumnOwner.options(name="spike-column-owner", lifetime="detached").remote()
    ray.get(owner.ping.remote())
    columns = {name: td.get(name).numpy() for name in td.keys()}

    def run() -> dict[str, float]:
        def put() -> dict[str, Any]:
            args = [ray.put(a) for a in columns.values()]
            return dict(zip(columns, ray.get(owner.store.remote(*args))))

        refs, put = _timed(put)

        def get() -> dict[str, torch.Tensor]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                got = ray.get(list(refs.values()))
                return {n: torch.from_numpy(a) for n, a in zip(refs, got)}

        out, get_s = _timed(get)
        _, slice_s = _timed(lambda: {n: t[128:384] for n, t in get().items()})
        _, copy_s = _timed(lambda: {n: t.clone() for n, t in get().items()})
        del out
        refs.clear()
        return {"put": put, "get": get_s, "get_slice": slice_s, "get_copy": copy_s}

    return run, lambda: ray.kill(owner)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mooncake_columnar(td: Any) -> Any:
    from mooncake.store import MooncakeDistributedStore

    rpc, http, metrics = _free_port(), _free_port(), _free_port()
    master_bin = os.path.join(os.path.dirname(sys.executable), "mooncake_master")
    log = open(os.path.join(tempfile.gettempdir(), "spike_mooncake_master.log"), "w")
    master = subprocess.Popen(
        [
            master_bin, "-default_kv_lease_ttl=999999", f"--rpc_port={rpc}", "--rpc_address=127.0.0.1",
            "--enable_http_metadata_server=true", "--http_metadata_server_host=127.0.0.1",
            f"--http_metadata_server_port={http}", f"-metrics_port={metrics}",
        ],
        stdout=log, stderr=subprocess.STDOUT,
    )
    time.sleep(2.0)
    started = time.perf_counter()
    store = MooncakeDistributedStore()
    rc = store.setup("127.0.0.1", f"http://127.0.0.1:{http}/metadata", 512 << 20, 128 << 20, "tcp", "",
                     f"127.0.0.1:{rpc}")
    if rc != 0:
        master.terminate()
        raise RuntimeError(f"mooncake setup failed: {rc}")
    setup_s = time.perf_counter() - started
    names = list(td.keys())
    src = {n: td.get(n).contiguous() for n in names}
    dst = {n: torch.empty_like(src[n]) for n in names}
    for t in [*src.values(), *dst.values()]:
        store.register_buffer(t.data_ptr(), t.nbytes)
    counter = [0]

    def run() -> dict[str, float]:
        counter[0] += 1
        keys = [f"spike{counter[0]}@{n}" for n in names]
        _, put = _timed(lambda: store.batch_put_from(keys, [src[n].data_ptr() for n in names],
                                                     [src[n].nbytes for n in names]))
        _, get = _timed(lambda: store.batch_get_into(keys, [dst[n].data_ptr() for n in names],
                                                     [dst[n].nbytes for n in names]))
        assert torch.equal(dst["input_ids"], src["input_ids"])
        store.batch_remove(keys, True) if hasattr(store, "batch_remove") else None
        return {"put": put, "get": get}

    def stop() -> None:
        store.close()
        master.terminate()
        master.wait(10)

    return run, stop, setup_s


def yuanrong_columnar(td: Any, site: str) -> Any:
    sys.path.insert(0, site)
    from yr import datasystem

    worker, meta = _free_port(), _free_port()
    dscli = [sys.executable, os.path.join(site, "bin", "dscli")]
    env = {**os.environ, "PYTHONPATH": site}
    started = time.perf_counter()
    subprocess.run(
        [*dscli, "start", "-w", "--worker_address", f"127.0.0.1:{worker}", "--metastore_address",
         f"127.0.0.1:{meta}", "--start_metastore_service", "true", "--arena_per_tenant", "1",
         "--shared_memory_size_mb", "2048"],
        env=env, check=True, capture_output=True, timeout=120,
    )
    client = datasystem.KVClient("127.0.0.1", worker)
    client.init()
    start_s = time.perf_counter() - started
    names = list(td.keys())
    arrays = {n: td.get(n).numpy() for n in names}
    counter = [0]

    def run() -> dict[str, float]:
        counter[0] += 1
        keys = [f"spike{counter[0]}@{n}" for n in names]

        def put() -> None:
            bufs = client.mcreate(keys, [arrays[n].nbytes for n in names])
            for buf, n in zip(bufs, names):
                np.frombuffer(buf.MutableData(), dtype=np.uint8)[:] = arrays[n].view(np.uint8).reshape(-1)
            client.mset_buffer(bufs)

        _, put_s = _timed(put)

        def view() -> dict[str, torch.Tensor]:
            bufs = client.get_buffers(keys)
            return {
                n: torch.frombuffer(memoryview(b), dtype=td.get(n).dtype).view(td.get(n).shape)
                for n, b in zip(names, bufs)
            }

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            got, get_s = _timed(view)
            assert torch.equal(got["input_ids"], td.get("input_ids"))
            _, copy_s = _timed(lambda: {n: t.clone() for n, t in view().items()})
        del got
        client.delete(keys)
        return {"put": put_s, "get": get_s, "get_copy": copy_s}

    def stop() -> None:
        subprocess.run([*dscli, "stop", "--worker_address", f"127.0.0.1:{worker}"], env=env,
                       capture_output=True, timeout=60)

    return run, stop, start_s


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mooncake", action="store_true")
    parser.add_argument("--yuanrong", default=None, help="a pip --target folder holding openyuanrong-datasystem")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    from kvplane.adapters.transfer_queue import TransferQueueDataPlaneClient
    from kvplane_tools.bench.raw_tq import RawKV
    from kvplane_tools.bench.tq import bench_config

    keys, td, tags = grpo_batch()
    nbytes = sum(td.get(n).nbytes for n in td.keys())
    started = time.perf_counter()
    client = TransferQueueDataPlaneClient(bench_config("simple"), bootstrap=True)
    report: dict[str, Any] = {"tq_simple_bootstrap_s": round(time.perf_counter() - started, 1)}
    raw = RawKV(client)
    stops = []
    try:
        def raw_simple() -> dict[str, float]:
            _, put = _timed(lambda: raw.put(keys, "spike", td, tags))
            _, get = _timed(lambda: raw.get(keys, "spike", list(td.keys())))
            raw.clear(keys, "spike")
            return {"put": put, "get": get}

        contenders = {"raw_simple": raw_simple, **_ray_contenders(td), "clone": _clone_contender(td)}
        run, stop = ray_columnar(td)
        contenders["ray_columnar"] = run
        stops.append(stop)
        if args.mooncake:
            run, stop, setup_s = mooncake_columnar(td)
            report["mooncake_client_setup_s"] = round(setup_s, 2)
            contenders["mooncake_columnar"] = run
            stops.append(stop)
        if args.yuanrong:
            run, stop, start_s = yuanrong_columnar(td, args.yuanrong)
            report["yuanrong_start_s"] = round(start_s, 2)
            contenders["yuanrong_columnar"] = run
            stops.append(stop)
        times = interleave(contenders, repeats=args.repeats)
        for name, ops in times.items():
            report[name] = {
                op: round(s["median"] * 1e3, 3)
                for op, s in ((op, v) for op, v in _summaries(ops).items())
                if op.endswith("_s")
            }
    finally:
        for stop in stops:
            stop()
        client.close()
    report["bytes"] = nbytes
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
