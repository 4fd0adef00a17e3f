"""The console's pieces without Ray: the progress text, the live line on a pipe, the round table."""
import io

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


def test_verbose_flag_is_an_override():
    assert parse_args(["-v", "conf=demo"]) == ("demo", ["log.verbose=true"])
    assert parse_args(["--verbose"]) == (None, ["log.verbose=true"])


def test_round_table_lines_align_under_the_header():
    names = ["svpp_margin", "random"]
    head = console.format_header(names)
    row = console.format_row(3, {"svpp_margin": {"n_labeled": 400, "accuracy": 0.8125},
                                 "random": {"n_labeled": 400}}, names)
    assert head.split() == ["round", "labels", "svpp_margin", "random"]
    assert row.split() == ["3", "400", "0.8125", "-"] and len(row) == len(head)
