"""Zoo models x lowerings: optimize, check, run, and verify exactness; the fine-tuning
importer equals onnxruntime on each model before and after optimize; plus the KSE
authors' trained ResNet-56 against the counts of docs/algorithm.md, section 7."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")


from graphs import photo_batch  # noqa: E402
from kse_onnx.api import optimize, score  # noqa: E402
from kse_onnx.finetune.importer import import_model  # noqa: E402
from kse_onnx.options import KSEOptions, LowerOptions  # noqa: E402
from kse_onnx.runtime.ort import session  # noqa: E402
from kse_onnx.verify import verify  # noqa: E402
from models.export import conv_count, export, max_abs_diff  # noqa: E402
from models.zoo import CONV_COUNTS, build, load_kse_resnet56  # noqa: E402
from shared_data import shared_file  # noqa: E402

FAST = ["small_cnn", "resnet20_cifar", "densenet40_cifar", "mobilenetv2", "yolo_tiny",
        "unet_tiny"]
SLOW = ["resnet56_cifar", "vgg16_bn_cifar", "resnet50"]
LOWERINGS = ["dense", "compact", "factored"]


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory):
    torch.set_num_threads(1)
    return tmp_path_factory.mktemp("zoo")


def _export(zoo_dir, name, opset):
    path = zoo_dir / f"{name}_op{opset}.onnx"
    if not path.exists():
        model, shape = build(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            proto = export(model, shape, opset)
        assert conv_count(proto) == CONV_COUNTS[name]
        assert max_abs_diff(model, proto, shape) < 1e-3 * max(1.0, _scale(model, shape))
        onnx.save(proto, path)
    return path


def _scale(model, shape):
    with torch.no_grad():
        return float(model(torch.zeros(1, *shape)).abs().max())


def _check(zoo_dir, name, opset, lowering):
    src = _export(zoo_dir, name, opset)
    dst = zoo_dir / f"{name}_op{opset}_{lowering}.onnx"
    dst.unlink(missing_ok=True)
    report = optimize(src, dst, KSEOptions(G=5, T=1), lower_options=LowerOptions(lowering))
    assert sum(layer.status == "compressed" for layer in report.layers) > 0
    onnx.checker.check_model(onnx.load(dst), full_check=True)
    shape = [d.dim_value for d in onnx.load(src).graph.input[0].type.tensor_type.shape.dim]
    inputs = zoo_dir / f"{name}_photos.npz"
    np.savez(inputs, input=photo_batch((2, *shape[1:])))
    result = verify(src, dst, inputs=inputs)
    assert result.exact, result.summary()
    return report


@pytest.mark.parametrize("lowering", LOWERINGS)
@pytest.mark.parametrize("name", FAST)
def test_zoo_model(zoo_dir, name, lowering):
    _check(zoo_dir, name, 17, lowering)


@pytest.mark.parametrize("name", ["resnet20_cifar", "mobilenetv2", "yolo_tiny", "unet_tiny"])
def test_zoo_model_opset13(zoo_dir, name):
    _check(zoo_dir, name, 13, "dense")


def _importer_error(path, batch=2, seed=0) -> float:
    """Relative error ||torch - onnxruntime|| / ||onnxruntime|| of the imported model on
    random inputs."""
    model = onnx.load(path)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(seed).standard_normal((batch, *shape[1:])).astype(np.float32)
    want = session(model).run(None, {model.graph.input[0].name: x})[0].astype(np.float64)
    with torch.no_grad():
        got = import_model(model)(torch.from_numpy(x)).numpy().astype(np.float64)
    assert got.shape == want.shape and np.isfinite(got).all()
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def _optimized(zoo_dir, name, opset, lowering):
    dst = zoo_dir / f"{name}_op{opset}_{lowering}.onnx"
    if not dst.exists():
        _check(zoo_dir, name, opset, lowering)
    return dst


@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize("name", FAST)
def test_importer_equals_onnxruntime(zoo_dir, name, opset):
    """The fine-tuning importer computes what onnxruntime computes, on the exported model
    and on its optimized forms (dense, compact codebook, factored)."""
    assert _importer_error(_export(zoo_dir, name, opset)) < 1e-4
    for lowering in LOWERINGS if opset == 17 else ["dense"]:
        assert _importer_error(_optimized(zoo_dir, name, opset, lowering)) < 1e-4, lowering


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_importer_equals_onnxruntime_large(zoo_dir, name):
    assert _importer_error(_export(zoo_dir, name, 17)) < 1e-4
    for lowering in LOWERINGS:
        assert _importer_error(_optimized(zoo_dir, name, 17, lowering)) < 1e-4, lowering


def test_mobilenet_depthwise_left_alone(zoo_dir):
    report = _check(zoo_dir, "mobilenetv2", 17, "dense")
    depthwise = [x for x in report.layers if "depthwise" in (x.reason or "")]
    assert len(depthwise) == 17


@pytest.mark.slow
@pytest.mark.parametrize("lowering", LOWERINGS)
@pytest.mark.parametrize("name", SLOW)
def test_zoo_model_large(zoo_dir, name, lowering):
    _check(zoo_dir, name, 17, lowering)


@pytest.fixture(scope="module")
def kse_resnet56(zoo_dir):
    model = load_kse_resnet56(shared_file("models/kse_resnet56_cifar10.pth"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = export(model, (3, 32, 32), 17)
    assert max_abs_diff(model, proto, (3, 32, 32)) < 1e-4
    path = zoo_dir / "kse_resnet56.onnx"
    onnx.save(proto, path)
    return path


def test_authors_resnet56_counts(kse_resnet56):
    """docs/algorithm.md, section 7: the natural count on these weights at G=4,T=0 is
    ~0.574M weights and ~79.6M conv multiply-adds (0.853M / 125.49M dense)."""
    for entropy in ("paper", "official"):
        totals = score(kse_resnet56, KSEOptions(entropy=entropy)).totals()
        assert totals["params_before"] == 848304 and totals["macs_before"] == 125485056
        assert abs(totals["params_factored"] / 574e3 - 1) < 0.01
        assert abs(totals["macs_factored"] / 79.6e6 - 1) < 0.04


@pytest.mark.parametrize("lowering", LOWERINGS)
def test_authors_resnet56_rewrite(kse_resnet56, tmp_path, lowering):
    dst = tmp_path / f"r56_{lowering}.onnx"
    optimize(kse_resnet56, dst, KSEOptions(G=4, T=0), lower_options=LowerOptions(lowering))
    inputs = tmp_path / "photos.npz"
    np.savez(inputs, input=photo_batch((8, 3, 32, 32)))
    result = verify(kse_resnet56, dst, inputs=inputs)
    assert result.exact, result.summary()
