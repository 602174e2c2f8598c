"""Interleaved timing: every candidate once per repetition, medians over many.

The machine the benchmarks run on is shared and noisy. Timing candidates one
after the other lets a burst of outside load land on one of them only; running
each candidate once per repetition, in a rotating order, spreads it over all.
Where candidates run in processes of their own, the order is shuffled
instead, with a pause before each sample: a rotation keeps every candidate
behind the same predecessor, whose thread pools may still be spinning on
the same cores when it starts.
"""

import random
import statistics
import time


def calls_per_sample(fn, min_sample_s, max_calls=10_000):
    """How many back-to-back calls of `fn` take at least `min_sample_s`.

    Tiny inputs run in microseconds, below the resolution that one call of
    `time.perf_counter` around Python dispatch can resolve honestly, so a
    sample times a batch of calls.
    """
    calls = 1
    while True:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= min_sample_s or calls >= max_calls:
            return calls
        # Aim a little past the target so one more doubling is rarely needed.
        grow = 1.5 * min_sample_s / max(elapsed, 1e-9)
        calls = min(max_calls, max(2 * calls, int(calls * grow)))


def interleaved_medians(candidates, repeats, min_sample_s, warmup=2,
                        shuffle_seed=None, settle_s=0.0):
    """Median seconds per call of each candidate, timed interleaved.

    Args:
        candidates: dict name -> zero-argument callable. A callable must
            return only once its work is done (TensorFlow on CPU does).
        repeats: samples per candidate; in each repetition every candidate
            runs one sample, the order rotated by one each time.
        min_sample_s: the shortest a sample may take; sets the calls per
            sample, calibrated once per candidate after the warm-up.
        warmup: calls per candidate before timing starts (tracing, XLA
            compiling), at least 2; the last one starts the calibration.
        shuffle_seed: when given, each repetition runs the candidates in an
            order drawn from this seed instead of the rotation, so that no
            candidate always follows the same one.
        settle_s: seconds to wait, untimed, before each sample.

    Returns:
        dict name -> {"median_s", "min_s", "samples_s", "calls_per_sample"},
        times per single call.
    """
    names = list(candidates)
    calls = {}
    for name in names:
        for _ in range(warmup - 1):
            candidates[name]()
        calls[name] = calls_per_sample(candidates[name], min_sample_s)
    samples = {name: [] for name in names}
    shuffler = None if shuffle_seed is None else random.Random(shuffle_seed)
    for rep in range(repeats):
        if shuffler is None:
            shift = rep % len(names)
            order = names[shift:] + names[:shift]
        else:
            order = shuffler.sample(names, len(names))
        for name in order:
            fn, n = candidates[name], calls[name]
            if settle_s:
                time.sleep(settle_s)
            start = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - start) / n)
    return {
        name: {
            "median_s": statistics.median(samples[name]),
            "min_s": min(samples[name]),
            "samples_s": samples[name],
            "calls_per_sample": calls[name],
        }
        for name in names
    }


def paired_ratio(numerator, denominator):
    """Median over repetitions of one candidate's time over another's.

    Outside load comes and goes over seconds, so it often slows a whole
    repetition; a ratio taken within one repetition cancels it, where a ratio
    of two medians can pair a quiet sample with a loaded one.

    Args:
        numerator, denominator: `interleaved_medians` entries of one run.
    """
    return statistics.median(
        n / d for n, d in zip(numerator["samples_s"], denominator["samples_s"])
    )
