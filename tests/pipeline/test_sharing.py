"""pipeline.models.sharing: one model per concurrent caller (or one behind a lock), under threads and fork."""
import multiprocessing
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import pytest

from pipeline.models import sharing


class _Model:
    """A FAKE model that notices when two callers use it at once."""

    def __init__(self):
        self.busy = False

    def __call__(self):
        assert not self.busy, "two callers at once on one instance"
        self.busy = True
        time.sleep(0.01)
        self.busy = False
        return id(self)


@pytest.mark.parametrize("mode", sharing.MODES)
def test_no_instance_is_used_by_two_threads_at_once(mode):
    pool = sharing.ModelPool("fake", _Model, way="pool")
    try:
        sharing.set_mode(mode)

        def work(_):
            with pool.borrow() as model:
                return model()

        with ThreadPoolExecutor(4) as executor:
            ids = set(executor.map(work, range(40)))
        assert len(ids) == (1 if mode == "lock" else pool.built) and 1 <= pool.built <= 4
        with ThreadPoolExecutor(4) as executor:               # a new thread pool reuses what was built
            list(executor.map(work, range(40)))
        assert pool.built <= 4
    finally:
        sharing.set_mode("default")


def test_locked_model_builds_once_per_key_and_serialises_calls():
    built = []
    models = sharing.LockedModel("fake", lambda key: built.append(key) or _Model())
    active, peak, lock = [0], [0], threading.Lock()

    def work(_):
        with models.borrow("a") as model:
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            model()
            with lock:
                active[0] -= 1

    with ThreadPoolExecutor(4) as executor:
        list(executor.map(work, range(20)))
    assert built == ["a"] and peak[0] == 1


def _hog_in_child(image):
    from pipeline.models.dlib_models import hog_detect

    return hog_detect(image, 0)


def test_dlib_detections_are_the_same_in_forked_processes():
    from skimage import data

    from pipeline.models.dlib_models import HOG_DETECTORS, hog_detect

    image = np.ascontiguousarray(data.astronaut())
    HOG_DETECTORS.warm()                                       # a parent that already holds models forks
    expected = hog_detect(image, 0)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as executor:
        results = list(executor.map(_hog_in_child, [image] * 4))
    for boxes, scores in results:
        np.testing.assert_array_equal(boxes, expected[0])
        np.testing.assert_array_equal(scores, expected[1])
