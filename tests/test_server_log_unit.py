"""The server's own log (observability/setup.py): lines written in batches, in order, a warning at once."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.observability.setup import BatchingHandler, TextFormatter

from .helpers import wait_until


@pytest.fixture
def written(tmp_path: Path) -> Iterator[tuple[logging.Logger, Path]]:
    path = tmp_path / "server.log"
    with open(path, "w") as stream:
        handler = BatchingHandler(stream, linger_s=0.05)
        handler.setFormatter(TextFormatter())
        logger = logging.getLogger(f"test.batching.{os.getpid()}.{id(path)}")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        try:
            yield logger, path
        finally:
            logger.removeHandler(handler)
            handler.close()


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if not line.startswith("    |")]


def test_info_lines_are_written_together_soon_after(written: tuple[logging.Logger, Path]) -> None:
    logger, path = written
    # when a few info lines are logged
    for index in range(5):
        logger.info("invocation %d", index, extra={"function": "f", "logs": "START\nEND\n"})
    # then they are written, all of them in order with their fields and logs, within a moment
    lines = wait_until(lambda: len(found := _lines(path)) == 5 and found, timeout=5)
    assert [line.split(": ", 1)[1] for line in lines] == [f"invocation {i}  function=f" for i in range(5)]
    assert path.read_text().count("    | START") == 5


def test_a_warning_is_written_at_once_after_the_lines_before_it(written: tuple[logging.Logger, Path]) -> None:
    logger, path = written
    # given info lines still waiting for their batch
    logger.info("first")
    logger.info("second")
    # when a warning is logged
    logger.warning("third")
    # then all three are in the file already, in order, without waiting for the batch
    assert [line.rsplit(": ", 1)[1] for line in _lines(path)] == ["first", "second", "third"]


def test_flush_writes_what_waits(written: tuple[logging.Logger, Path]) -> None:
    logger, path = written
    logger.info("pending")
    logger.handlers[0].flush()       # as logging.shutdown() does at exit
    assert _lines(path)[-1].endswith("pending")
