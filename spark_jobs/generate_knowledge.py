"""spark-submit entry point: generate user or item knowledge (see r4ec/knowledge/job.py).

    spark-submit --master local[2] spark_jobs/generate_knowledge.py --entity user --strategy iterative --rounds 1 --limit 50

Settings not given here come from r4ec.toml and R4EC_* variables, as for the `r4ec` command.
The master is spark-submit's (--master, else spark-defaults.conf, else local[*]); --spark-master and
R4EC_KNOWLEDGE__SPARK_MASTER apply only where r4ec starts Spark itself (r4ec/spark.py).
"""

import sys

from r4ec.cli import main

if __name__ == "__main__":
    sys.exit(main(["knowledge", "generate", *sys.argv[1:]]))
