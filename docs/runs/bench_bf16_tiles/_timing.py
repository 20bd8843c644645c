"""The one timing helper of these scripts: the bench's own timer, as a median in ms."""
import statistics

from ditflow_fast.bench.timing import time_callable


def median_ms(fn, repeats=7):
    return 1e3 * statistics.median(time_callable(fn, warmup=0, repeats=repeats))
