"""The one image runner (kse_onnx/graph/run_images.py): whole batches of a fixed batch
(the remainder left out), a model without a batch axis image by image, and chunks that
give what one run gives; each checked against onnxruntime run by hand."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from graphs import photo_batch, residual_net, shuffle_net, unbatched_detector
from kse_onnx.errors import ModelError
from kse_onnx.graph.run_images import batch_and_step, images_per_run, run_images


def _by_hand(model, feeds: list[np.ndarray]) -> list[list[np.ndarray]]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return [sess.run(None, {name: f}) for f in feeds]


def test_a_fixed_batch_runs_whole_batches_and_leaves_the_remainder_out():
    """shuffle_net's Reshape holds its batch of 2: 7 images give the outputs of the first
    6, run 2 at a time, whatever the chunk."""
    model = shuffle_net(batch=2)
    x = photo_batch((7, 3, 8, 8), seed=1)
    want = np.concatenate([o[0] for o in _by_hand(model, [x[i:i + 2] for i in (0, 2, 4)])])
    assert batch_and_step(model, x, chunk=5) == (2, 4)
    for chunk in (1, 4, 5, 256):
        (got,) = run_images(model, x, chunk=chunk)
        assert got.shape == (6, 10)
        assert np.array_equal(got, want), chunk
    (serialized,) = run_images(model.SerializeToString(), x, batch=2)
    assert np.array_equal(serialized, want)


def test_fewer_images_than_the_fixed_batch_is_one_line_naming_it(tmp_path, capsys):
    """One image for a graph fixed at 2: a one-line error naming the batch, from the
    runner and from ``verify --max-drop`` (onnxruntime said only "invalid dimensions")."""
    import onnx

    from kse_onnx.api import optimize
    from kse_onnx.cli import main
    from kse_onnx.options import CalibrationOptions, KSEOptions, LowerOptions

    model = shuffle_net(batch=2)
    with pytest.raises(ModelError, match="fewer than the batch of 2"):
        run_images(model, photo_batch((1, 3, 8, 8), seed=1), label="one image")
    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(model, src)
    np.savez(tmp_path / "three.npz", x=photo_batch((3, 3, 8, 8), seed=1))
    np.savez(tmp_path / "one.npz", x=photo_batch((1, 3, 8, 8), seed=1))
    optimize(src, out, KSEOptions(G=4), lower_options=LowerOptions("compact"),
             calibration=CalibrationOptions(str(tmp_path / "three.npz")),
             log=lambda line: None)
    assert main(["verify", str(src), str(out), "--max-drop", "1", "--inputs",
                 str(tmp_path / "one.npz")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fewer than the batch of 2" in err[0], err


def test_eval_of_a_fixed_batch_model_scores_every_image_or_says_why(tmp_path, capsys):
    """``eval`` counts every image, so a graph fixed at 2 runs 2 at a time (4 images: the
    logits onnxruntime gives 2 at a time) and 3 images are a one-line error naming the
    batch (it was onnxruntime's "invalid dimensions")."""
    import onnx

    from kse_onnx.cli import main
    from kse_onnx.evaluate import logits

    model = shuffle_net(batch=2)
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    x = photo_batch((4, 3, 8, 8), seed=2)
    want = np.concatenate([o[0] for o in _by_hand(model, [x[:2], x[2:]])])
    assert np.array_equal(logits(src, x), want)
    np.savez(tmp_path / "three.npz", x=x[:3], y=np.arange(3))
    assert main(["eval", str(src), "--data", str(tmp_path / "three.npz")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a multiple of the batch of 2" in err[0], err


def test_an_unbatched_model_runs_image_by_image():
    """torchvision's detector layout: one output list per image, as onnxruntime gives for
    that image alone (shapes may differ between images: boxes kept by NMS)."""
    model = unbatched_detector(16)
    x = photo_batch((3, 3, 16, 16), seed=2)
    got = run_images(model, x, chunk=2)
    want = _by_hand(model, list(x))
    assert len(got) == 3
    for g, w in zip(got, want, strict=True):
        assert len(g) == len(w) == 2
        for a, b in zip(g, w, strict=True):
            assert a.shape == b.shape and np.array_equal(a, b)


def test_chunks_give_what_one_run_gives():
    """A symbolic batch: every image is run, chunks by count or by bytes agree with one
    run of all the images."""
    model = residual_net(16)
    x = photo_batch((11, 3, 8, 8), seed=3)
    (want,) = _by_hand(model, [x])[0]
    assert want.shape[0] == 11 and np.isfinite(want).all()
    per_image = x[:1].nbytes
    assert images_per_run(1, x, chunk=256, chunk_bytes=3 * per_image) == 3
    assert images_per_run(4, x, chunk=256, chunk_bytes=3 * per_image) == 4  # one batch
    assert images_per_run(1, x, chunk=256, chunk_bytes=None) == 256
    for chunk, cap in ((3, None), (256, 3 * per_image), (256, 1), (256, None)):
        (got,) = run_images(model, x, chunk=chunk, chunk_bytes=cap)
        assert np.array_equal(got, want), (chunk, cap)


def test_a_run_that_fails_is_one_line_naming_the_model():
    model = residual_net(16)
    with pytest.raises(ModelError, match="cannot run a probe"):
        run_images(model, photo_batch((2, 3, 9, 9)), label="a probe")
