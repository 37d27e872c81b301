"""What streams do differently from stills, on real models: MediaPipe results read as arrays, the
face detector running beside the landmarker, and synthetic faces carried over between frames."""

from __future__ import annotations

from dataclasses import replace

import cv2
import mediapipe as mp
import numpy as np
import pytest
import skimage.data
from configs import config

from agent.commands.bench_scenes import (
    SCENE_BY_NAME,
    background,
    load_head,
    render_frame,
)
from agent.detection.detector import FaceDetector
from agent.detection.landmarks import FaceAnalyzer, reader
from agent.expression.classifier import EmotionClassifier
from agent.expression.metadata import ExpressionAnalyzer
from agent.runtime.backends import create_backend
from agent.synthesis.router import EmotionRouter
from agent.synthesis.synthesizer import Synthesizer
from agent.types import EMOTIONS

SCENE = SCENE_BY_NAME["1280x720_4faces"]  # the smallest face is too small for the landmarker's own detector


@pytest.fixture(scope="module")
def frames():
    head, backdrop = load_head(), background(SCENE.width, SCENE.height)
    return [cv2.cvtColor(render_frame(SCENE, i, head, backdrop), cv2.COLOR_BGR2RGB) for i in range(6)]


@pytest.fixture(scope="module")
def astronaut_face():
    with FaceAnalyzer(max_faces=1) as fa:
        return fa.detect(skimage.data.astronaut())[0]


def test_array_reader_gives_what_the_public_api_gives():
    rgb = np.ascontiguousarray(skimage.data.astronaut())
    with FaceAnalyzer(max_faces=1) as fa:
        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb)
        fast = fa._read(image)
        public = reader(fa._landmarker, arrays=False)(image)
    assert fa._read.__self__.__class__.__name__ == "ArrayReader", "MediaPipe's C results are read directly"
    assert len(fast.landmarks) == len(public.landmarks) == 1
    np.testing.assert_array_equal(fast.landmarks[0], public.landmarks[0])
    assert fast.landmarks[0].shape == (478, 3) and fast.landmarks[0].dtype == np.float32
    assert fast.blendshapes == public.blendshapes and len(fast.blendshapes[0]) == 52
    np.testing.assert_array_equal(fast.transforms[0], public.transforms[0])


def _run(analyzer, frames):
    return [analyzer.detect_all(f, 100 + 66 * i) for i, f in enumerate(frames)]


def test_detector_beside_the_landmarker_finds_what_running_it_after_finds(frames):
    with (FaceAnalyzer(mode="video", detector=FaceDetector()) as side_by_side,
          FaceAnalyzer(mode="video", detector=FaceDetector()) as in_turn):
        in_turn._pool.shutdown()
        in_turn._pool = None  # the detector after the landmarker, on this thread
        a, b = _run(side_by_side, frames), _run(in_turn, frames)
    for found_a, found_b in zip(a, b):
        assert len(found_a.faces) == len(found_b.faces) == len(SCENE.people)
        assert len(found_a.detections) == len(found_b.detections) >= len(SCENE.people)
        for fa, fb in zip(sorted(found_a.faces, key=lambda f: f.box), sorted(found_b.faces, key=lambda f: f.box)):
            # A face the landmarker misses may be tracked by a different ROI landmarker in the two
            # runs, and a tracked mesh differs from a fresh one by a pixel or two.
            assert np.abs(fa.landmarks[:, :2] - fb.landmarks[:, :2]).max() < 0.03 * fa.size


def test_a_face_on_its_side_is_meshed_on_a_turned_crop():
    """The landmarker finds no face lying on its side; the detector's turned pass does, and the mesh
    fitted on an upright crop comes back onto the face in the frame."""
    astronaut = skimage.data.astronaut()
    frame = np.full((720, 1280, 3), 200, np.uint8)
    frame[100:612, 60:572] = astronaut
    frame[100:612, 700:1212] = cv2.rotate(astronaut, cv2.ROTATE_90_CLOCKWISE)
    with FaceAnalyzer(mode="video", detector=FaceDetector()) as fa:
        assert fa._roi_landmarker is None  # streams make the IMAGE-mode crop landmarker when first needed
        found = fa.detect_all(frame, 100)
        assert fa._roi_landmarker is not None  # a turned crop is meshed in IMAGE mode
    assert len(found.faces) == 2
    upright, turned = sorted(found.faces, key=lambda f: f.box[0])
    # The astronaut's face turned clockwise about the image centre lands where its landmarks say.
    x, y = upright.landmarks[:, 0] - 60, upright.landmarks[:, 1] - 100  # in the astronaut image
    expected = np.stack([700 + (512 - y), 100 + x], 1)
    assert np.median(np.linalg.norm(turned.landmarks[:, :2] - expected, axis=1)) < 0.05 * upright.size
    roll = turned.head_pose()["roll"]
    assert 60 < abs(roll) < 120, roll


