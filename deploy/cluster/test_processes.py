"""PID files: a process is ours only while it still runs the program we started."""

import pytest

from deploy.cluster import paths, processes


@pytest.fixture
def state(tmp_path, monkeypatch):
    for name in ("STATE_DIR", "LOG_DIR", "PID_DIR"):
        monkeypatch.setattr(paths, name, tmp_path / name.lower())
    paths.STATE_DIR.mkdir()
    return tmp_path


def test_start_read_and_stop(state):
    pid = processes.start("sleeper", ["/bin/sleep", "30"])
    assert processes.read_pid("sleeper") == pid
    processes.stop("sleeper", timeout=5)
    assert not processes.alive(pid)
    assert processes.read_pid("sleeper") is None
    assert not processes.pid_file("sleeper").exists()


def test_a_reused_pid_is_not_ours(state):
    pid = processes.start("sleeper", ["/bin/sleep", "30"])
    processes.pid_file("sleeper").write_text(f"{pid} /usr/bin/etcd\n")
    assert processes.read_pid("sleeper") is None
    processes.stop_pid(pid, timeout=5)
    assert not processes.alive(pid)
