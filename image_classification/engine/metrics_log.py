"""Per-epoch history of a training run: `<SAVE>/metrics.csv` and `<SAVE>/curves.png`.

One row per validated epoch.  Both files are rewritten whole from the history
at every validation (through a temporary file and `os.replace`, so a reader or
a kill never sees half a file), rather than appended to: a resumed run reads
back the rows up to the epoch it resumes from (`load_history`) and drops the
rows of later epochs, which belonged to the interrupted run's future and will
be measured again.  Only rank 0 writes.

Columns, in this order (`ema_acc1` only when some row has it, i.e. TRAIN.MODEL_EMA):

    epoch            the epoch (1-based)
    train_loss       mean training loss of the epoch
    val_loss         mean validation loss
    acc1, acc5       validation top-1 / top-5, in % of the images scored
    ema_acc1         the EMA weights' top-1, in %
    lr               learning rate of the epoch's first step
    images_scored    validation images scored
    images_skipped   listed validation images not scored (DATA.SKIP_BAD_IMAGES)
    seconds          wall time of the epoch: training and validation
"""
import csv
import logging
import os
import tempfile

COLUMNS = ('epoch', 'train_loss', 'val_loss', 'acc1', 'acc5', 'ema_acc1', 'lr',
           'images_scored', 'images_skipped', 'seconds')
CSV_NAME = 'metrics.csv'
PLOT_NAME = 'curves.png'
_INTS = ('epoch', 'images_scored', 'images_skipped')

logger = logging.getLogger(__name__)


def _parse(row):
    """A CSV row (strings) as numbers; empty cells (no EMA) become None."""
    out = {}
    for key in COLUMNS:
        text = (row.get(key) or '').strip()
        out[key] = None if text == '' else (int(text) if key in _INTS else float(text))
    return out


def load_history(paths, up_to_epoch):
    """The rows of epochs <= `up_to_epoch` from the first of `paths` that exists, oldest first.

    `paths` lists where the resumed run kept its metrics.csv: this run's output
    folder first, then the folder of the checkpoint resumed from (a run resumed
    into a new -output continues the old curves).  A file that cannot be read
    is reported as a warning and the history starts empty: the curves are a
    record, never a reason to refuse a resume.
    """
    for path in paths:
        if not os.path.isfile(path):
            continue
        try:
            with open(path, newline='', encoding='utf-8') as f:
                rows = [_parse(row) for row in csv.DictReader(f)]
        except (OSError, ValueError, csv.Error) as err:
            logger.warning('%s cannot be read (%s): the metrics history restarts at this epoch', path, err)
            return []
        return sorted((r for r in rows if r['epoch'] is not None and r['epoch'] <= up_to_epoch),
                      key=lambda r: r['epoch'])
    return []


def _atomic_write(path, write):
    """Call `write(tmp_path)`, then move the file over `path` (same folder, so the move is atomic)."""
    folder = os.path.dirname(path) or '.'
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=folder)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _cell(key, value):
    if value is None:
        return ''
    if key in _INTS:
        return str(int(value))
    if key == 'lr':
        return f'{value:.6e}'
    if key == 'seconds':
        return f'{value:.1f}'
    return f'{value:.6f}'


def write_csv(path, history):
    columns = [c for c in COLUMNS if c != 'ema_acc1' or any(r.get('ema_acc1') is not None for r in history)]

    def write(tmp):
        with open(tmp, 'w', newline='', encoding='utf-8') as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            for row in history:
                writer.writerow([_cell(c, row.get(c)) for c in columns])
    _atomic_write(path, write)


def write_curves(path, history):
    """Training and validation loss (left) and top-1 (right) per validated epoch, as a PNG.

    Drawn with matplotlib's object API on an Agg canvas: no pyplot, so neither a
    display nor the process-wide backend is touched.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [r['epoch'] for r in history]
    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    loss_ax, acc_ax = fig.subplots(1, 2)
    loss_ax.plot(epochs, [r['train_loss'] for r in history], 'o-', label='train loss')
    loss_ax.plot(epochs, [r['val_loss'] for r in history], 's-', label='val loss')
    loss_ax.set_xlabel('epoch')
    loss_ax.set_ylabel('loss')
    loss_ax.legend()
    acc_ax.plot(epochs, [r['acc1'] for r in history], 'o-', label='val top-1')
    ema = [(r['epoch'], r['ema_acc1']) for r in history if r.get('ema_acc1') is not None]
    if ema:
        acc_ax.plot(*zip(*ema), 's--', label='EMA val top-1')
    acc_ax.set_xlabel('epoch')
    acc_ax.set_ylabel('top-1 (%)')
    acc_ax.legend()
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))   # epochs, not 1.25
    fig.tight_layout()
    _atomic_write(path, lambda tmp: fig.savefig(tmp, format='png'))


class MetricsLog:
    """The run's history; `add(row)` records a validated epoch and rewrites both files.

    `writer=False` (ranks other than 0) keeps nothing and writes nothing.
    """

    def __init__(self, output_dir, resume_prefix=None, resumed_epoch=0, writer=True):
        self.csv_path = os.path.join(output_dir, CSV_NAME)
        self.plot_path = os.path.join(output_dir, PLOT_NAME)
        self.writer = writer
        self.history = []
        self._plot_failed = False
        if writer and resume_prefix:
            sources = [self.csv_path, os.path.join(os.path.dirname(resume_prefix) or '.', CSV_NAME)]
            self.history = load_history(sources, resumed_epoch)

    def add(self, row):
        if not self.writer:
            return
        row = {key: row.get(key) for key in COLUMNS}
        self.history = [r for r in self.history if r['epoch'] < row['epoch']] + [row]
        write_csv(self.csv_path, self.history)
        if self._plot_failed:
            return
        try:
            write_curves(self.plot_path, self.history)
        except ImportError as err:   # matplotlib is in requirements.txt; a bare environment still trains
            self._plot_failed = True
            logger.warning('curves.png not written (matplotlib: %s); metrics.csv holds the same numbers', err)
