"""`python -m bench.noise ...`: the noise-robustness benchmark's command line (bench.noise.cli)."""
import sys

from bench.noise.cli import main

sys.exit(main())
