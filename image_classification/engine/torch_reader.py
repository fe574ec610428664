"""Read PyTorch `.pth` / `.pt` files into NumPy arrays and plain containers, without torch.

It lives in the engine because both sides need it: the engine reads official
TokenLabeling label maps (`.pt`) and weights files through `engine.weights`,
and `port_weights` (which imports the engine, never the reverse) reads the
official checkpoints it converts.

A `.pth` is a pickle whose tensors point at raw storages stored beside it.  The
unpickler here (the engine's `RestrictedUnpickler`, shared with the `.pdparams`
reader) resolves only the globals a state dict needs (tensor and storage
rebuilders, OrderedDict, NumPy's array and scalar helpers, argparse's
Namespace as an inert record) and refuses every other global, so a hostile
checkpoint cannot run code while being read.

Nor can it make the reader look outside its data.  Tensors are not built
while unpickling: the pickle yields references (storage, offset, shape,
strides), and each is checked against the storage it names before one byte is
read: the storage's size must be what its dtype and element count say, the
strides must be non-negative, and the furthest element the view reaches
(offset + sum((size - 1) * stride)) must lie inside the storage.  A tensor
that fails is refused with its key (`model.blocks.0.attn.qkv.weight`).  Zip
members are read only if stored uncompressed, as torch writes them, so memory
is bounded by the file's size.  Any other damage (truncation, bad CRC, garbage
pickle) is a `WeightsFileError` naming the file; the reader is fuzzed
(tests/test_weights_io.py).

Both formats torch has written are supported: the zip archive (torch >= 1.6)
and the legacy stream of pickles followed by raw storages (torch < 1.6, or
`_use_new_zipfile_serialization=False`).
"""
import collections
import io
import os
import struct
import types
import zipfile

import numpy as np

from .weights_io import NUMPY_GLOBALS, RestrictedUnpickler, UnsafePickleError, WeightsFileError

__all__ = ['UnsafeCheckpointError', 'WeightsFileError', 'load_torch', 'unwrap_state_dict']


class UnsafeCheckpointError(UnsafePickleError):
    """The pickle asked for a global outside the allow-list."""


class _Refused(Exception):
    """A tensor reference that does not fit its storage; re-raised with the tensor's key."""


_STORAGE_DTYPES = {
    'DoubleStorage': np.float64, 'FloatStorage': np.float32, 'HalfStorage': np.float16,
    'BFloat16Storage': 'bfloat16', 'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8,
    'BoolStorage': np.bool_, 'UntypedStorage': np.uint8,
}


class _StorageType:
    """Stands for `torch.<X>Storage`: only its element type matters."""

    def __init__(self, name):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]
        self.itemsize = 2 if self.dtype == 'bfloat16' else np.dtype(self.dtype).itemsize


def _bytes_to_array(raw, dtype, byteorder='little'):
    if dtype == 'bfloat16':   # NumPy has no bfloat16: widen to float32 exactly
        half = np.frombuffer(raw, dtype='<u2' if byteorder == 'little' else '>u2')
        return (half.astype(np.uint32) << 16).view(np.float32)
    arr = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder('<' if byteorder == 'little' else '>'))
    return arr.astype(arr.dtype.newbyteorder('='))


class _StorageRef:
    """A storage named by a persistent id; its bytes are fetched (and checked) when a tensor uses it.

    `view` is the legacy format's (offset, size) of a view into a root storage.
    """

    def __init__(self, storage_type, key, numel, view=None):
        self.type, self.key, self.numel, self.view = storage_type, key, numel, view


