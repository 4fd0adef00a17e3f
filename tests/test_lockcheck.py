"""The lock check: this venv equals locks/dev.txt, and one hand-edited pin, a missing or an extra package fails it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from raal import lockcheck
from raal.lockcheck import LockError, differences, read_lock

REPO = Path(__file__).resolve().parent.parent
DEV_LOCK = REPO / "locks" / "dev.txt"

SAMPLE = """\
# a comment line
numpy==2.4.6 ; sys_platform == 'linux' or sys_platform == 'darwin' \\
    --hash=sha256:aaaa \\
    --hash=sha256:bbbb
    # via raal
Torch_Vision==0.29.1 \\
    --hash=sha256:cccc
only-on-windows==1.0 ; sys_platform == 'win32' \\
    --hash=sha256:dddd
"""


def test_read_lock_joins_continuations_drops_hashes_and_applies_markers(tmp_path):
    lock = tmp_path / "lock.txt"
    lock.write_text(SAMPLE)
    assert read_lock(lock) == {"numpy": "2.4.6", "torch-vision": "0.29.1"}  # names canonical, win32 left out


@pytest.mark.parametrize("text, needle", [
    ("numpy>=2\n", "numpy is not pinned to one version (>=2)"),
    ("numpy==2.*\n", "numpy is not pinned to one version"),
    ("numpy\n", "numpy is not pinned to one version (any)"),
    ("not a requirement !!\n", "lock.txt:1: not a requirement"),
    ("# nothing\n", "names no package for this platform"),
])
def test_a_lock_that_pins_loosely_or_not_at_all_is_refused(tmp_path, text, needle):
    lock = tmp_path / "lock.txt"
    lock.write_text(text)
    with pytest.raises(LockError, match=None) as err:
        read_lock(lock)
    assert needle in str(err.value)


def test_differences_name_each_missing_extra_and_moved_package():
    locked = {"numpy": "2.4.6", "torch": "2.14.1", "ray": "2.60.0"}
    present = {"numpy": "2.4.6", "torch": "2.14.0", "requests": "2.34.2", "raal": "0.1.0"}
    assert differences(locked, present) == [
        "ray: locked at 2.60.0, not installed",
        "requests: 2.34.2 installed, not in the lock",
        "torch: 2.14.0 installed, locked at 2.14.1",
    ]  # raal itself (the editable install) is expected beside the lock


def test_this_environment_equals_the_dev_lock():
    """What CI runs is what the lock says: every locked package at its version, nothing else installed (read from
    the venv's site-packages: other tests may put folders on this process's sys.path)."""
    problems = differences(read_lock(DEV_LOCK), lockcheck.installed(lockcheck.venv_site_packages(sys.prefix)))
    assert problems == [], "\n".join(problems)


def test_one_pin_edited_by_hand_fails_the_check_with_one_line_naming_it(tmp_path):
    edited = tmp_path / "dev.txt"
    text = DEV_LOCK.read_text()
    assert "\nnumpy==2.4.6 " in text
    edited.write_text(text.replace("\nnumpy==2.4.6 ", "\nnumpy==2.4.5 "))
    p = subprocess.run([sys.executable, "-m", "raal.lockcheck", str(edited)], capture_output=True, text=True,
                       cwd=REPO, timeout=120)
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert lines[0].endswith("numpy: 2.4.6 installed, locked at 2.4.5")
    assert len(lines) == 2 and "differs from" in lines[1] and "in 1 package(s)" in lines[1]


def test_the_unedited_lock_passes_and_runs_the_command_after_the_separator():
    p = subprocess.run([sys.executable, "-m", "raal.lockcheck", str(DEV_LOCK), "--", sys.executable, "-c",
                        "print('ran after the check')"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "equals" in p.stdout and p.stdout.strip().endswith("ran after the check")


def test_a_failed_check_never_runs_the_command(tmp_path):
    edited = tmp_path / "dev.txt"
    edited.write_text(DEV_LOCK.read_text().replace("\nnumpy==2.4.6 ", "\nnumpy==2.4.5 "))
    marker = tmp_path / "ran"
    p = subprocess.run([sys.executable, "-m", "raal.lockcheck", str(edited), "--", "touch", str(marker)],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert p.returncode == 1 and not marker.exists()


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    for args in ([str(tmp_path / "missing.txt")], [str(DEV_LOCK), "--venv", str(tmp_path)]):
        p = subprocess.run([sys.executable, "-m", "raal.lockcheck", *args], capture_output=True, text=True,
                           cwd=REPO, timeout=120)
        assert p.returncode == 2 and p.stdout == ""
        assert len(p.stderr.strip().splitlines()) == 1 and p.stderr.startswith("raal.lockcheck: error: ")


def test_a_venv_is_read_from_its_site_packages(tmp_path):
    """--venv reads another environment's distributions (Label Studio's venv is checked this way)."""
    site = tmp_path / "lib" / "python3.11" / "site-packages"
    (site / "numpy-2.4.6.dist-info").mkdir(parents=True)
    (site / "numpy-2.4.6.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: numpy\nVersion: 2.4.6\n")
    lock = tmp_path / "lock.txt"
    lock.write_text("numpy==2.4.6\n")
    assert lockcheck.main([str(lock), "--venv", str(tmp_path)]) == 0
    lock.write_text("numpy==2.4.6\nscipy==1.17.1\n")
    assert lockcheck.main([str(lock), "--venv", str(tmp_path)]) == 1


def test_unlocked_lists_what_make_install_uninstalls(tmp_path, capsys):
    """A package the lock no longer names is listed (make install pipes the list to pip uninstall); raal is not."""
    site = tmp_path / "lib" / "python3.11" / "site-packages"
    for name, version in (("numpy", "2.4.6"), ("toml", "0.10.2"), ("raal", "0.1.0")):
        info = site / f"{name}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lock = tmp_path / "lock.txt"
    lock.write_text("numpy==2.4.6\n")
    assert lockcheck.main([str(lock), "--venv", str(tmp_path), "--unlocked"]) == 0
    assert capsys.readouterr().out.split() == ["toml"]
