"""Detection and alignment on real faces: scikit-image's astronaut and transformed copies of it."""

import cv2
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from skimage import data

from pipeline import geometry
from pipeline import images
from pipeline.contract.errors import BackendMissingError, ConfigError
from pipeline.contract.tables import vectors_to_arrow, vectors_to_numpy
from pipeline.stages.faces import (
    FACES_SCHEMA,
    AlignConfig,
    detect_align_shard,
    pick_face,
)


def _astronaut_points(image):
    """Reference 68 points of the untransformed astronaut (dlib on its HOG box)."""

    from pipeline.models.dlib_models import hog_detector, shape_predictor

    rects, scores, _ = hog_detector().run(image, 1, 0.0)
    rect = rects[int(np.argmax(scores))]
    return np.array([[p.x, p.y] for p in shape_predictor()(image, rect).parts()], dtype=np.float64)


def _copies(image):
    """(name, image, 2x3 transform original -> copy, flipped)."""
    out = [("original", image, np.eye(3)[:2], False)]
    for degrees in (-20, -10, 10, 20):
        m = cv2.getRotationMatrix2D((230.0, 160.0), degrees, 1.0)
        out.append((f"rot{degrees}", cv2.warpAffine(image, m, (512, 512)), m, False))
    for scale in (0.6, 1.5):
        m = np.array([[scale, 0, 0], [0, scale, 0.0]])
        side = int(512 * scale)
        out.append((f"scale{scale}", cv2.warpAffine(image, m, (side, side)), m, False))
    out.append(("flip", np.ascontiguousarray(image[:, ::-1]), np.array([[-1.0, 0, 511], [0, 1, 0]]), True))
    m = np.array([[1.0, 0, 310], [0, 1, 190]])
    out.append(("canvas", cv2.warpAffine(image, m, (1100, 900)), m, False))
    return out


@pytest.fixture(scope="module")
def astronaut_shard(tmp_path_factory):
    root = tmp_path_factory.mktemp("astronaut")
    image = data.astronaut()
    copies = _copies(image)
    names = []
    for name, img, _, _ in copies:
        Image.fromarray(img).save(root / f"{name}.png")
        names.append(f"{name}.png")
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    Image.fromarray(np.full((300, 300, 3), 128, np.uint8)).save(root / "blank.png")
    names += ["corrupt.jpg", "blank.png", "missing.png"]
    samples = pa.table({"sample_id": pa.array(np.arange(100, 100 + len(names)), pa.int64()), "relpath": names})
    faces, crops, quarantine = detect_align_shard(samples, root, AlignConfig(), progress=False)
    return dict(root=root, copies=copies, faces=faces, crops=crops, quarantine=quarantine,
                reference=_astronaut_points(image))


def test_detection_finds_the_face_in_every_copy(astronaut_shard):
    faces = astronaut_shard["faces"]
    assert faces.schema.equals(FACES_SCHEMA, check_metadata=False)
    n = len(astronaut_shard["copies"])
    assert faces.column("status").to_pylist()[:n] == ["ok"] * n
    assert all(s >= 0.5 for s in faces.column("score").to_pylist()[:n])
    assert faces.column("detector").to_pylist() == ["dlib"] * faces.num_rows


def test_eye_centres_land_within_2px_of_the_template(astronaut_shard):
    template = geometry.template_points(256)
    transforms = geometry.transform_from_row(vectors_to_numpy(astronaut_shard["faces"].column("transform")))
    for i, (name, _, to_copy, flipped) in enumerate(astronaut_shard["copies"]):
        true_points = geometry.map_points(astronaut_shard["reference"], to_copy)        # [68, 2] in the copy
        in_crop = geometry.map_points(true_points, transforms[i])
        eyes = np.stack([in_crop[36:42].mean(0), in_crop[42:48].mean(0)])
        if flipped:  # the subject's right eye is now on the image right
            eyes = eyes[::-1]
        error = np.linalg.norm(eyes - template[:2], axis=1)
        assert error.max() < 2.0, f"{name}: eye centres {error} px from the template"


def test_bad_inputs_are_quarantined_not_crashed(astronaut_shard):
    faces, crops, quarantine = astronaut_shard["faces"], astronaut_shard["crops"], astronaut_shard["quarantine"]
    status = dict(zip(faces.column("sample_id").to_pylist(), faces.column("status").to_pylist()))
    n = len(astronaut_shard["copies"])
    assert [status[100 + n + k] for k in range(3)] == ["unreadable", "no_face", "unreadable"]
    reasons = {q.sample_id: q.reason for q in quarantine}
    assert reasons == {100 + n: "unreadable_image", 101 + n: "no_face", 102 + n: "unreadable_image"}
    assert crops.shape == (n + 3, 256, 256, 3) and crops.dtype == np.uint8
    assert crops[n:].max() == 0 and crops[:n].mean() > 50
    assert faces.column("transform").null_count == 3


