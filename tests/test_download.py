"""Downloads against a local HTTP server: resume with Range, checksums, a progress bar."""

from __future__ import annotations

import hashlib
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from underbudget.data.sources import download
from underbudget.errors import DataError

DATA = bytes(range(256)) * 1200  # 300 kB: several reads of the client's buffer
MD5 = hashlib.md5(DATA).hexdigest()


class Server:
    """Serves ``files`` over HTTP with Range support; can cut responses halfway."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.requests: list[tuple[str, str | None]] = []
        self.cut_next = 0  # how many coming responses stop after half of their body
        self.ignore_range = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the http.server API
                name = self.path.lstrip("/")
                wanted = self.headers.get("Range")
                server.requests.append((name, wanted))
                data = server.files.get(name)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if wanted and not server.ignore_range:
                    start = int(re.fullmatch(r"bytes=(\d+)-", wanted)[1])
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_next:
                    server.cut_next -= 1
                    body = body[: len(body) // 2]  # then the connection closes
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"


@pytest.fixture
def server():
    srv = Server({"data.bin": DATA, "other.bin": b"something else"})
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def test_interrupted_download_resumes_from_the_partial_file(server, tmp_path):
    dest = tmp_path / "data.bin"
    server.cut_next = 1
    download.download_file((server.url("data.bin"),), dest, MD5, progress=False)
    assert dest.read_bytes() == DATA and not download.part_path(dest).exists()
    assert server.requests == [("data.bin", None), ("data.bin", f"bytes={len(DATA) // 2}-")]


def test_a_partial_file_left_by_an_earlier_run_is_resumed(server, tmp_path):
    dest = tmp_path / "data.bin"
    server.cut_next = 1
    with pytest.raises(DataError, match=r"data.bin.part is kept; run again to resume"):
        download.download_file((server.url("data.bin"),), dest, MD5, progress=False, retries=0)
    assert download.part_path(dest).read_bytes() == DATA[: len(DATA) // 2] and not dest.exists()
    download.download_file((server.url("data.bin"),), dest, MD5, progress=False)
    assert dest.read_bytes() == DATA
    assert server.requests[-1] == ("data.bin", f"bytes={len(DATA) // 2}-")


def test_a_resumed_file_that_fails_its_checksum_starts_over(server, tmp_path, capsys):
    dest = tmp_path / "data.bin"
    download.part_path(dest).write_bytes(b"x" * 1000)  # not the start of this file
    download.download_file((server.url("data.bin"),), dest, MD5, progress=False)
    assert dest.read_bytes() == DATA
    assert server.requests == [("data.bin", "bytes=1000-"), ("data.bin", None)]
    assert "failed its checksum" in capsys.readouterr().err


def test_the_checksum_of_the_whole_resumed_file_is_checked(server, tmp_path):
    dest = tmp_path / "data.bin"
    server.cut_next = 1
    with pytest.raises(DataError, match=f"expected {'0' * 32}") as info:
        download.download_file((server.url("data.bin"),), dest, "0" * 32, progress=False)
    assert f"MD5 {MD5}, expected" in str(info.value)  # all the bytes, not the first half
    assert list(tmp_path.iterdir()) == []  # neither the file nor a partial one is kept
    assert [r for _, r in server.requests] == [None, f"bytes={len(DATA) // 2}-", None]


def test_a_server_that_ignores_range_is_read_from_the_start(server, tmp_path):
    dest = tmp_path / "data.bin"
    download.part_path(dest).write_bytes(DATA[:5000])
    server.ignore_range = True
    download.download_file((server.url("data.bin"),), dest, MD5, progress=False)
    assert dest.read_bytes() == DATA and len(server.requests) == 1


def test_a_corrupt_complete_file_is_downloaded_again_once(server, tmp_path, monkeypatch, capsys):
    target = tmp_path / "mnist"
    target.mkdir()
    (target / "data.bin").write_bytes(DATA[:-1] + b"!")
    resource = download.Resource("data.bin", MD5, (server.url("data.bin"),))
    monkeypatch.setitem(download.RESOURCES, "mnist", [resource])
    download.fetch("mnist", target, progress=False)
    assert (target / "data.bin").read_bytes() == DATA
    assert "is corrupt (MD5" in capsys.readouterr().err and len(server.requests) == 1
    download.fetch("mnist", target)  # verified: nothing downloaded
    assert len(server.requests) == 1

    bad = download.Resource("data.bin", MD5, (server.url("other.bin"),))
    monkeypatch.setitem(download.RESOURCES, "mnist", [bad])
    (target / "data.bin").write_bytes(b"broken")
    with pytest.raises(DataError, match="could not download data.bin"):
        download.fetch("mnist", target, progress=False)
    assert len(server.requests) == 2  # one more try, not a loop


def test_progress_bar_on_stderr_only_when_asked_or_on_a_terminal(server, tmp_path, capsys):
    download.download_file((server.url("data.bin"),), tmp_path / "a.bin", MD5, progress=True)
    err = capsys.readouterr().err
    assert "a.bin" in err and "100%" in err and "300k/300k" in err
    download.download_file((server.url("data.bin"),), tmp_path / "b.bin", MD5)  # not a tty
    assert "%" not in capsys.readouterr().err
