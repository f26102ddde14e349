import os


def test_runs_in_app() -> None:
    assert os.getcwd() == "/app"


def test_fails_when_asked() -> None:
    assert not os.path.exists("/app/FAIL")
