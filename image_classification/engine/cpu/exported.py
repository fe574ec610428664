"""Exported graphs that hold the fused CPU kernels (`tools/export_model.py --cpu_kernels`): the
record written beside such a graph, and what must hold before Paddle Inference runs it.

A graph traced inside `dispatch.kernels_in_graph()` names the kernels' custom ops
(`fused_linear`, `fused_attention`, ...).  Paddle Inference finds them only in a process that
has registered this library, and their inputs and attributes are those of the source the graph
was traced with.  So the export writes `cpu_kernels.json` beside the graph (the SHA-256 of
`csrc/fused_cpu_ops.cc`), and before a predictor is built `prepare` refuses, each with one
message that says what to do: a device other than the CPU, kernels switched off or not
buildable here, and a record of another source (a graph exported by another version of this
repository); then it registers the library.  A folder without the record is a portable export
and needs nothing.  The record is read as untrusted input: at most `MAX_RECORD_BYTES`, JSON, one
known field checked by its form.
"""
import json
import os
import re

from ..errors import UserError
from . import build, dispatch

RECORD = 'cpu_kernels.json'
MAX_RECORD_BYTES = 4096
_SHA256 = re.compile(r'^[0-9a-f]{64}$')


def _source_sha256():
    return build.build_key()['source_sha256']


def ensure_available(what):
    """Raise a UserError naming `what` unless the fused kernels are on and registered in this
    process (built first where the cache has none)."""
    if not dispatch.enabled():
        raise UserError(f'{what} needs the fused CPU kernels, which are off here '
                        '(PADDLEVIT_FUSED_CPU_OPS=0, or a system without POSIX file locking)')
    if not dispatch.kernels().available():
        raise UserError(f'{what} needs the fused CPU kernels, which could not be built or loaded here '
                        '(the warning above says why); export without --cpu_kernels instead')


def write_record(folder):
    """Record, beside the graph exported into `folder`, the kernel source it was traced with."""
    record = {'format': 1, 'source_sha256': _source_sha256(),
              'note': 'this graph calls the fused CPU kernels of engine/cpu: run it with tools/predict.py, '
                      'on the CPU, with the same version of this repository'}
    with open(os.path.join(folder, RECORD), 'w', encoding='utf-8') as f:
        json.dump(record, f, indent=1)


def remove_record(folder):
    """Remove a record left in `folder` by an earlier export with kernels (the new graph has none)."""
    path = os.path.join(folder, RECORD)
    if os.path.isfile(path):
        os.remove(path)


def read_record(folder):
    """The record of the graph in `folder` (a dict), or None for a portable export."""
    path = os.path.join(folder, RECORD)
    if not os.path.isfile(path):
        return None
    with open(path, 'rb') as f:
        raw = f.read(MAX_RECORD_BYTES + 1)
    if len(raw) > MAX_RECORD_BYTES:
        raise UserError(f'{path}: larger than {MAX_RECORD_BYTES} bytes; export_model.py writes a few lines')
    try:
        record = json.loads(raw.decode('utf-8'))
    except (UnicodeDecodeError, ValueError) as err:
        raise UserError(f'{path}: not JSON ({err}); export the model again') from None
    sha = record.get('source_sha256') if isinstance(record, dict) else None
    if not isinstance(sha, str) or not _SHA256.match(sha):
        raise UserError(f'{path}: "source_sha256" must be the 64 hex digits of a SHA-256, '
                        f'not {str(sha)[:80]!r}; export the model again')
    return record


def prepare(folder, device):
    """Before Paddle Inference loads the graph in `folder` on `device`: for a graph exported with
    the kernels, check it can run here and register the kernels; returns whether it has them."""
    record = read_record(folder)
    if record is None:
        return False
    what = f'{folder} (exported with --cpu_kernels)'
    if device != 'cpu':
        raise UserError(f'{what} runs on the CPU only, not on {device}: export it again without '
                        '--cpu_kernels for a GPU')
    ensure_available(what)
    source = _source_sha256()
    if record['source_sha256'] != source:
        raise UserError(f'{what} was traced with another version of the fused CPU kernels (source '
                        f'sha256 {record["source_sha256"][:12]}..., this repository\'s '
                        f'{source[:12]}...): export it again with this version')
    return True
