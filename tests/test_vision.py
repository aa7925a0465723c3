"""The vision core with the real int8 models on real photographs."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from lock.config import Settings, parse
from lock.errors import ImageError, ModelError
from lock.imageio import load_image
from lock.scenes import background, paste
from lock.vision.align import TEMPLATE, align, similarity
from lock.vision import mtcnn as mtcnn_mod
from lock.vision.mtcnn import Detector, nms, pyramid_scales
from lock.vision.pipeline import FacePipeline, main_face
from lock.vision.runtime import Runtime
from lock.config import REPO_ROOT

MODELS = REPO_ROOT / "models"


@pytest.fixture(scope="module")
def pipe() -> FacePipeline:
    return FacePipeline(parse({"vision": {"min_face": 40}})).open()


def cos(a, b) -> float:
    return float(a @ b)


def test_one_face_per_single_photo(pipe, photos):
    for path in photos.singles:
        frame = load_image(path)
        faces = pipe.detect(frame)
        assert len(faces) == 1, f"{path.name}: {len(faces)} faces"
        x1, y1, x2, y2 = faces.boxes[0]
        lm = faces.landmarks[0]
        assert ((lm[:, 0] > x1) & (lm[:, 0] < x2) & (lm[:, 1] > y1) & (lm[:, 1] < y2)).all(), path.name
        assert lm[0, 0] < lm[1, 0], "left eye must be left of right eye"
        assert lm[2, 1] > lm[:2, 1].max() and lm[3:, 1].min() > lm[2, 1] - 5, "eyes, nose, mouth from top down"
        assert faces.scores[0] > 0.9


def test_no_face_on_blank_or_noise(pipe):
    blank = np.full((480, 640, 3), 128, np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    for frame in (blank, noise, background((480, 640))):
        faces = pipe.detect(frame)
        assert len(faces) == 0
        assert faces.boxes.shape == (0, 4) and faces.landmarks.shape == (0, 5, 2)


def test_face_found_when_pasted_anywhere(pipe, photos):
    rng = np.random.default_rng(1)
    photo = load_image(photos.singles[0])
    scene = background((480, 640))
    for _ in range(5):
        h = int(rng.uniform(200, 300))
        w = photo.shape[1] * h // photo.shape[0]
        cx, cy = rng.uniform(w / 2, 640 - w / 2), rng.uniform(h / 2, 480 - h / 2)
        frame = paste(scene, photo, h, (cx, cy))
        faces = pipe.detect(frame)
        assert len(faces) == 1
        bx = (faces.boxes[0, 0] + faces.boxes[0, 2]) / 2
        by = (faces.boxes[0, 1] + faces.boxes[0, 3]) / 2
        assert abs(bx - cx) < w / 2 and abs(by - cy) < h / 2, "the face lies inside the pasted photo"


def test_embeddings_identify_celebrities(pipe, photos):
    def emb(path):
        frame = load_image(path)
        faces = pipe.detect(frame)
        i = main_face(faces, frame.shape)
        return None if i is None else pipe.embed(frame, faces.landmarks[i])

    train, val = photos.celebrities("train"), photos.celebrities("val")
    gallery = [(name, e) for name, paths in train.items() for p in paths if (e := emb(p)) is not None]
    names = np.array([n for n, _ in gallery])
    mat = np.stack([e for _, e in gallery])
    for _, e in gallery:
        assert abs(np.linalg.norm(e) - 1) < 1e-4
    right = total = 0
    for name, paths in val.items():
        for p in paths:
            e = emb(p)
            if e is None:
                continue
            total += 1
            right += names[int(np.argmax(mat @ e))] == name
    assert total >= 20
    assert right / total >= 0.9, f"{right}/{total} val photos identified"
    sims = mat @ mat.T
    same = names[:, None] == names[None, :]
    off = ~np.eye(len(names), dtype=bool)
    assert sims[same & off].mean() - sims[~same].mean() > 0.4


def test_alignment_maps_landmarks_onto_template():
    rng = np.random.default_rng(2)
    for _ in range(10):
        ang = rng.uniform(-0.5, 0.5)
        r = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
        src = (TEMPLATE - 80) @ r.T * rng.uniform(0.5, 3) + rng.uniform(100, 400, 2)
        m = similarity(src + rng.normal(0, 0.5, src.shape), TEMPLATE)
        mapped = src @ m[:, :2].T + m[:, 2]
        assert np.abs(mapped - TEMPLATE).max() < 4.0


def test_the_model_was_calibrated_on_the_runtime_template():
    """models/build.py aligns FaceNet's calibration faces with its own copy of the
    template; the runtime must align with the same one, and the manifest records it."""
    import importlib.util
    import json
    from lock.config import REPO_ROOT
    spec = importlib.util.spec_from_file_location("model_build", REPO_ROOT / "models" / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    np.testing.assert_allclose(np.array(build.FACENET_TEMPLATE), TEMPLATE, atol=1e-3)
    manifest = json.loads((REPO_ROOT / "models" / "manifest.json").read_text())
    np.testing.assert_allclose(np.array(manifest["facenet_template"]["points"]), TEMPLATE, atol=1e-3)


def test_rotated_photo_embeds_like_upright(pipe, photos):
    frame = load_image(photos.singles[1])
    h, w = frame.shape[:2]
    big = cv2.copyMakeBorder(frame, h // 2, h // 2, w // 2, w // 2, cv2.BORDER_REPLICATE)
    H, W = big.shape[:2]
    rot = cv2.warpAffine(big, cv2.getRotationMatrix2D((W / 2, H / 2), 15, 1.0), (W, H),
                         borderMode=cv2.BORDER_REPLICATE)
    embs = []
    for img in (big, rot):
        faces = pipe.detect(img)
        assert len(faces) == 1
        embs.append(pipe.embed(img, faces.landmarks[0]))
    assert cos(*embs) >= 0.9


def test_pure_helpers():
    assert pyramid_scales(480, 640, 80, 0.709)[0] == pytest.approx(12 / 80)
    assert pyramid_scales(10, 10, 80, 0.709) == []
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    keep = nms(boxes, np.array([0.9, 0.8, 0.7]), 0.5)
    assert list(keep) == [0, 2]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).shape == (0,)


@pytest.mark.parametrize("mode", ["union", "min"])
def test_nms_matrix_and_row_by_row_agree(mode, monkeypatch):
    """The all-at-once overlap matrix (small inputs) keeps exactly what the row-by-row pass keeps."""
    rng = np.random.default_rng(7)
    suppressed_some = False
    for n in (1, 2, 5, 40, 128):
        xy = rng.uniform(0, 200, (n, 2)).astype(np.float32)
        boxes = np.concatenate([xy, xy + rng.uniform(5, 80, (n, 2)).astype(np.float32)], axis=1)
        scores = np.round(rng.uniform(0.5, 1.0, n), 2).astype(np.float32)  # with ties
        for thr in (0.3, 0.5, 0.7):
            fast = nms(boxes, scores, thr, mode)
            monkeypatch.setattr(mtcnn_mod, "NMS_MATRIX_MAX", 0)
            rows = nms(boxes, scores, thr, mode)
            monkeypatch.undo()
            assert fast.tolist() == rows.tolist(), (n, thr)
            suppressed_some |= len(fast) < n
            assert list(scores[fast]) == sorted(scores[fast], reverse=True)
    assert suppressed_some


def test_fast_pyramid_halves_the_level_two_scales_up(photos):
    """vision.fast_pyramid: a level that would resample the full frame is the one two above it halved."""
    runtime = Runtime(MODELS, threads=1).open()
    frame = paste(background((480, 640)), load_image(photos.singles[0]), 260, (300, 250))
    det = Detector(runtime, min_face=20, shrink=True).open((480, 640))
    levels = det._pyramid(480, 640)
    assert len(levels) == len(pyramid_scales(480, 640, 20, 0.709)) == 10
    assert [lv.parent is not None for lv in levels] == [False, False, True] + [False] * 7
    assert mtcnn_mod.shrink_steps(pyramid_scales(480, 640, 20, 0.709)[2]) == 0   # the full frame's
    assert not any(lv.parent for lv in Detector(runtime, shrink=True).open((480, 640))._pyramid(480, 640)), \
        "at the door's min face 80 every level reads a halved copy: nothing changes"
    faces = det.detect(frame)
    assert len(faces) == 1
    lv, parent = levels[2], levels[0]
    assert lv.parent is parent and lv.scale == parent.scale / 2
    assert (lv.hs, lv.ws) == (parent.hs // 2, parent.ws // 2)
    p = parent.pixels[:2 * lv.hs, :2 * lv.ws].astype(np.float64)
    mean = (p[0::2, 0::2] + p[1::2, 0::2] + p[0::2, 1::2] + p[1::2, 1::2]) / 4
    assert np.abs(lv.pixels - mean).max() <= 0.5 + 1e-9   # made from this frame's parent
    plain = Detector(runtime, min_face=20, shrink=False).open((480, 640))
    assert not any(lv.parent for lv in plain._pyramid(480, 640))
    other = Detector(runtime, min_face=20, scale_factor=0.8, shrink=True).open((480, 640))
    assert not any(lv.parent for lv in other._pyramid(480, 640)), "0.8 ** 2 is no halving"
    got = plain.detect(frame)
    assert len(got) == 1
    a, b = faces.boxes[0], got.boxes[0]
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    assert inter / union > 0.8, "the same face as the plain pyramid finds"

    # the halved level's own windows land where the plain level's do: a face of the size it looks for
    small = paste(background((480, 640)), load_image(photos.singles[0]), 140, (300, 250))
    levels[0].run(small)
    windows = [levels[2].run(None), plain._pyramid(480, 640)[2].run(small)]
    centres = []
    for boxes, scores, _ in windows:
        sure = scores >= 0.9
        assert sure.sum() >= 3
        centres.append(np.average((boxes[sure, :2] + boxes[sure, 2:]) / 2, axis=0, weights=scores[sure]))
        assert (boxes[:, 2] - boxes[:, 0]).mean() == pytest.approx(12 / 0.3, rel=0.02)
    cell = 2 / levels[2].scale
    assert np.abs(centres[0] - centres[1]).max() <= 2 * cell, centres   # a wrong scale: 100+ px
    # a benchmark that turns the halving off and on again gets the same plain levels, not new ones
    det.shrink = False
    assert [id(lv) for lv in det._pyramid(480, 640)][:2] == [id(lv) for lv in levels[:2]]
    assert det._pyramid(480, 640)[3:] == levels[3:]


def test_input_codes_by_table_equal_the_float_standardisation(pipe, photos):
    """FaceNet's input through the 256-entry table is the float formula's (at most a code off, rarely)."""
    from lock.vision.facenet import input_codes, standardize
    quant = pipe.embedder._net.input_quant
    assert quant.scale, "the shipped FaceNet takes int8"
    checked = 0
    for path in photos.singles:
        frame = load_image(path)
        faces = pipe.detect(frame)
        face = align(frame, faces.landmarks[main_face(faces, frame.shape)])
        for q in (quant, type(quant)(0.0, 0)):   # the int8 model's input, and a float model's
            want, got = q.quantize(standardize(face)), input_codes(face, q)
            assert got.dtype == want.dtype and got.shape == want.shape
            off = np.abs(got.astype(np.float64) - want)
            assert off.max() <= (1 if q.scale else 1e-4), path.name
            if q.scale:
                assert (off > 0).mean() <= 1e-3, path.name
        checked += 1
    assert checked >= 3


def test_truncated_and_non_image_files_are_named(tmp_path, photos):
    data = photos.singles[0].read_bytes()
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(data[: len(data) // 3])
    txt = tmp_path / "notes.jpg"
    txt.write_text("not a picture")
    for p in (bad, txt):
        with pytest.raises(ImageError, match=p.name):
            load_image(p)


def _copy_models(tmp_path):
    d = tmp_path / "models"
    d.mkdir(parents=True)
    for f in MODELS.glob("*.tflite"):
        shutil.copy(f, d / f.name)
    shutil.copy(MODELS / "manifest.json", d / "manifest.json")
    return d


def test_missing_truncated_or_altered_model_is_named(tmp_path):
    d = _copy_models(tmp_path)
    (d / "rnet.tflite").unlink()
    with pytest.raises(ModelError, match="rnet.tflite.*missing"):
        Detector(Runtime(d).open()).open()

    d = _copy_models(tmp_path / "b")
    data = (d / "onet.tflite").read_bytes()
    (d / "onet.tflite").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="onet.tflite.*truncated"):
        Detector(Runtime(d).open()).open()

    d = _copy_models(tmp_path / "c")
    data = bytearray((d / "facenet.tflite").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (d / "facenet.tflite").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="facenet.tflite.*altered"):
        FacePipeline(Settings(), runtime=Runtime(d)).open()

    with pytest.raises(ModelError, match="manifest missing"):
        Runtime(tmp_path / "nowhere").open()


def test_an_edge_tpu_model_not_in_the_manifest_is_not_used_and_says_so(tmp_path, caplog):
    """Before, a facenet_edgetpu.tflite put in models/ by hand was skipped without a word."""
    d = _copy_models(tmp_path)
    (d / "facenet_edgetpu.tflite").write_bytes((d / "facenet.tflite").read_bytes())
    rt = Runtime(d, threads=1, coral=True).open()
    with caplog.at_level("WARNING", logger="lock.vision.runtime"):
        rt.interpreter("facenet.tflite")
    assert rt.info()["delegates"] == {"facenet.tflite": "cpu"}
    assert any("facenet_edgetpu.tflite is not listed in" in r.getMessage() and "runs on the CPU" in r.getMessage()
               for r in caplog.records), caplog.text


def test_a_face_cut_off_by_the_edge_is_refused_whole_it_is_kept(pipe, photos):
    """Alignment fills the missing part with edge pixels: such a face must not vote or be enrolled."""
    frame = load_image(photos.singles[1])
    faces = pipe.detect(frame)
    x1, y1, x2, y2 = faces.boxes[0]
    assert pipe.analyse(frame, faces, 0).quality.ok
    cut = np.ascontiguousarray(frame[:, int(x1 + 0.35 * (x2 - x1)):])    # 35 % of the face gone
    cfaces = pipe.detect(cut)
    assert len(cfaces) == 1
    reasons = pipe.analyse(cut, cfaces, 0).quality.reasons
    assert any("cut off by the edge" in r for r in reasons), reasons


def test_a_face_30_percent_outside_the_picture_is_refused(pipe, photos):
    """The box is pulled in onto the visible part (7.6 % outside for obama2.jpg cut 30 % on the right),
    so the alignment decides: before, such faces passed the quality gate and could be enrolled."""
    for photo in photos.singles:
        frame = load_image(photo)
        faces = pipe.detect(frame)
        i = int(np.argmax(faces.scores))
        x1, _, x2, _ = faces.boxes[i]
        assert pipe.analyse(frame, faces, i).quality.ok, photo
        for cut in (frame[:, int(round(x1 + 0.3 * (x2 - x1))):], frame[:, :int(round(x2 - 0.3 * (x2 - x1)))]):
            cut = np.ascontiguousarray(cut)
            cfaces = pipe.detect(cut)
            for j in range(len(cfaces)):
                reasons = pipe.analyse(cut, cfaces, j).quality.reasons
                assert any("cut off by the edge" in r for r in reasons), (photo, reasons)


def test_non_finite_landmarks_are_a_quality_reason_not_a_crash(pipe, photos):
    frame = load_image(photos.singles[1])
    faces = pipe.detect(frame)
    bad = mtcnn_mod.Faces(faces.boxes, faces.scores, np.full_like(faces.landmarks, np.nan))
    a = pipe.analyse(frame, bad, 0)
    assert a.embedding is None and a.quality.reasons == ("no usable landmarks",)
