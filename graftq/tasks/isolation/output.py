"""What a body run in a zygote's child logs and prints, carried to the pool process.

A body forked from the pool process inherits its logging (and a worker's stdout
redirection); a zygote's child does not. So the zygote points the root logger and
``sys.stdout``/``sys.stderr`` at the data channel once (`forward`), each record or write
becomes an ``L`` frame, and the pool process logs or prints it as it arrives (`replay`),
in the job's context, tagged as if the body had run there. Only a child's frames go
there: a thread the App's module started in the zygote itself is no call's, and writes
to the zygote's own stderr instead (it must neither garble a call's frames nor hold a
lock of the channel's while the zygote forks).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import socket
import sys
import threading

from graftq.tasks.isolation.process import Frame, send

OUTPUT = b"L"


class Output:
    """Sends what the body logs and prints to the pool process, one frame per write."""

    def __init__(self, data: socket.socket) -> None:
        self._data = data
        self._lock = threading.Lock()  # a body's threads may log at once
        self._zygote = os.getpid()  # the process that forwards: its children run calls

    def close(self) -> None:
        """Send no more, for as long as this process lives: a write in progress (another
        thread's) ends first, and any other waits forever. Before the last frame of a
        process that exits with threads still logging, so that none goes into or after it.
        """
        self._lock.acquire()

    def send(self, stream: str, text: str, name: str = "", level: int = 0) -> None:
        if os.getpid() == self._zygote:  # a thread of the zygote's own, not a call's
            with contextlib.suppress(OSError):
                os.write(2, (f"{name}: {text}\n" if name else text).encode(errors="replace"))
            return
        line = {"stream": stream, "text": text, "name": name, "level": level}
        with self._lock:
            send(self._data, OUTPUT, json.dumps(line).encode())


class _Handler(logging.Handler):
    def __init__(self, output: Output) -> None:
        super().__init__()
        self._output = output

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            self._output.send("log", text, record.name, record.levelno)
        except Exception:
            self.handleError(record)


class _Stream(io.TextIOBase):
    def __init__(self, output: Output, stream: str) -> None:
        self._output = output
        self._stream = stream

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if text:
            self._output.send(self._stream, text)
        return len(text)


_forwarded: list[Output] = []  # the Output of this process, once `forward` made it


def forward(data: socket.socket) -> None:
    """From now on, this process's logging and printing go to `data` as frames."""
    output = Output(data)
    _forwarded.append(output)
    logging.getLogger().handlers = [_Handler(output)]
    sys.stdout = _Stream(output, "out")
    sys.stderr = _Stream(output, "err")


def close() -> None:
    """`Output.close` of this process's output, if it is forwarded."""
    for output in _forwarded:
        output.close()


def replay(frame: Frame) -> Frame | None:
    """The frame, unless it is the body's output: that is logged here (None)."""
    kind, payload = frame
    if kind != OUTPUT:
        return frame
    line = json.loads(payload)
    if line["stream"] == "log":
        logging.getLogger(line["name"]).log(line["level"], "%s", line["text"])
    else:  # printed: to this process's own stream (a worker logs it, tagged)
        stream = sys.stdout if line["stream"] == "out" else sys.stderr
        stream.write(line["text"])
        stream.flush()
    return None
