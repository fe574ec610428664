"""Read PyTorch, safetensors and NumPy checkpoints into `{name: np.ndarray}`, without torch.

A `.pth` is a pickle whose tensors point at raw storages stored beside it.  The
unpickler here resolves only the globals a state dict needs (tensor and
storage rebuilders, OrderedDict, a few NumPy scalar helpers, argparse's
Namespace as an inert record) and refuses every other global, so a hostile
checkpoint cannot run code while being read.

Both formats torch has written are supported: the zip archive (torch >= 1.6)
and the legacy stream of pickles followed by raw storages (torch < 1.6, or
`_use_new_zipfile_serialization=False`).
"""
import collections
import io
import os
import pickle
import struct
import types
import zipfile

import numpy as np

__all__ = ['UnsafeCheckpointError', 'load_checkpoint', 'load_torch', 'unwrap_state_dict']


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The pickle asked for a global outside the allow-list."""


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


def _bytes_to_array(raw, dtype, byteorder='little'):
    if dtype == 'bfloat16':   # NumPy has no bfloat16: widen to float32 exactly
        half = np.frombuffer(raw, dtype='<u2' if byteorder == 'little' else '>u2')
        return (half.astype(np.uint32) << 16).view(np.float32)
    arr = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder('<' if byteorder == 'little' else '>'))
    return arr.astype(arr.dtype.newbyteorder('='))


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    if len(size) == 0:
        return storage[storage_offset].copy()
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[storage_offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride))
    return np.ascontiguousarray(view)


def _rebuild_parameter(data, *_ignored):
    return data


def _numpy_scalar(dtype, raw=None):
    return np.frombuffer(raw, dtype=dtype)[0] if raw is not None else dtype.type()


def _numpy_reconstruct(cls, shape, dtype):
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _codecs_encode(text, encoding='utf-8'):
    return text.encode(encoding)


def _allowed_global(module, name):
    """The object standing for `module.name`, or UnsafeCheckpointError."""
    if module == 'torch' and name in _STORAGE_DTYPES:
        return _StorageType(name)
    table = {
        ('collections', 'OrderedDict'): collections.OrderedDict,
        ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
        ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
        ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
        ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
        ('argparse', 'Namespace'): types.SimpleNamespace,
        ('numpy', 'dtype'): np.dtype,
        ('numpy.core.multiarray', 'scalar'): _numpy_scalar,
        ('numpy._core.multiarray', 'scalar'): _numpy_scalar,
        ('numpy.core.multiarray', '_reconstruct'): _numpy_reconstruct,
        ('numpy._core.multiarray', '_reconstruct'): _numpy_reconstruct,
        ('numpy', 'ndarray'): np.ndarray,
        ('_codecs', 'encode'): _codecs_encode,
    }
    if (module, name) in table:
        return table[(module, name)]
    raise UnsafeCheckpointError(
        f'refusing to load global {module}.{name}: only tensors and plain containers '
        f'are allowed in a checkpoint (a pickle that imports anything else could run code)')


class _Unpickler(pickle.Unpickler):
    """Allow-listed globals only; `defer_tensors` for the legacy format, whose
    storage bytes come after the object pickle."""

    def __init__(self, file, load_storage, defer_tensors=False):
        super().__init__(file)
        self._load_storage = load_storage
        self._defer_tensors = defer_tensors

    def find_class(self, module, name):
        found = _allowed_global(module, name)
        if self._defer_tensors and found is _rebuild_tensor:
            return lambda storage, *args: _LazyTensor(storage, args)
        return found

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == 'storage'):
            raise UnsafeCheckpointError(f'unknown persistent id {pid!r}')
        return self._load_storage(*pid[1:])


def _load_zip(path):
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = next((n for n in names if n.endswith('data.pkl')), None)
        if pkl is None:
            raise ValueError(f'{path}: zip archive without data.pkl: not a torch checkpoint')
        root = pkl[:-len('data.pkl')]
        byteorder = 'little'
        if root + 'byteorder' in names:
            byteorder = zf.read(root + 'byteorder').decode().strip()
        cache = {}

        def load_storage(storage_type, key, _location, _numel, *_rest):
            if key not in cache:
                cache[key] = _bytes_to_array(zf.read(f'{root}data/{key}'), storage_type.dtype, byteorder)
            return cache[key]

        return _Unpickler(io.BytesIO(zf.read(pkl)), load_storage).load()


_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c


def _load_legacy(path):
    """torch < 1.6 stream: magic, protocol, sys info, object, storage keys, raw storages."""
    with open(path, 'rb') as f:
        safe = lambda: _Unpickler(f, None).load()  # noqa: E731 - header pickles hold no tensors
        if safe() != _LEGACY_MAGIC:
            raise ValueError(f'{path}: not a torch checkpoint (bad magic number)')
        safe()  # protocol version
        safe()  # sys info
        roots = {}

        def load_storage(storage_type, root_key, _location, numel, view_metadata=None):
            roots.setdefault(root_key, [storage_type, numel, None])
            if view_metadata is None:
                return _LazyStorage(roots, root_key)
            _view_key, offset, view_size = view_metadata
            return _LazyStorage(roots, root_key, offset, view_size)

        obj = _Unpickler(f, load_storage, defer_tensors=True).load()
        keys = _Unpickler(f, None).load()
        for key in keys:
            storage_type, _numel, _ = roots[key]
            count = struct.unpack('<q', f.read(8))[0]
            itemsize = 2 if storage_type.dtype == 'bfloat16' else np.dtype(storage_type.dtype).itemsize
            roots[key][2] = _bytes_to_array(f.read(count * itemsize), storage_type.dtype)
    return _resolve_lazy(obj)


class _LazyStorage:
    """A legacy storage whose bytes come after the object pickle."""

    def __init__(self, roots, key, offset=0, size=None):
        self.roots, self.key, self.offset, self.size = roots, key, offset, size

    def array(self):
        data = self.roots[self.key][2]
        return data[self.offset:] if self.size is None else data[self.offset:self.offset + self.size]


class _LazyTensor:
    def __init__(self, storage, args):
        self.storage, self.args = storage, args


def _resolve_lazy(obj):
    if isinstance(obj, _LazyTensor):
        return _rebuild_tensor(obj.storage.array(), *obj.args)
    if isinstance(obj, dict):
        return type(obj)((k, _resolve_lazy(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_resolve_lazy(v) for v in obj)
    return obj


def load_torch(path):
    """Unpickle a `.pth`/`.pt` file into NumPy arrays and plain containers."""
    if zipfile.is_zipfile(path):
        return _load_zip(path)
    return _load_legacy(path)


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


def load_checkpoint(path):
    """`{name: np.ndarray}` from a .pth/.pt/.bin, .safetensors, .npz or .pdparams file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint not found: {path}')
    ext = os.path.splitext(path)[1].lower()
    if ext == '.safetensors':
        from safetensors.numpy import load_file
        return collections.OrderedDict(load_file(path))
    if ext == '.npz':
        with np.load(path, allow_pickle=False) as data:
            return collections.OrderedDict((k, data[k]) for k in data.files)
    if ext == '.pdparams':
        import paddle
        return collections.OrderedDict(
            (k, v.numpy() if hasattr(v, 'numpy') else np.asarray(v)) for k, v in paddle.load(path).items())
    return unwrap_state_dict(load_torch(path), source=path)
