"""Logging without Ray: raal's handlers are installed once, and Ray's expected-condition loggers stay quiet."""
import logging

from raal import logs


def test_log_handlers_are_installed_once(tmp_path, monkeypatch):
    monkeypatch.setenv(logs.ENV_FILE, "")  # setup() sets them: restored after the test
    monkeypatch.setenv(logs.ENV_LEVEL, "")
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        for _ in range(3):
            logs.setup(tmp_path / "raal.log", "INFO", verbose=False)
        ours = [h for h in root.handlers if getattr(h, logs._TAG, False)]
        assert len(ours) == 1
        logging.getLogger("raal.test").info("one line")
        ours[0].flush()
        assert (tmp_path / "raal.log").read_text().count("one line") == 1
        logging.getLogger(logs.QUIET_LOGGERS[0]).warning("State API unavailable")
        ours[0].flush()
        assert "State API" not in (tmp_path / "raal.log").read_text()
    finally:
        for h in [h for h in root.handlers if h not in before]:
            root.removeHandler(h)
            h.close()
