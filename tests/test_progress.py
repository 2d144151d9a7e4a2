"""Progress bars off a terminal redraw rarely (issue 20 item 4: a log file got ~160 bytes of
``\\r`` updates per video from the extract bar)."""

from __future__ import annotations

import io
import time

from pipeline.execution import _Progress
from pipeline.extract_config import ExtractSummary
from pipeline.progress import progress_bar
from pipeline.worker import VideoResult


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _redraws(file) -> int:
    return file.getvalue().count("\r")


def test_a_bar_in_a_log_redraws_at_most_every_interval_and_at_the_end():
    log, terminal = io.StringIO(), _Terminal()
    for file in (log, terminal):
        bar = progress_bar(total=30, file=file)
        for _ in range(30):
            time.sleep(0.02)
            bar.update(1)
        bar.close()
    assert _redraws(log) <= 3 and "30/30" in log.getvalue()  # first draw, last, close
    assert _redraws(terminal) >= 5  # a terminal keeps tqdm's own 0.1 s


def test_the_extract_bar_is_throttled_in_a_log(capsys):
    progress = _Progress(ExtractSummary(feature_sets=[], num_videos=30, num_skipped=0), 30,
                         enabled=True)
    for i in range(30):
        time.sleep(0.02)
        progress.record(VideoResult(f"v{i}", "ok", num_frames=10))
    progress.close()
    err = capsys.readouterr().err
    assert err.count("\r") <= 3 and "30/30" in err
