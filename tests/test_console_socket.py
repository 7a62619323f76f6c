"""The console on a TCP socket (runners/console_socket.py): the session's
reading, waiting and typing against a local fake board, and the QEMU option
that puts the console there (no QEMU is started here)."""

from __future__ import annotations

import re
import socket
import threading
from pathlib import Path

import pytest
from mantra.board import Board
from mantra.errors import MantraError
from mantra.runners import runner_for
from mantra.runners.console_socket import ConsoleSession, connect, free_port, url


class FakeBoard:
    """Listens on a port like QEMU's `-serial tcp:...,server=on`: prints a
    banner, answers each line it receives with `echo: <line>`, and stops
    after the line `bye`."""

    def __init__(self) -> None:
        self.port = free_port()
        self.server = socket.create_server(("127.0.0.1", self.port))
        self.received: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        client, _ = self.server.accept()
        with client:
            client.sendall(b"MantraCore ready\r\npartial")
            buffered = b""
            while chunk := client.recv(4096):
                buffered += chunk
                while b"\n" in buffered:
                    line, buffered = buffered.split(b"\n", 1)
                    self.received.append(line.decode())
                    if line == b"bye":
                        return
                    client.sendall(b" line\r\necho: " + line + b"\r\n")
        self.server.close()


def test_session_waits_types_and_sees_the_board_stop(tmp_path: Path) -> None:
    board = FakeBoard()
    session = ConsoleSession(connect(board.port, timeout=5), board.port, tmp_path / "console.log")
    try:
        assert session.url == url(board.port) == f"socket://127.0.0.1:{board.port}"
        ready = session.wait_for(r"MantraCore (\w+)", timeout=5)
        assert ready[1] == "ready"
        # A line is only matched once it is complete.
        with pytest.raises(MantraError, match=r"s passed before the console printed a line matching '\^partial"):
            session.wait_for(r"^partial\r?$", timeout=0.3)
        mark = session.mark()
        session.send_line("MANTRA-ATTEST-REQUEST 00")
        echo = session.wait_for(r"echo: (.*?)\r?$", timeout=5, start=mark)
        assert echo[1] == "MANTRA-ATTEST-REQUEST 00" and echo.start() >= mark
        assert session.text.startswith("MantraCore ready\r\npartial line\r\n")
        with pytest.raises(MantraError, match="line ends"):
            session.send_line("two\nlines")
        session.send_line("bye")
        with pytest.raises(MantraError, match="the board stopped before"):
            session.wait_for("never printed", timeout=5)
        assert session.closed
        assert board.received == ["MANTRA-ATTEST-REQUEST 00", "bye"]
    finally:
        session.close()
    assert (tmp_path / "console.log").read_bytes().startswith(b"MantraCore ready\r\n")


def test_nothing_listening_is_a_clear_error() -> None:
    with pytest.raises(MantraError, match=r"cannot connect to the console socket socket://127\.0\.0\.1:\d+"):
        connect(free_port(), timeout=0.2)
    with pytest.raises(MantraError, match="the board stopped before its console socket"):
        connect(free_port(), timeout=5, alive=lambda: False)


def test_qemu_console_socket_waits_for_the_client(board: Board, tmp_path: Path) -> None:
    image = tmp_path / "image.img"
    image.write_bytes(bytes(512))
    runner = runner_for(board, {}, image, tmp_path)
    assert runner.capabilities.console_socket
    cmd = runner.command(runner._socket_console(4555), icount=False)
    assert cmd[-6:] == ["-display", "none", "-monitor", "none", "-serial", "tcp:127.0.0.1:4555,server=on,wait=on"]
