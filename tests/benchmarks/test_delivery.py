"""The delivery benchmark (issue 11) on a small file: what it reports is what happened.

Guards that a cut body is resumed from where it stopped (bytes sent == file size, one GET
per cut plus one), that every variant hashes to the file's digest, and that the report
renders. The hub-egress half starts real processes and is left to the benchmark run.
"""

from __future__ import annotations

import threading
from pathlib import Path

import httpx

from benchmarks import delivery


def test_resumes_send_each_byte_once_and_the_report_renders(tmp_path: Path) -> None:
    size = 1 << 20
    res = delivery.run_resume(size, repeats=1, workdir=tmp_path)
    assert res["gets"] == {"httpx": 1, "fetcher": 1, "cut-50": 2, "cut-10x9": 10}
    assert res["resumes"] == {"httpx": 0, "fetcher": 0, "cut-50": 1, "cut-10x9": 9}
    assert all(sent == size for sent in res["sent_bytes"].values())
    text = delivery.render({"when": "today", "machine": "test", "resume": res})
    assert "9 resumes" in text and "| 10 | 1.0000 |" in text


def test_the_counting_proxy_counts_what_the_upstream_sends(tmp_path: Path) -> None:
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"x" * 100_000)
    server = delivery._FileServer(blob)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    proxy = delivery._CountingProxy(server.server_address[1])
    try:
        r = httpx.get(proxy.url + delivery.PATH, timeout=10)
        assert r.content == blob.read_bytes()
        assert proxy.down >= 100_000  # the body and the status line and headers
    finally:
        proxy.close()
        server.shutdown()
        server.server_close()
        thread.join(5)
