"""How long does grading a class take? Grades 30 Lab 2 submissions (a mix of solutions, starters and
broken variants) with 1 job and with the default number of jobs, and prints both and their ratio.

    python benchmarks/bench_lab_grading.py
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from corolab.labs import get_lab
from corolab.labs.batch import grade_folder


def main(n: int = 30) -> None:
    lab = get_lab(2)
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as mutants:
        sources = [lab.solution, lab.starter, *lab.write_mutants(Path(mutants))]
        for i in range(n):
            shutil.copyfile(sources[i % len(sources)], Path(tmp) / f"student{i:02d}.py")
        timings = {}
        for jobs in (1, os.cpu_count() or 2):
            start = time.perf_counter()
            results = grade_folder(lab, Path(tmp), jobs=jobs, progress=False)
            timings[jobs] = time.perf_counter() - start
            assert len(results) == n
            print(f"jobs={jobs}: {n} submissions in {timings[jobs]:.1f} s ({n / timings[jobs]:.2f} submissions/s)")
    one, many = timings[1], timings[max(timings)]
    print(f"speed-up with {max(timings)} jobs: {one / many:.2f}x; 30 submissions graded in {many:.1f} s (target < 60 s)")


if __name__ == "__main__":
    main()
