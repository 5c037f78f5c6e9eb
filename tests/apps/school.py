"""The test suite's graftq app: models and callables importable by worker processes.

`make_app()` builds a fresh App from the environment (GRAFTQ_REDIS_URL, ...);
`app` is the module-level one that `graftq worker --app tests.apps.school:app` loads.

Tests synchronise with a running body through files, never through sleeps: a body
writes its identity to `pid_file` once it runs (`tests.processes.write_pid`), and the
`held*` callables then wait until the test creates the file `gate`.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import signal
import struct
import sys
import termios
import threading
import time
from pathlib import Path
from typing import Any

from graftq import App, Entity
from tests.processes import write_pid


class Address(Entity):
    city: str


class Student(Entity):
    name: str
    age: int
    major: str = "undeclared"
    address: Address | None = None
    tags: list[str] = []
    friends: list[Address] = []


class GraduateStudent(Entity):
    name: str
    age: int
    undergraduate_degree: str


class Counter(Entity):
    value: int = 0


class Boom(Exception):
    """A custom exception type that must survive the trip back."""


class QuotaError(Exception):
    """A custom exception whose __init__ takes more than its message: it must come back as
    itself all the same (its `limit`, set only by __init__, may not)."""

    def __init__(self, message: str, limit: int) -> None:
        super().__init__(message)
        self.limit = limit


GATE_TIMEOUT = 120.0  # seconds a held body waits for its gate before it gives up


def hold(gate: str, pid_file: str) -> None:
    """Say this body runs (its pid in `pid_file`), then wait until the file `gate` exists."""
    write_pid(pid_file)
    deadline = time.monotonic() + GATE_TIMEOUT
    while not Path(gate).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {gate} was not opened within {GATE_TIMEOUT}s")
        time.sleep(0.01)


def make_app(name: str = "school") -> App:
    app = App(name)

    @app.register
    def birthday(student: Student) -> Student:
        student.age += 1
        return student

    @app.register("transform_student")
    def transform(student: Student) -> GraduateStudent:
        return GraduateStudent(
            name=student.name, age=student.age, undergraduate_degree=student.major
        )

    @app.register
    def bonus(student_age: int, bonus_amount: float) -> float:
        return student_age * bonus_amount

    @app.register
    def increment(counter: Counter) -> Counter:
        pause = float(os.environ.get("GRAFTQ_TEST_INCREMENT_PAUSE", "0"))
        if pause:
            time.sleep(pause)
        counter.value += 1
        return counter

    @app.register
    def move(student: Student, city: str) -> Student:
        student.address = Address(city=city)
        return student

    @app.register
    def relocate(address: Address, city: str) -> Address:
        address.city = city
        return address

    @app.register
    def pair(student: Student) -> tuple[Student, GraduateStudent]:
        student.age += 1
        return student, GraduateStudent(
            name=student.name, age=student.age, undergraduate_degree=student.major
        )

    @app.register
    def fail(message: str) -> int:
        raise ValueError(message)

    @app.register
    def fail_custom(message: str) -> int:
        raise Boom(message)

    @app.register
    def upstream_timeout(message: str) -> int:
        """Raises the builtin TimeoutError (as asyncio.wait_for does): the body's own error."""
        raise TimeoutError(message)

    @app.register
    def parse(text: str) -> int:
        """Raises json's JSONDecodeError, whose args are its message only (pickle carries
        more: its __init__ wants the document and position too)."""
        return int(json.loads(text))

    @app.register
    def read(path: str) -> str:
        """Raises FileNotFoundError, whose message names the file its args do not hold."""
        return Path(path).read_text()

    @app.register
    def fail_pair(message: str, pair: list[int]) -> int:
        """Raises with a tuple among its args, which JSON would bring back as a list."""
        raise ValueError(message, tuple(pair))

    @app.register
    def over_quota(n: int) -> int:
        raise QuotaError(f"quota of {n} exceeded", n)

    @app.register(isolation="none")
    def over_quota_inline(n: int) -> int:
        raise QuotaError(f"quota of {n} exceeded", n)

    @app.register
    def wrong_type(student: Student) -> GraduateStudent:
        return student  # type: ignore[return-value]

    @app.register
    def spoil(student: Student) -> Student:
        student.age = "old"  # type: ignore[assignment]  # assignment is not validated
        return student

    @app.register
    def out_of_memory(megabytes: int) -> int:
        """What a body that exhausts its memory raises (an allocation refused)."""
        raise MemoryError(f"cannot allocate {megabytes} MB")

    @app.register
    def crash(how: str) -> int:
        if how == "exit":
            os._exit(3)
        os.kill(os.getpid(), signal.SIGSEGV if how == "segv" else signal.SIGKILL)
        return 0

    @app.register(time_limit=1.0)
    def hang(pid_file: str) -> int:
        write_pid(pid_file)
        time.sleep(600)
        return 0

    @app.register
    def sleepy(seconds: float, pid_file: str) -> int:
        write_pid(pid_file)
        time.sleep(seconds)
        return 1

    @app.register
    def held(gate: str, pid_file: str) -> int:
        hold(gate, pid_file)
        return 1

    @app.register
    def held_increment(counter: Counter, gate: str, pid_file: str) -> Counter:
        hold(gate, pid_file)
        counter.value += 1
        return counter

    @app.register
    def saved_birthday(student: Student) -> Student:
        """Stores what it returns (privately: what it returns is what is committed)."""
        student.age += 1
        return app.entities.put(student)

    @app.register
    def meddle(student: Student) -> int:
        student.age = 1000
        app.entities.put(student)
        return student.age

    @app.register
    def chatty(message: str) -> int:
        """Logs and prints from inside the isolated body."""
        logging.getLogger("tests.apps.school").warning("chatty says %s", message)
        print(f"chatty prints {message}")
        return len(message)

    @app.register
    def murmur(message: str) -> int:
        """Logs at INFO from inside the isolated body."""
        logging.getLogger("tests.apps.school").info("murmur says %s", message)
        return len(message)

    @app.register
    def forks(how: str) -> str:
        """Forks, and the forked process returns from the body too, as the body does
        (`how`: "return" or "raise"); the body waits for it to end first."""
        pid = os.fork()
        if pid == 0:
            if how == "raise":
                raise Boom("from the forked process")
            return "forked process"
        os.waitpid(pid, 0)
        return "body"

    @app.register
    def chatter(size: int) -> int:
        """Leaves a thread logging `size`-character lines for as long as the process lives."""
        talking = threading.Event()
        line = "x" * size

        def talk() -> None:
            while True:
                talking.set()
                logging.getLogger("tests.apps.school").warning("chatter %s", line)

        threading.Thread(target=talk, daemon=True).start()
        talking.wait()
        return size

    @app.register
    def babble(size: int) -> int:
        """Logs `size`-character lines without end."""
        line = "x" * size
        while True:
            logging.getLogger("tests.apps.school").warning("babble %s", line)

    @app.register
    def dies_answering(size: int) -> str:
        """Returns `size` characters, and a thread of its ends the process once part of
        the answer is on its way (in the socket's queue), the rest not."""
        answering = threading.main_thread().ident

        def queued(fd: int) -> int:
            return struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0" * 4))[0]

        def end_while_answering() -> None:
            while True:
                frame = sys._current_frames().get(answering)
                while frame is not None:
                    if frame.f_code.co_name == "write_all":
                        fd = frame.f_locals["fd"]
                        while not queued(fd):
                            pass
                        os._exit(0)
                    frame = frame.f_back
                time.sleep(0.0005)

        threading.Thread(target=end_while_answering, daemon=True).start()
        return "x" * size

    @app.register
    def countdown(n: int) -> Any:
        """Returns a generator: a value nothing carries, nor records."""
        return (i for i in range(n, 0, -1))

    @app.register
    def niceness() -> int:
        """The scheduling priority the body runs at."""
        return os.getpriority(os.PRIO_PROCESS, 0)

    @app.register
    async def async_birthday(student: Student) -> Student:
        await asyncio.sleep(0.01)
        student.age += 1
        return student

    @app.register(isolation="none")
    def inline_birthday(student: Student) -> Student:
        student.age += 1
        return student

    @app.register(cache=True)
    def slow_square(x: int, marker_file: str) -> int:
        with open(marker_file, "a") as marker:
            marker.write("ran\n")
        return x * x

    return app


app = make_app()