class _TensorRef:
    """`_rebuild_tensor_v2(storage, offset, size, stride, ...)`, not yet read."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    if not isinstance(storage, _StorageRef):
        raise _Refused(f'tensor over a {type(storage).__name__}, not a storage')
    if not (isinstance(size, (tuple, list)) and isinstance(stride, (tuple, list))):
        raise _Refused('tensor size and stride must be tuples')
    return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, *_ignored):
    return data


def _check_view(ref, storage_numel):
    """Raise _Refused unless the view (offset, size, stride) lies inside `storage_numel` elements."""
    offset, size, stride = ref.offset, ref.size, ref.stride
    if not _is_int(offset) or offset < 0:
        raise _Refused(f'storage offset {offset!r} is not a non-negative integer')
    if len(size) != len(stride):
        raise _Refused(f'shape {size} and strides {stride} differ in length')
    if not all(_is_int(d) and d >= 0 for d in size):
        raise _Refused(f'shape {size} has a negative or non-integer size')
    if not all(_is_int(s) and s >= 0 for s in stride):
        raise _Refused(f'strides {stride} have a negative or non-integer stride')
    if 0 in size:
        return
    last = offset + sum((d - 1) * s for d, s in zip(size, stride))   # Python ints: no overflow
    if last >= storage_numel:
        raise _Refused(f'shape {size}, strides {stride} and offset {offset} reach element {last}, '
                       f'past the end of its storage of {storage_numel} elements')


def _storage_globals():
    table = dict(NUMPY_GLOBALS)
    table.update({('torch', name): _StorageType(name) for name in _STORAGE_DTYPES})
    table.update({
        ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
        ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
        ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
        ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
        ('argparse', 'Namespace'): types.SimpleNamespace,
    })
    return table


_TORCH_GLOBALS = _storage_globals()


def _unpickler(file, source, persistent_load=None):
    return RestrictedUnpickler(file, _TORCH_GLOBALS, source, refusal=UnsafeCheckpointError,
                               persistent_load=persistent_load)


def _storage_pid(pid, legacy):
    """A _StorageRef from a persistent id `('storage', type, key, location, numel[, view])`."""
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == 'storage'):
        raise UnsafeCheckpointError(f'unknown persistent id {str(pid)[:80]!r}')
    storage_type, key, _location, numel = pid[1:5]
    if not isinstance(storage_type, _StorageType) or not isinstance(key, str) \
            or not _is_int(numel) or numel < 0:
        raise WeightsFileError(f'malformed storage id {str(pid)[:120]!r}')
    view = None
    if legacy and len(pid) > 5 and pid[5] is not None:
        try:
            _view_key, offset, size = pid[5]
        except (TypeError, ValueError):
            raise WeightsFileError(f'malformed storage view {str(pid[5])[:80]!r}') from None
        if not (_is_int(offset) and _is_int(size) and 0 <= offset and 0 <= size and offset + size <= numel):
            raise WeightsFileError(f'storage view ({offset!r}, {size!r}) outside its storage of {numel} elements')
        view = (offset, size)
    return _StorageRef(storage_type, key, numel, view)


# Several tensors may view one storage (tied weights, slices of a fused matrix), and a zero stride
# repeats an element: the arrays built may exceed the storages read, but only by this much, so a small
# file cannot make the reader allocate without bound.
_EXPANSION = 4
_EXPANSION_SLACK = 64 << 20   # bytes


def _resolve(obj, storage_array, source):
    """Replace every _TensorRef in `obj` by its checked array (each shared object visited once)."""
    done = {}
    budget = {'read': {}, 'built': 0}

    def visit(node, path):
        if id(node) in done:
            return done[id(node)]
        if isinstance(node, _TensorRef):
            try:
                data = storage_array(node.storage)
                _check_view(node, data.size)
                budget['read'][node.storage.key] = data.nbytes
                numel = 1
                for d in node.size:
                    numel *= d
                budget['built'] += numel * data.dtype.itemsize
                allowed = _EXPANSION * sum(budget['read'].values()) + _EXPANSION_SLACK
                if budget['built'] > allowed:
                    raise _Refused(f'shape {node.size} brings the arrays built to {budget["built"]} bytes '
                                   f'from {sum(budget["read"].values())} bytes of storage (more than '
                                   f'{_EXPANSION}x + {_EXPANSION_SLACK >> 20} MiB): refusing a file that '
                                   f'expands in memory')
            except _Refused as e:
                raise WeightsFileError(f'{source}: tensor {path or "<root>"}: {e}') from None
            if len(node.size) == 0:
                result = data[node.offset].copy()
            else:
                itemsize = data.dtype.itemsize
                view = np.lib.stride_tricks.as_strided(
                    data[node.offset:], shape=node.size, strides=tuple(s * itemsize for s in node.stride))
                result = np.ascontiguousarray(view)
        elif isinstance(node, dict):
            result = type(node)()
            done[id(node)] = result
            for k, v in node.items():
                result[k] = visit(v, f'{path}.{k}' if path else str(k))
        elif isinstance(node, (list, tuple)):
            items = [visit(v, f'{path}[{i}]') for i, v in enumerate(node)]
            result = items if isinstance(node, list) else tuple(items)
        elif isinstance(node, (_StorageRef, _StorageType)):
            raise WeightsFileError(f'{source}: {path or "<root>"}: a bare storage where a tensor or value belongs')
        else:
            result = node
        done[id(node)] = result
        return result

    return visit(obj, '')


def _load_zip(path):
    with zipfile.ZipFile(path) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        pkl = next((n for n in infos if n.endswith('data.pkl')), None)
        if pkl is None:
            raise WeightsFileError(f'{path}: zip archive without data.pkl: not a torch checkpoint')
        root = pkl[:-len('data.pkl')]

        def read(name, expected=None):
            info = infos.get(name)
            if info is None:
                raise _Refused(f'its storage {name} is missing from the archive')
            if info.compress_type != zipfile.ZIP_STORED:
                raise WeightsFileError(f'{path}: member {name} is compressed (method {info.compress_type}); '
                                       f'torch writes checkpoints uncompressed')
            if expected is not None and info.file_size != expected:
                raise _Refused(f'its storage {name} holds {info.file_size} bytes, not the {expected} '
                               f'its element count and dtype need')
            return zf.read(info)

        byteorder = 'little'
        if root + 'byteorder' in infos:
            byteorder = read(root + 'byteorder').decode('ascii', 'replace').strip()
            if byteorder not in ('little', 'big'):
                raise WeightsFileError(f'{path}: byteorder record {byteorder[:20]!r} is neither little nor big')
        cache = {}

        def storage_array(ref):
            if ref.key not in cache:
                raw = read(f'{root}data/{ref.key}', ref.numel * ref.type.itemsize)
                cache[ref.key] = _bytes_to_array(raw, ref.type.dtype, byteorder)
            return cache[ref.key]

        obj = _unpickler(io.BytesIO(read(pkl)), path, lambda pid: _storage_pid(pid, legacy=False)).load()
        return _resolve(obj, storage_array, path)


_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c


def _load_legacy(path):
    """torch < 1.6 stream: magic, protocol, sys info, object, storage keys, raw storages."""
    size = os.path.getsize(path)
    with open(path, 'rb') as f:
        header = lambda: _unpickler(f, path).load()  # noqa: E731 - header pickles hold no tensors
        if header() != _LEGACY_MAGIC:
            raise WeightsFileError(f'{path}: not a torch checkpoint (bad magic number)')
        header()  # protocol version
        header()  # sys info
        roots = {}

        def persistent(pid):
            ref = _storage_pid(pid, legacy=True)
            known = roots.setdefault(ref.key, ref)
            if known.type.name != ref.type.name or known.numel != ref.numel:
                raise WeightsFileError(f'{path}: storage {ref.key} is declared twice with different '
                                       f'types or sizes')
            return ref

        obj = _unpickler(f, path, persistent).load()
        keys = _unpickler(f, path).load()
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise WeightsFileError(f'{path}: the storage key list is malformed')
        arrays = {}
        for key in keys:
            if key not in roots:
                raise WeightsFileError(f'{path}: storage {key} is listed but no tensor uses it')
            ref = roots[key]
            raw = f.read(8)
            if len(raw) != 8:
                raise WeightsFileError(f'{path}: truncated before the size of storage {key}')
            count = struct.unpack('<q', raw)[0]
            nbytes = count * ref.type.itemsize
            if count != ref.numel or nbytes > size - f.tell():
                raise WeightsFileError(f'{path}: storage {key} claims {count} elements, its id says '
                                       f'{ref.numel}, and {size - f.tell()} bytes are left in the file')
            arrays[key] = _bytes_to_array(f.read(nbytes), ref.type.dtype)
        if f.read(1):
            raise WeightsFileError(f'{path}: bytes after the last storage: not a file written by torch.save')

    def storage_array(ref):
        if ref.key not in arrays:
            raise _Refused(f'its storage {ref.key} is not in the file')
        data = arrays[ref.key]
        if ref.view is not None:
            data = data[ref.view[0]:ref.view[0] + ref.view[1]]
        return data

    return _resolve(obj, storage_array, path)


def load_torch(path):
    """Unpickle a `.pth`/`.pt` file into NumPy arrays and plain containers.

    UnsafeCheckpointError for a refused global, WeightsFileError (naming the
    file, and the tensor's key when a tensor is at fault) for anything else
    wrong with the file.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint not found: {path}')
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path)
        return _load_legacy(path)
    except UnsafePickleError as e:
        if str(e).startswith(str(path)):
            raise
        raise UnsafeCheckpointError(f'{path}: refusing to load: {e}') from None
    except WeightsFileError as e:
        if str(e).startswith(str(path)):
            raise
        raise WeightsFileError(f'{path}: {e}') from None
    except _Refused as e:
        raise WeightsFileError(f'{path}: {e}') from None
    except Exception as e:   # truncated, damaged: zipfile, zlib, struct, pickle, numpy all raise their own
        raise WeightsFileError(f'{path}: not a readable torch checkpoint ({type(e).__name__}: '
                               f'{str(e)[:200]})') from None


_WRAPPER_KEYS = ('model', 'state_dict', 'model_state', 'model_ema', 'module', 'net', 'params')


def unwrap_state_dict(obj, source='checkpoint'):
    """The flat `{name: array}` inside a training checkpoint, `module.` prefixes removed."""
    while isinstance(obj, dict) and not any(isinstance(v, np.ndarray) for v in obj.values()):
        key = next((k for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], dict)), None)
        if key is None:
            raise ValueError(f'{source}: no state dict found; top-level keys: {sorted(map(str, obj))}')
        obj = obj[key]
    if not isinstance(obj, dict):
        raise ValueError(f'{source}: expected a dict of tensors, got {type(obj).__name__}')
    state = collections.OrderedDict()
    for name, value in obj.items():
        if not isinstance(value, np.ndarray):
            if isinstance(value, np.generic):
                value = np.asarray(value)
            else:
                continue  # non-tensor metadata stored beside the weights
        if name.startswith('module.'):
            name = name[len('module.'):]
        state[name] = value
    return state

