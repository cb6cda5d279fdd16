"""How long does grading take? Grades a class of 30 Lab 1 submissions (a mix of solutions, starters and
broken variants) with 1 job and with the default number of jobs, then times `corolab lab check` on one
submission as a student runs it (a fresh process: the catalogue, the reference run and the submission's).

    python benchmarks/bench_lab_grading.py [LAB]

Targets (the grader-verdicts issue): a class of 30 in at most 60 s on 2 cores, one check in at most 5 s.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from corolab.labs import get_lab
from corolab.labs.batch import grade_folder


def main(number: int = 1, n: int = 30) -> None:
    lab = get_lab(number)
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as mutants:
        sources = [lab.solution, lab.starter, *lab.write_mutants(Path(mutants))]
        for i in range(n):
            text = sources[i % len(sources)].read_text() + f"\n# student {i}\n" * (i % len(sources) != 1)
            Path(tmp, f"student{i:02d}.py").write_text(text)
        timings = {}
        for jobs in sorted({1, os.cpu_count() or 2}):
            start = time.perf_counter()
            results = grade_folder(lab, Path(tmp), jobs=jobs, progress=False)
            timings[jobs] = time.perf_counter() - start
            assert len(results) == n
            print(f"jobs={jobs}: {n} submissions in {timings[jobs]:.1f} s ({n / timings[jobs]:.2f} submissions/s)")
        one, many = timings[1], timings[max(timings)]
        print(f"speed-up with {max(timings)} jobs: {one / many:.2f}x; {n} submissions graded in {many:.1f} s "
              f"(target <= 60 s)")
        checks = []
        for _ in range(3):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "corolab.cli", "lab", "check", str(number), str(lab.solution)],
                           check=True, stdout=subprocess.DEVNULL)
            checks.append(time.perf_counter() - start)
        print(f"corolab lab check {number} (a fresh process, 3 runs): "
              f"{', '.join(f'{c:.1f}' for c in checks)} s (target <= 5 s)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
