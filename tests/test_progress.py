"""Progress reports: a line every few seconds when the stream is not a terminal."""

import io

from d2lnet.progress import Progress


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_at_most_every_interval(monkeypatch):
    import d2lnet.progress

    clock = FakeClock()
    monkeypatch.setattr(d2lnet.progress.time, "monotonic", clock)
    stream = io.StringIO()  # not a terminal
    progress = Progress(10, "work", "tile", stream=stream, every=5.0)
    for _ in range(4):  # 4 tiles in 4 s: no line yet
        clock.now += 1.0
        progress.update()
    assert stream.getvalue() == ""
    clock.now += 1.0
    progress.update()  # 5 tiles in 5 s
    progress.set_postfix(loss="0.5")
    clock.now += 10.0
    progress.update(5)  # 10 tiles: 5 more in 10 s
    progress.close()  # nothing new since the last line: no repeat
    assert stream.getvalue().splitlines() == [
        "work: 5/10 tiles (50%), 1 tiles/s, 0m05s left",
        "work: 10/10 tiles (100%), 0.5 tiles/s, loss 0.5",
    ]


def test_disabled_and_unknown_totals():
    stream = io.StringIO()
    Progress(3, "quiet", "step", stream=stream, enabled=False, every=0).update()
    assert stream.getvalue() == ""
    progress = Progress(None, "open", "image", stream=stream, every=0)
    progress.update()
    assert stream.getvalue().startswith("open: 1 images, ")
