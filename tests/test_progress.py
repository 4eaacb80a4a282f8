"""Progress: plain lines without control characters off a terminal, a tqdm bar on one."""

import io

import pytest

from seqfit.measure import progress as progress_mod
from seqfit.measure.progress import Progress, format_duration, format_postfix


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_non_tty_stream_is_plain_with_no_control_characters():
    stream = io.StringIO()
    with Progress(5, desc="train", stream=stream, plain_every_s=0) as bar:
        assert bar.plain
        for step in range(5):
            bar.update(1, loss=4.0 - step * 0.5, tok_s=12000.0, mem="1.2 GiB")
        bar.write("validation ppl 88.1 \x1b[31mred\x1b[0m\r")
    text = stream.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert len(lines) == 6  # every update printed a line (plain_every_s=0), then the message
    assert lines[0].startswith("train 1/5 (20%) loss=4 tok_s=12000 mem=1.2 GiB")
    assert "eta" in lines[0] and "eta" not in lines[4]
    assert lines[4].startswith("train 5/5 (100%) loss=2 ")
    assert lines[5] == "validation ppl 88.1 red"


def test_plain_lines_are_periodic(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(progress_mod.time, "monotonic", lambda: now[0])
    stream = io.StringIO()
    bar = Progress(100, stream=stream, plain_every_s=10.0)
    for _ in range(30):  # one step a second: a line at t=1 (first), 11, 21
        now[0] += 1.0
        bar.update(1, loss=1.0)
    assert [line.split()[1] for line in stream.getvalue().splitlines()] == ["1/100", "11/100", "21/100"]
    bar.close()  # the final count always reaches the log, with the eta off the real rate
    last = stream.getvalue().splitlines()[-1]
    assert last.startswith("train 30/100 (30%)") and "30s elapsed, eta 1m10s" in last
    bar.close()  # closing twice prints nothing more
    assert len(stream.getvalue().splitlines()) == 4


def test_unknown_total_and_resumed_initial():
    stream = io.StringIO()
    with Progress(None, stream=stream, plain_every_s=0, initial=7) as bar:
        bar.update(2)
    assert stream.getvalue().splitlines()[0].startswith("train 9 |")


def test_tty_stream_uses_tqdm():
    stream = FakeTTY()
    with Progress(10, desc="train", stream=stream) as bar:
        assert not bar.plain and bar._bar is not None
        bar.update(3, loss=2.5)
        bar.write("a message")
    text = stream.getvalue()
    assert "\r" in text  # the bar redraws in place
    assert "a message" in text and "loss=2.5" in text and "3/10" in text


@pytest.mark.parametrize("plain", [True, False])
def test_plain_can_be_forced(plain):
    stream = FakeTTY() if plain else io.StringIO()
    bar = Progress(3, stream=stream, plain=plain)
    assert bar.plain is plain
    bar.close()


def test_formatting():
    assert format_postfix({"loss": 4.123456, "tok_s": 12000.0, "mem": "1 GiB", "step": 3}) == "loss=4.123 tok_s=12000 mem=1 GiB step=3"
    assert [format_duration(s) for s in (5, 65, 3725)] == ["5s", "1m05s", "1h02m"]
