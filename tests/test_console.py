"""The console's pieces without Ray: the progress text, the live line on a pipe, idempotent log handlers."""
import io
import logging

from raal import console
from raal.run import parse_args


def test_progress_text_has_rate_and_eta():
    snap = {"phase": {"phase": "embedding", "done": 50, "total": 200, "unit": "img", "started": 100.0},
            "context": {"round": 2, "arm": "asvp_margin"}}
    assert console.progress_text(snap, now=110.0) == \
        "  round 2 · asvp_margin · embedding 50/200 img, 5.0 img/s, ETA 30s"
    snap["phase"].update(done=0, total=None, unit="", phase="selection")
    assert console.progress_text(snap, now=103.0) == "  round 2 · asvp_margin · selection 0, 3s"
    assert console.progress_text({"phase": None}) is None
    done = {"phase": {"phase": "embedding", "done": 200, "total": 200, "unit": "img", "started": 100.0, "at": 120.0}}
    assert "200/200" in console.progress_text(done, now=121.0)
    assert console.progress_text(done, now=130.0) is None  # finished long ago: not shown again


def test_on_a_pipe_the_live_line_is_printed_at_most_once_per_interval():
    out = io.StringIO()
    d = console.Display(out, pipe_every_s=0.0)
    d.show("  a")
    d.show("  b")
    d.print("row")
    slow = console.Display(out, pipe_every_s=3600)
    slow.show("  never")
    assert out.getvalue() == "  a\n  b\nrow\n"


def test_log_handlers_are_installed_once(tmp_path, monkeypatch):
    monkeypatch.setenv(console.ENV_FILE, "")  # setup() sets them: restored after the test
    monkeypatch.setenv(console.ENV_LEVEL, "")
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        for _ in range(3):
            console.setup(tmp_path / "raal.log", "INFO", verbose=False)
        ours = [h for h in root.handlers if getattr(h, console._TAG, False)]
        assert len(ours) == 1
        logging.getLogger("raal.test").info("one line")
        ours[0].flush()
        assert (tmp_path / "raal.log").read_text().count("one line") == 1
        logging.getLogger(console.QUIET_LOGGERS[0]).warning("State API unavailable")
        ours[0].flush()
        assert "State API" not in (tmp_path / "raal.log").read_text()
    finally:
        for h in [h for h in root.handlers if h not in before]:
            root.removeHandler(h)
            h.close()


def test_verbose_flag_is_an_override():
    assert parse_args(["-v", "conf=demo"]) == ("demo", ["log.verbose=true"])
    assert parse_args(["--verbose"]) == (None, ["log.verbose=true"])
