"""Each measurement in a fresh Python process, so one's memory never shows up in another's figure,
and a runaway one (out of time, or growing past a memory limit) is stopped instead of taking the
machine down.  The child is `tools/benchmark.py --_worker JOB`, which runs `measure.measure(JOB)`
and prints its row as one JSON line."""
import json
import os
import subprocess
import sys
import threading
import time

from .process import rss_bytes

__all__ = ['run_isolated', 'default_memory_limit']

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmark.py')


def default_memory_limit(max_memory_gb=None):
    """Bytes a measurement may grow to: `max_memory_gb`, else 80% of the memory available now
    (None when the system does not say)."""
    if max_memory_gb:
        return max_memory_gb * 2 ** 30
    try:
        with open('/proc/meminfo', encoding='ascii') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    return 0.8 * int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def run_isolated(job, timeout, max_bytes, command=None, env=None):
    """`measure(job)` in a fresh interpreter; a failure becomes {'error': ...}.  `command` runs
    another measurement (the JSON job is appended to it; `official.py`'s in a Python with torch)."""
    cmd = (command or [sys.executable, SCRIPT, '--_worker']) + [json.dumps(job)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    killed = []

    def watch():   # keep a runaway measurement from taking the machine down
        while proc.poll() is None:
            if max_bytes and rss_bytes(proc.pid) > max_bytes:
                killed.append(f'over the memory limit of {max_bytes / 2 ** 30:.1f} GiB')
                proc.kill()
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        killed.append(f'timed out after {timeout:.0f} s')
    watcher.join()
    for line in reversed(out.splitlines()):
        if line.startswith('{'):
            return json.loads(line)
    reason = killed[0] if killed else (err.strip().splitlines() or [f'exit status {proc.returncode}'])[-1]
    named = {'model': os.path.basename(job['cfg']), 'image size': job['image_size']} if 'cfg' in job else {}
    return {**job, **named, 'error': reason,
            'user error': not killed and proc.returncode == 2}   # a bad config or flag: see tools/benchmark.py