def test_several_faces_keep_the_largest_most_central(tmp_path):
    face = data.astronaut()[40:240, 120:320]                                     # ~200 px around the face
    canvas = np.full((600, 900, 3), 200, np.uint8)
    canvas[200:400, 350:550] = face                                              # big, central
    canvas[20:120, 20:120] = cv2.resize(face, (100, 100), interpolation=cv2.INTER_AREA)  # small, corner
    Image.fromarray(canvas).save(tmp_path / "two.png")
    samples = pa.table({"sample_id": pa.array([0], pa.int64()), "relpath": ["two.png"]})
    faces, crops, quarantine = detect_align_shard(samples, tmp_path, AlignConfig(), progress=False)
    assert faces.column("status")[0].as_py() == "multi_face"
    assert faces.column("n_faces")[0].as_py() == 2
    box = faces.column("bbox")[0].as_py()
    assert 350 <= box[0] + box[2] / 2 <= 550 and quarantine == []


def test_pick_face_prefers_large_central():
    boxes = np.array([[0, 0, 50, 50], [400, 300, 60, 60], [10, 10, 90, 90]], float)
    assert pick_face(boxes, 800, 600) == 1


def test_given_boxes_landmarks_and_null_box(tmp_path):
    image = data.astronaut()
    Image.fromarray(image).save(tmp_path / "a.png")
    ref = _astronaut_points(image)
    boxes = np.array([[175, 76, 91, 91], [175, 76, 91, 91], [np.nan] * 4], np.float32)
    lms = np.stack([ref.reshape(-1), ref.reshape(-1), ref.reshape(-1)]).astype(np.float32)
    samples = pa.table({
        "sample_id": pa.array([0, 1, 2], pa.int64()), "relpath": ["a.png"] * 3,
        "given_bbox": vectors_to_arrow(boxes, valid=np.array([True, True, False])),
        "given_landmarks": vectors_to_arrow(lms, valid=np.array([True, False, True])),
    })
    faces, crops, quarantine = detect_align_shard(samples, tmp_path, AlignConfig(detector="given"), progress=False)
    assert faces.column("status").to_pylist() == ["ok", "ok", "no_face"]
    t = geometry.transform_from_row(vectors_to_numpy(faces.column("transform")))
    eyes = geometry.map_points(ref, t[0])
    np.testing.assert_allclose(eyes[36:42].mean(0), geometry.template_points(256)[0], atol=1.5)
    np.testing.assert_allclose(t[1], geometry.transform_from_box(boxes[1], 256), atol=1e-4)
    assert [q.sample_id for q in quarantine] == [2]


def test_prealigned_is_a_resize(tmp_path):
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (100, 100, 3), dtype=np.uint8)
    Image.fromarray(small).save(tmp_path / "s.png")
    Image.fromarray(small[..., 0]).save(tmp_path / "grey.png")   # FERPlus-style single channel
    samples = pa.table({"sample_id": pa.array([0, 1], pa.int64()), "relpath": ["s.png", "grey.png"]})
    faces, crops, _ = detect_align_shard(samples, tmp_path, AlignConfig(detector="prealigned", crop_size=64),
                                         progress=False)
    expected = cv2.resize(small, (64, 64), interpolation=cv2.INTER_LINEAR)
    assert np.abs(crops[0].astype(int) - expected.astype(int)).max() <= 2
    assert crops.shape == (2, 64, 64, 3) and faces.column("status").to_pylist() == ["ok", "ok"]
    np.testing.assert_allclose(geometry.transform_from_row(np.array(faces.column("transform")[0].as_py())),
                               geometry.resize_transform(100, 100, 64), atol=1e-5)


def test_bad_configuration_fails_at_once(tmp_path):
    with pytest.raises(ConfigError, match="valid choices"):
        AlignConfig(detector="mtcnn")
    samples = pa.table({"sample_id": pa.array([0], pa.int64()), "relpath": ["x.png"]})
    with pytest.raises(BackendMissingError, match="fan_detector_checkpoint"):
        detect_align_shard(samples, tmp_path, AlignConfig(detector="fan"))
    with pytest.raises(ConfigError, match="given_bbox"):
        detect_align_shard(samples, tmp_path, AlignConfig(detector="given"))


def _given_samples(boxes, points=None, names=None):
    n = len(boxes)
    columns = {"sample_id": pa.array(np.arange(n), pa.int64()), "relpath": names or ["a.png"] * n,
               "given_bbox": vectors_to_arrow(np.asarray(boxes, np.float32))}
    if points is not None:
        columns["given_landmarks"] = vectors_to_arrow(np.asarray(points, np.float32).reshape(n, -1))
    return pa.table(columns)


