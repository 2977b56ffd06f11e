# Source this from the repository root before `airflow standalone` or any `airflow` command:
#     source scripts/airflow_env.sh
# Airflow's home under data/, this repository's DAGs, no examples, the API server and the workers' execution API on
# loopback, the Spark connection the DAGs submit to (local, 2 cores), and this environment's airflow/spark-submit.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$root/data/airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$root/dags"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__API__HOST=127.0.0.1
export AIRFLOW__API__PORT="${AIRFLOW__API__PORT:-8089}"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:${AIRFLOW__API__PORT}/execution/"
export AIRFLOW_CONN_R4EC_SPARK="${AIRFLOW_CONN_R4EC_SPARK:-{\"conn_type\": \"spark\", \"host\": \"local[2]\"\}}"
export R4EC_DATA_DIR="${R4EC_DATA_DIR:-$root/data}"
export PATH="$root/.venv/bin:$PATH"
