"""Hostile pickles for the tests of the restricted readers (made here, never shipped).

Every payload, if a reader called what it names, would create the file
`marker`: the tests check that the marker never appears and that the error
names the file and the global that was refused.
"""
import copyreg
import functools
import os
import pickle
import subprocess

import numpy as np


class Call:
    """Pickles as `func(*args)`: what a hostile file asks the unpickler to run."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __call__(self, *args):   # pickle wants a callable in a reduce tuple
        raise AssertionError('never called by the test itself')

    def __reduce__(self):
        return self.func, self.args


def _shell(marker):
    return f'touch {marker}'


def payloads(marker):
    """[(label, object that pickles into a hostile call, regex of the global the error must name)]."""
    cmd = _shell(marker)
    code = f"__import__('os').system({cmd!r})"
    system = r'(posix|os)\.system'
    out = [
        ('os.system', Call(os.system, cmd), system),
        ('subprocess.check_call', Call(subprocess.check_call, ['touch', marker]), r'(subprocess|commands)\.check_call'),
        ('eval', Call(eval, code), r'(builtins|__builtin__)\.eval'),
        ('exec', Call(exec, code), r'(builtins|__builtin__)\.exec'),
        ('open', Call(open, marker, 'w'), r'(io|builtins|__builtin__|_io)\.open'),
        ('os.makedirs', Call(os.makedirs, marker), r'os\.makedirs'),
        ('os.mkdir', Call(os.mkdir, marker), r'(posix|os)\.mkdir'),
        ('functools.partial', Call(functools.partial(os.system, cmd)), r'functools\.partial'),
        ('getattr(__import__)', Call(Call(getattr, Call(__import__, 'os'), 'system'), cmd), r'(builtins|__builtin__)\.getattr'),
        ('pickle.loads', Call(pickle.loads, pickle.dumps(Call(os.system, cmd))), r'_?pickle\.loads'),
        ('copyreg._reconstructor', Call(copyreg._reconstructor, object, object, None), r'copy_?reg\._reconstructor'),
        ('numpy.load', Call(np.load, marker), r'numpy\.load'),
        ('object array', np.array([Call(os.system, cmd)], dtype=object), r'numpy\.dtype|object dtype'),
        # Paddle's two reducers, with arguments that are not Paddle's
        ('paddle eval shape', Call(eval, code, {'data': np.zeros(1)}), r'(builtins|__builtin__)\.eval'),
        ('paddle tuple shape', Call(tuple, (Call(os.system, cmd), np.zeros(1))),
         system + r'|(builtins|__builtin__)\.tuple'),   # the .pth reader refuses tuple itself
    ]
    return out


def raw_pickles(marker):
    """Hand-written opcode streams pickle.dumps would not produce: [(label, bytes, regex)]."""
    cmd = _shell(marker).encode()
    return [
        ('protocol 0 GLOBAL', b"cos\nsystem\n(S'" + cmd + b"'\ntR.", r'os\.system'),
        ('INST opcode', b"(S'" + cmd + b"'\nios\nsystem\n.", r'os\.system'),
        ('OBJ opcode', b"(cos\nsystem\nS'" + cmd + b"'\no.", r'os\.system'),
        ('python2 __builtin__.eval', b"c__builtin__\neval\n(S\"__import__('os').system('" + cmd + b"')\"\ntR.",
         r'(__builtin__|builtins)\.eval'),
        ('STACK_GLOBAL', b'\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x8c\x06system\x93\x8c'
         + bytes([len(cmd)]) + cmd + b'\x85R.', r'os\.system'),
        ('dotted STACK_GLOBAL', b'\x80\x04\x8c\x08builtins\x8c\x1bgetattr.__self__.__import__\x93\x8c\x02os'
         b'\x85R.', r'builtins\.getattr\.__self__'),
        ('persistent id', b'\x80\x02X\x04\x00\x00\x00evilQ.', r'persistent id'),
    ]


def all_variants(marker):
    """Every hostile pickle: (label, bytes, regex), each payload at protocols 0 to 5 and nested in a
    state dict, plus the hand-written streams."""
    out = []
    for label, obj, regex in payloads(marker):
        for protocol in range(6):
            try:
                # protocol 5 pickles an array through numpy._core.numeric._frombuffer, which no
                # writer of weights uses (Paddle stops at 4): that global is refused first
                out.append((f'{label} p{protocol}', pickle.dumps(obj, protocol=protocol),
                            regex + (r'|numeric\._frombuffer' if protocol == 5 else '')))
            except (pickle.PicklingError, TypeError, AttributeError):
                continue   # e.g. an object array at protocol 0 pickles fine, a lambda would not
        state = {'blocks.0.weight': np.ones((2, 2), np.float32), 'blocks.0.bias': obj}
        out.append((f'{label} in a state dict', pickle.dumps(state, protocol=2), regex))
    out += raw_pickles(marker)
    return out


def with_extension(marker):
    """A pickle that names os.system through the copyreg extension registry (EXT1); the caller
    registers code 0xf0 -> (os, system) around the load, as a hostile environment could."""
    cmd = _shell(marker).encode()
    return b'\x80\x02\x82\xf0X' + len(cmd).to_bytes(4, 'little') + cmd + b'\x85R.'
