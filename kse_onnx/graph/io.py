"""Loading models from untrusted files and writing them atomically.

Loading checks, in order, before anything large is read: the path is a readable file,
it parses as a ModelProto, external data stays inside the model's folder (no ``..``,
no absolute path, no symlink leading out) and is as long as declared, then
``onnx.checker``. Saving writes a temporary file in the target folder and renames it
into place only once the model is complete, so a failure leaves no partial file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import onnx

from ..errors import ModelError, first_line
from ..paths import name_too_long, regular_file, temporary_file
from .walk import default_opset

# Protobuf cannot serialise a model over 2 GiB; larger ones keep weights beside it.
_PROTOBUF_LIMIT = PROTOBUF_LIMIT = 2**31 - 1
MIN_OPSET = 11


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read, validate and return the model at ``path`` with its external data loaded."""
    path = regular_file(path, "an .onnx file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read ({exc.strerror})") from exc
    if not data:
        raise ModelError(f"{path}: empty file")
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise ModelError(f"{path}: not an ONNX model (protobuf parse failed)") from exc
    if not model.HasField("graph"):
        raise ModelError(f"{path}: not an ONNX model (no graph)")
    bad = _invalid_text(model)
    if bad is not None:
        raise ModelError(f"{path}: text field {bad!r} is not valid UTF-8")
    _load_external_data(model, path.parent, path)
    _check(model, path)
    return model


def check_loaded(model: onnx.ModelProto, where: str = "model") -> None:
    """The checks of :func:`load_model` for a ModelProto already in memory (a pipeline's):
    text fields, no external data left to read (load it first), opset, ``onnx.checker``."""
    if not isinstance(model, onnx.ModelProto) or not model.HasField("graph"):
        raise ModelError(f"{where}: not an ONNX model (no graph)")
    bad = _invalid_text(model)
    if bad is not None:
        raise ModelError(f"{where}: text field {bad!r} is not valid UTF-8")
    for tensor in all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
            raise ModelError(f"{where}: tensor {tensor.name!r} refers to external data; load "
                             "the model with its data (onnx.load) or pass its path")
        _check_sizes(tensor, Path(where), None)
    _check(model, Path(where))


def all_tensors(message):
    """Every TensorProto inside a protobuf ``message``, however deep: initializers, the
    values and indices of sparse initializers, tensor, sparse-tensor and graph
    attributes of nodes, subgraphs, functions, training info. A generic walk over the
    message's fields, so no place a tensor may hide is left out."""
    stack = [message]
    while stack:
        msg = stack.pop()
        if isinstance(msg, onnx.TensorProto):
            yield msg
            continue
        for descriptor, value in reversed(msg.ListFields()):
            if descriptor.type != descriptor.TYPE_MESSAGE:
                continue
            if _repeated(descriptor):
                stack.extend(reversed(value))
            else:
                stack.append(value)


def _invalid_text(model: onnx.ModelProto):
    """The first text field that is not valid UTF-8 (protobuf hands those back as bytes,
    which fail later, in the middle of a rewrite), else None."""
    texts = [model.producer_name, model.producer_version, model.domain, model.doc_string,
             model.graph.name, model.graph.doc_string]
    texts += [t for p in model.metadata_props for t in (p.key, p.value)]
    for node in model.graph.node:
        texts += [node.name, node.op_type, node.domain, node.doc_string, *node.input,
                  *node.output, *(a.name for a in node.attribute)]
    for value in (*model.graph.input, *model.graph.output, *model.graph.value_info,
                  *model.graph.initializer):
        texts.append(value.name)
    return next((t for t in texts if not isinstance(t, str)), None)


def _declared_bytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes the tensor's dims and dtype promise (None for strings and unknown types)."""
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except Exception:
        return None
    if tensor.data_type == onnx.TensorProto.STRING:
        return None
    count = 1
    for d in tensor.dims:
        if d < 0:
            return -1
        count *= d
    return count * itemsize


def _check_sizes(tensor: onnx.TensorProto, path: Path, available: int | None) -> None:
    """Refuse, before anything is allocated, a tensor whose dims promise more data than
    the file holds (a crafted model could otherwise ask for terabytes)."""
    declared = _declared_bytes(tensor)
    if declared is None:
        return
    if declared < 0:
        raise ModelError(f"{path}: tensor {tensor.name!r} has a negative dimension")
    if available is not None and declared > available:
        raise ModelError(f"{path}: tensor {tensor.name!r} declares {declared} bytes but "
                         f"its data holds {available}: refused")
    if tensor.HasField("raw_data") and len(tensor.raw_data) != declared:
        raise ModelError(f"{path}: tensor {tensor.name!r} declares {declared} bytes but "
                         f"holds {len(tensor.raw_data)}")


def _external_fields(tensor: onnx.TensorProto, path: Path) -> tuple[str, int, int | None]:
    """(location, offset, length) of a tensor's external data, each checked: a location
    without NUL bytes, offset and length as non-negative decimal integers."""
    fields = {entry.key: entry.value for entry in tensor.external_data}
    name = tensor.name
    location = fields.get("location", "")
    if not location or "\0" in location:
        raise ModelError(f"{path}: tensor {name!r} has an empty external data location or "
                         "one with a NUL byte: refused")
    numbers = []
    for key in ("offset", "length"):
        text = fields.get(key)
        if text is None or (key == "offset" and text == ""):
            numbers.append(0 if key == "offset" else None)
            continue
        if not (text.isascii() and text.isdigit()) or len(text) > 20:
            raise ModelError(f"{path}: tensor {name!r} has external data {key} {text!r}, "
                             "not a non-negative integer: refused")
        numbers.append(int(text))
    return location, numbers[0], numbers[1]