class CountingBackend:
    """The real generator, with a record of how many faces each call got."""

    def __init__(self, backend):
        self.backend, self.batches = backend, []

    def infer(self, batch):
        self.batches.append(len(batch))
        return self.backend.infer(batch)


@pytest.fixture(scope="module")
def generator():
    return create_backend("onnxruntime", "generator.int8")


def _faces(face, tracked=True):
    return [replace(face, landmarks=face.landmarks + (40.0 * k, 0, 0), track_id=k + 1 if tracked else None)
            for k in range(4)]


def test_synthetic_faces_are_carried_over_at_most_n_minus_1_frames(generator, astronaut_face):
    counting = CountingBackend(generator)
    synth = Synthesizer(counting, regenerate_every=2)
    made_at: dict[int, tuple[int, np.ndarray]] = {}
    for frame in range(6):
        jobs = synth.run([synth.prepare(f) for f in _faces(astronaut_face)])
        for j in jobs:
            assert j.generated is not None and j.error is None
            tid = j.face.track_id
            if j.reused:
                when, crop = made_at[tid]
                assert j.generated is crop and frame - when == 1
            else:
                made_at[tid] = (frame, j.generated)
    # All four on the first frame, then a steady two a frame rather than four every other frame.
    assert counting.batches == [4, 2, 2, 2, 2, 2]


def test_every_face_is_generated_when_untracked_or_every_frame(generator, astronaut_face):
    for faces, every in ((_faces(astronaut_face, tracked=False), 3), (_faces(astronaut_face), 1)):
        counting = CountingBackend(generator)
        synth = Synthesizer(counting, regenerate_every=every)
        for _ in range(3):
            jobs = synth.run([synth.prepare(f) for f in faces])
            assert not any(j.reused for j in jobs)
        assert counting.batches == [4, 4, 4]


def test_a_failed_face_is_masked_not_carried_over(generator, astronaut_face):
    class FailOnce(CountingBackend):
        def infer(self, batch):
            self.batches.append(len(batch))
            if len(self.batches) == 2:
                raise RuntimeError("generator fault")
            return self.backend.infer(batch)

    synth = Synthesizer(FailOnce(generator), regenerate_every=2)
    faces = _faces(astronaut_face)
    synth.run([synth.prepare(f) for f in faces])
    second = synth.run([synth.prepare(f) for f in faces])
    failed = [j for j in second if j.error]
    assert len(failed) == 2 and all(j.generated is None for j in failed)  # compose masks these
    assert all(j.reused for j in second if not j.error)
    third = synth.run([synth.prepare(f) for f in faces])
    # The failed faces have nothing to carry over, so they are generated again at once.
    failed_ids = {j.face.track_id for j in failed}
    assert all(not j.reused for j in third if j.face.track_id in failed_ids)


def test_carried_over_faces_keep_their_emotion_scores_without_reclassifying(generator, astronaut_face):
    synth = Synthesizer(generator, regenerate_every=2)
    expression = ExpressionAnalyzer(config())
    sizes = []
    infer = expression.classifier.backend.infer
    expression.classifier.backend.infer = lambda batch: sizes.append(len(batch)) or infer(batch)
    rgb = skimage.data.astronaut()
    faces = _faces(astronaut_face)
    scores = {}
    for frame in range(3):
        jobs = synth.run([synth.prepare(f) for f in faces])
        meta = expression.describe(rgb, faces, jobs)
        for j, item in zip(jobs, meta):
            if j.reused:
                assert item["anonymized_emotion"] == scores[j.face.track_id]
            scores[j.face.track_id] = item["anonymized_emotion"]
    # 4 originals, plus the synthetic faces made on that frame (4, then 2, then 2), each twice (flip TTA).
    assert sizes == [16, 12, 12]