def test_given_boxes_are_clipped_and_empty_or_padding_crops_are_not_valid(tmp_path):
    Image.fromarray(np.full((200, 200, 3), 90, np.uint8)).save(tmp_path / "a.png")
    boxes = [[-20, 40, 120, 120],        # partly outside: clipped, kept
             [300, 300, 50, 50],         # wholly outside (AffectNet): was an all-black crop marked valid
             [0, 0, 0, 80]]              # no area
    faces, crops, quarantine = detect_align_shard(_given_samples(boxes), tmp_path,
                                                  AlignConfig(detector="given"), progress=False)
    assert faces.column("status").to_pylist() == ["ok", "no_face", "no_face"]
    np.testing.assert_allclose(faces.column("bbox")[0].as_py(), [0, 40, 100, 120])
    np.testing.assert_allclose(geometry.transform_from_row(np.array(faces.column("transform")[0].as_py())),
                               geometry.transform_from_box(np.array([0, 40, 100, 120]), 256), atol=1e-4)
    assert {q.sample_id: q.reason for q in quarantine} == {1: "box_outside_image", 2: "empty_box"}
    assert crops[0].mean() > 40 and crops[1:].max() == 0
    # points that put the crop's centre on the image corner: three quarters of the crop would be padding
    template = geometry.template_points(256)
    aflw = np.zeros((19, 2))
    aflw[[7, 10, 13, 15, 17]] = 0.5 * (template - 127.5)
    faces, crops, quarantine = detect_align_shard(_given_samples([[0, 0, 60, 60]], [aflw]), tmp_path,
                                                  AlignConfig(detector="given"), progress=False)
    assert faces.column("status").to_pylist() == ["no_face"] and crops.max() == 0
    assert quarantine[0].reason == "crop_mostly_padding" and "inside" in quarantine[0].detail


def test_odd_images_decode_right_in_the_faces_stage(tmp_path):
    upright = np.zeros((120, 80, 3), np.uint8)
    upright[:40] = (250, 20, 20)                                      # red band at the top
    exif = Image.Exif()
    exif[0x0112] = 6                                                  # stored turned: rotate 90 deg CW to show
    Image.fromarray(np.ascontiguousarray(np.rot90(upright, 1))).save(tmp_path / "turned.jpg", exif=exif, quality=95)
    Image.fromarray(upright).save(tmp_path / "upright.png")
    cv2.imwrite(str(tmp_path / "grey16.png"), np.full((50, 50), 40000, np.uint16))
    samples = pa.table({"sample_id": pa.array([0, 1, 2], pa.int64()),
                        "relpath": ["turned.jpg", "upright.png", "grey16.png"]})
    faces, crops, quarantine = detect_align_shard(samples, tmp_path, AlignConfig(detector="prealigned", crop_size=64),
                                                  progress=False)
    assert quarantine == [] and faces.column("bbox")[0].as_py() == [0, 0, 80, 120]
    assert np.abs(crops[0].astype(int) - crops[1].astype(int)).mean() < 4
    assert crops[0, :15, :, 0].mean() > 200 and crops[0, -15:, :, 0].mean() < 30
    assert abs(int(crops[2, 4:-4, 4:-4].mean()) - round(40000 * 255 / 65535)) <= 1   # rescaled, not clipped white


def test_large_jpegs_with_given_boxes_decode_reduced_within_tolerance(tmp_path):
    image = cv2.resize(data.astronaut(), (2048, 2048), interpolation=cv2.INTER_CUBIC)   # face ~350 px wide
    Image.fromarray(image).save(tmp_path / "big.jpg", quality=92)
    reference = geometry.map_points(_astronaut_points(data.astronaut()), np.array([[4.0, 0, 1.5], [0, 4.0, 1.5]]))
    samples = _given_samples([[700, 304, 364, 364]], [reference], names=["big.jpg"])
    faces, crops, _ = detect_align_shard(samples, tmp_path, AlignConfig(detector="given"), progress=False)
    transform = geometry.transform_from_row(np.array(faces.column("transform")[0].as_py()))
    assert images.reduction_for_scale(geometry.transform_scale(transform)) == 2
    full = geometry.warp_crop(images.read_rgb(tmp_path / "big.jpg"), transform, 256)   # the full-size decode
    np.testing.assert_allclose(transform, geometry.transform_from_points(reference, 256), atol=1e-4)
    assert np.abs(crops[0].astype(float) - full.astype(float)).mean() < 3.0


def test_faces_of_a_shard_are_the_same_from_1_and_4_threads(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.synthetic import generator as synthetic

    config = synthetic.SyntheticConfig(n=16, seed=5)
    for i in range(config.n):
        Image.fromarray(synthetic.generate_sample(config, i).image).save(tmp_path / f"{i:02d}.png")
    samples = pa.table({"sample_id": pa.array(np.arange(config.n), pa.int64()),
                        "relpath": [f"{i:02d}.png" for i in range(config.n)]})
    serial, serial_crops, _ = detect_align_shard(samples, tmp_path, AlignConfig(), progress=False)
    shards = [samples.slice(s, 4) for s in range(0, config.n, 4)]
    with ThreadPoolExecutor(4) as pool:
        parts = list(pool.map(lambda s: detect_align_shard(s, tmp_path, AlignConfig(), progress=False), shards))
    assert pa.concat_tables([p[0] for p in parts]).equals(serial)
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), serial_crops)
    assert serial.column("status").to_pylist().count("ok") >= 14