def _load_external_data(model: onnx.ModelProto, base: Path, path: Path) -> None:
    """Read every tensor's external data (dense and sparse, initializers and attributes,
    subgraphs) from inside ``base``, after checking where it is and how long; afterwards
    no tensor of the model refers to a file."""
    base_real = base.resolve()
    for tensor in all_tensors(model):
        external = (tensor.data_location == onnx.TensorProto.EXTERNAL
                    or len(tensor.external_data) > 0)
        if not external:
            _check_sizes(tensor, path, None)
            continue
        location, offset, length = _external_fields(tensor, path)
        target = (base / location).resolve()
        if Path(location).is_absolute() or not target.is_relative_to(base_real):
            raise ModelError(f"{path}: tensor {tensor.name!r} has external data "
                             f"{location!r} outside the model's folder: refused")
        try:
            mode = target.stat().st_mode
        except OSError:
            raise ModelError(f"{path}: external data file {location!r} of tensor "
                             f"{tensor.name!r} is missing") from None
        if not stat.S_ISREG(mode):
            raise ModelError(f"{path}: external data {location!r} of tensor "
                             f"{tensor.name!r} is not a regular file: refused")
        declared = _declared_bytes(tensor)
        if declared is None:
            raise ModelError(f"{path}: tensor {tensor.name!r} of this type cannot have "
                             "external data: refused")
        if declared < 0:
            raise ModelError(f"{path}: tensor {tensor.name!r} has a negative dimension")
        if length is not None and length != declared:
            raise ModelError(f"{path}: external data of tensor {tensor.name!r} declares "
                             f"length {length}, its dimensions need {declared} bytes")
        size = target.stat().st_size
        if offset + declared > size:
            raise ModelError(f"{path}: external data {location!r} of tensor "
                             f"{tensor.name!r} is shorter than declared")
        try:
            with open(target, "rb") as f:
                f.seek(offset)
                raw = f.read(declared)
        except OSError as exc:
            raise ModelError(f"{path}: cannot read external data {location!r} "
                             f"({exc.strerror})") from None
        if len(raw) != declared:
            raise ModelError(f"{path}: external data {location!r} of tensor "
                             f"{tensor.name!r} is shorter than declared")
        tensor.raw_data = raw
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]


def _check(model: onnx.ModelProto, path: Path) -> None:
    opset = default_opset(model)
    if opset is None or opset < MIN_OPSET:
        raise ModelError(f"{path}: opset {opset} is below the supported range "
                         f"(>= {MIN_OPSET}); upgrade it with onnx.version_converter")
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise ModelError(f"{path}: fails onnx.checker: {first_line(exc)}") from exc


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Write ``model`` to ``path`` atomically; over 2 GiB, weights go to ``<name>.data``."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ModelError(f"{path}: output folder {folder} does not exist")
    try:
        _save(model, path, folder)
    except OSError as exc:  # read-only folder, disk full: one line naming the path
        raise ModelError(f"{path}: cannot write ({exc.strerror or exc})") from None


def _save(model: onnx.ModelProto, path: Path, folder: Path) -> None:
    large = model.ByteSize() > _PROTOBUF_LIMIT
    data_name = f"{path.name}.data"
    if large and name_too_long(folder / data_name):
        raise ModelError(f"{path}: the model is over 2 GiB, so its weights go to "
                         f"{data_name!r}, a name too long for the file system: choose a "
                         "shorter output name")
    fd, tmp = temporary_file(folder)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; a saved model is an ordinary file
    tmp_data = Path(tmp).with_suffix(".data.tmp")  # the same short random name
    try:
        if large:
            copy = onnx.ModelProto()
            copy.CopyFrom(model)
            onnx.save_model(copy, tmp, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=tmp_data.name, size_threshold=1024)
            onnx.checker.check_model(tmp)
            # the model names its data file; point it at the final name before renaming
            final = onnx.load_model(tmp, load_external_data=False)
            for tensor in all_tensors(final):
                for entry in tensor.external_data:
                    if entry.key == "location":
                        entry.value = data_name
            with open(tmp, "wb") as f:
                f.write(final.SerializeToString())
            os.replace(tmp_data, folder / data_name)
        else:
            with open(tmp, "wb") as f:
                f.write(model.SerializeToString(deterministic=True))
        os.replace(tmp, path)
    except BaseException:
        for leftover in (Path(tmp), tmp_data):
            leftover.unlink(missing_ok=True)
        raise


def _repeated(descriptor) -> bool:
    """Whether a protobuf field is repeated (``label`` is gone from newer protobufs)."""
    flag = getattr(descriptor, "is_repeated", None)
    if flag is not None:
        return bool(flag)
    return descriptor.label == descriptor.LABEL_REPEATED


def model_files(path) -> list[Path]:
    """``path`` and the external-data files it names (resolved inside its folder; the
    loader refuses the others), without loading any tensor."""
    path = Path(path)
    files = [path]
    try:
        if not path.is_file():
            return files
        data = path.read_bytes()
    except OSError:
        return files
    if b"location" not in data:
        return files
    try:
        model = onnx.load_model_from_string(data)
    except Exception:
        return files
    for tensor in all_tensors(model):
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value and "\0" not in entry.value:
                files.append(path.parent / entry.value)
    return files