def test_streams_route_only_the_faces_generated_now(astronaut_face):
    """A reused crop keeps the generator it was made with, so the classifier reads only the faces due."""
    names = ("generator-calm.int8", "generator-expressive.int8")
    backends = {n: CountingBackend(create_backend("onnxruntime", n)) for n in names}
    classifier = EmotionClassifier(config().inference)
    counted = CountingBackend(classifier.backend)
    classifier.backend = counted
    router = EmotionRouter(classifier, {e: names[e != "happy"] for e in EMOTIONS})
    synth = Synthesizer(None, regenerate_every=2, router=router, generators=backends)
    rgb = skimage.data.astronaut()
    made_by = {}
    for frame in range(3):
        jobs = synth.run([synth.prepare(f) for f in _faces(astronaut_face)], rgb)
        for j in jobs:
            assert j.generated is not None and j.generator in names
            if j.reused:  # carried over with the generator that made it
                assert made_by[j.face.track_id] == j.generator
            made_by[j.face.track_id] = j.generator
    # flip TTA doubles each classifier batch: 4 faces, then the 2 due on each later frame.
    assert counted.batches == [8, 4, 4]
    assert sum(sum(b.batches) for b in backends.values()) == 8


def test_detector_thresholds_go_by_box_size():
    """decode: one heatmap cell per box size, each scored 0.07; which become boxes follows the size tiers
    (tiny < small < the default < large), the tiny tier off until the manifest sets its size."""
    from agent.detection.centerface import Thresholds, decode

    sides = (10, 17, 40, 100)
    heatmap = np.zeros((40, 40), np.float32)
    scale, offset = np.zeros((2, 40, 40), np.float32), np.zeros((2, 40, 40), np.float32)
    marks = np.zeros((10, 40, 40), np.float32)
    cells = [(5 + 9 * k, 20) for k in range(len(sides))]
    for (y, x), side in zip(cells, sides):
        heatmap[y, x] = 0.07
        scale[:, y, x] = np.log(side / 4)

    def kept(t: Thresholds) -> list[int]:
        boxes, scores, _ = decode(heatmap, scale, offset, marks, (160, 160), t)
        return sorted(round(float(b[3] - b[1])) for b in boxes)

    assert kept(Thresholds(threshold=0.1, small=0.06, small_size=20)) == [10, 17]
    assert kept(Thresholds(threshold=0.1, small=0.06, small_size=20, tiny=0.08, tiny_size=15)) == [17]
    assert kept(Thresholds(threshold=0.05, small=0.08, small_size=20, large=0.08, large_size=64)) == [40]


