"""Speed benchmark (see dmlbench.perf): python benchmarks/perf.py --dataset mnist --data-dir /work/shared/data"""
import sys

from dmlbench.cli import app

if __name__ == "__main__":
    app(["perf", *sys.argv[1:]], prog_name="benchmarks/perf.py")
