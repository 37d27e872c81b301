import os

import pytest

os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# --- daemon: mosquitto broker and a moving-astronaut clip (see tests/daemon_helpers.py) ---

@pytest.fixture
def mosquitto(tmp_path):
    from daemon_helpers import MOSQUITTO, Broker

    if MOSQUITTO is None:
        # A required test component, not an optional one: failing beats a green run that tested nothing.
        pytest.fail("mosquitto is not installed: apt-get install -y mosquitto (.ci/run does this)")
    broker = Broker(tmp_path).start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def astronaut_clip(tmp_path_factory):
    """45 frames, 640x480, 15 fps, one face (scikit-image's public-domain astronaut) moving."""
    from daemon_helpers import make_clip

    return make_clip(tmp_path_factory.mktemp("clip") / "astronaut.avi")
