"""spark-submit entry point: refresh user or item knowledge for an interval (see r4ec/knowledge/job.py).

    spark-submit --master local[2] spark_jobs/refresh_knowledge.py --entity both --start 1998-01-01 --end 1998-01-08

Settings not given here come from r4ec.toml and R4EC_* variables (R4EC_REFRESH_START, R4EC_REFRESH_END included),
as for the `r4ec` command. The master is spark-submit's.
"""

import sys

from r4ec.cli import main

if __name__ == "__main__":
    sys.exit(main(["knowledge", "refresh", *sys.argv[1:]]))