def test_mediapipe_loads_without_its_plotting_helpers_until_they_are_used():
    # A fresh interpreter: this one has long imported mediapipe.
    import subprocess
    import sys

    code = ("import sys, agent.detection, mediapipe\n"
            "from mediapipe.tasks.python import vision\n"
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported at start'\n"
            "assert vision.drawing_utils.DrawingSpec(thickness=3).thickness == 3\n"
            "assert 'matplotlib.pyplot' in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_each_runtime_runs_the_detector_file_the_manifest_gives_it(backend):
    from agent.config import InferenceConfig
    from agent.runtime.manifest import load_manifest

    spec = load_manifest().detector
    detector = FaceDetector(InferenceConfig(backend=backend), spec, rotations=())
    assert detector.model.runtime == backend
    assert detector.model.session.path.name == (spec.openvino.file if backend == "openvino" else spec.file)
    assert detector.spec.threshold == (spec.openvino.threshold if backend == "openvino" else spec.threshold)
    found = detector.detect(skimage.data.astronaut())
    # The astronaut's face (x 181-270, y 72-178 in the 512 px photo), found by either network.
    assert any(d.box[0] < 225 < d.box[2] and d.box[1] < 125 < d.box[3] and d.size > 60 for d in found)


def test_stills_pad_to_few_input_sizes_and_find_the_same_faces():
    """OpenVINO's free-size compile is slow at each new input size, so stills pad to buckets: at most
    an eighth more pixels each way, eight sizes per doubling, and the same faces found as with the
    network's own multiple of 32."""
    from agent.config import InferenceConfig
    from agent.detection.centerface import STRIDE, padded_side
    from agent.runtime.manifest import load_manifest

    for side in range(1, 4097):
        exact, bucket = padded_side(side), padded_side(side, bucketed=True)
        assert exact % STRIDE == 0 and side <= exact < side + STRIDE
        assert bucket % STRIDE == 0 and exact <= bucket <= max(exact, side * 1.125 + STRIDE)
    assert len({padded_side(s, bucketed=True) for s in range(513, 1025)}) == 8

    detector = FaceDetector(InferenceConfig(backend="openvino"), load_manifest().detector)
    assert detector.model.session.bucketed
    canvas = np.full((700, 530, 3), 90, np.uint8)  # pads to 704 x 544 exactly, 768 x 576 in buckets
    canvas[100:612, 9:521] = skimage.data.astronaut()
    found = {}
    for bucketed in (True, False):
        detector.model.session.bucketed = bucketed
        found[bucketed] = [d.box for d in detector.detect(canvas) if d.size > 60]
    assert len(found[True]) == len(found[False]) == 1
    assert not detector.model.session._static, "stills on the CPU run the free-size compile alone"
    face = found[True][0]
    assert np.abs(face - found[False][0]).max() < 2
    assert face[0] < 9 + 225 < face[2] and face[1] < 100 + 125 < face[3]


def _found(dets, boxes) -> int:
    """How many of the known ``boxes`` have their centre inside some detection's box."""
    return sum(any(d.box[0] <= (b[0] + b[2]) / 2 <= d.box[2] and d.box[1] <= (b[1] + b[3]) / 2 <= d.box[3]
                   for d in dets) for b in boxes)


def test_a_stream_lying_upside_down_keeps_its_small_faces_found_between_turned_passes():
    """A camera mounted upside down: 24 faces of 24 px (and one of 110) turned 180 degrees, known boxes
    (tests/scenes.py). The turned canvas runs every third frame at a third of the size, too small for
    them; the frame found lying turned is searched turned at full size on every frame, and a restart
    (after the agent's warm-up frame) makes the stream's first frame a turned one again."""
    from scenes import scene

    from agent.config import InferenceConfig
    from agent.pipeline import STREAM_FULL_TURNS, STREAM_TURN_EVERY
    from agent.runtime.manifest import load_manifest

    lying, upright = scene("upside_down_crowd"), scene("grid_720p")
    stream = FaceDetector(InferenceConfig(backend="openvino"), load_manifest().detector, flip=False,
                          turn_every=STREAM_TURN_EVERY, full_turns=STREAM_FULL_TURNS)
    as_before = FaceDetector(InferenceConfig(backend="openvino"), load_manifest().detector, flip=False,
                             turn_every=STREAM_TURN_EVERY)
    stream.detect(upright.frame)  # a warm-up frame of another scene
    stream.restart()
    per_frame = [_found(stream.detect(lying.frame), lying.boxes) for _ in range(2 * STREAM_TURN_EVERY + 1)]
    assert per_frame == [len(lying.boxes)] * len(per_frame)
    # The oracle's own check: the turned canvas alone misses most of them on every frame.
    assert _found(as_before.detect(lying.frame), lying.boxes) < len(lying.boxes) - 5


def test_a_photo_lying_upside_down_keeps_the_faint_faces_of_its_full_turn():
    """A group photo stored upside down: one face of 110 px and 24 of 14 px, known boxes. The upright
    pass finds the large face faintly; that it finds it at all must not make the full turn a false
    alarm, which would keep only the full turn's clear boxes and drop the faint small faces. The
    control is the same photo turned back upright."""
    from scenes import _turned_crowd

    from agent.config import InferenceConfig
    from agent.runtime.manifest import load_manifest

    lying = _turned_crowd("upside_down_small_crowd", 180, small=14)
    w, h = lying.size
    upright = np.rot90(lying.frame, 2).copy()
    upright_boxes = [(w - b[2], h - b[3], w - b[0], h - b[1]) for b in lying.boxes]
    stills = FaceDetector(InferenceConfig(backend="openvino"), load_manifest().detector, full_turns=1)
    control = _found(stills.detect(upright), upright_boxes)
    assert control >= 8  # the oracle's own check: faces this small are found at all
    # The full turn runs the very pixels of the control's upright pass, so it finds what the control finds
    # (one face of slack for suppression among the extra boxes of the other passes; before, 4 against 10).
    assert _found(stills.detect(lying.frame), lying.boxes) >= control - 1


@pytest.mark.parametrize("angle", [180, 90])
def test_a_photo_lying_turned_with_only_small_faces_is_searched_turned(angle):
    """A group photo of 24 faces of 20 px and no larger one, stored upside down or on its side. The
    turned canvas, at a third of the size, sees them at 7 px, too small to say that the photo lies turned,
    and the upright pass finds none of them clearly: a photo with no clear upright face is searched turned
    at full size every way."""
    from scenes import _turned_crowd

    from agent.config import InferenceConfig
    from agent.runtime.manifest import load_manifest

    lying = _turned_crowd(f"small_crowd_turned_{angle}", angle, small=20, large=False)
    stills = FaceDetector(InferenceConfig(backend="openvino"), load_manifest().detector, full_turns=1)
    canvas_only = FaceDetector(InferenceConfig(backend="openvino"), load_manifest().detector)
    assert _found(stills.detect(lying.frame), lying.boxes) == len(lying.boxes)
    # The oracle's own check: without the full turns the detector misses most of them (8-12 of 24 found).
    assert _found(canvas_only.detect(lying.frame), lying.boxes) < len(lying.boxes) - 5
