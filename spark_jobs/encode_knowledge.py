"""spark-submit entry point: encode a knowledge run into vectors (see r4ec/encoding.py).

    spark-submit --master local[2] spark_jobs/encode_knowledge.py --entity both --strategy iterative

Settings not given here come from r4ec.toml and R4EC_* variables, as for the `r4ec` command.
The master is spark-submit's (--master, else spark-defaults.conf, else local[*]); --spark-master and
R4EC_KNOWLEDGE__SPARK_MASTER apply only where r4ec starts Spark itself (r4ec/spark.py).
"""

import sys

from r4ec.cli import main

if __name__ == "__main__":
    sys.exit(main(["knowledge", "encode", *sys.argv[1:]]))
