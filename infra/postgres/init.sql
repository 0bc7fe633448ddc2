-- One PostgreSQL server, a database each for the Prefect server and MLflow's store, both
-- used by the superuser. The `driftline` database needs its role's password, which SQL
-- cannot read from the environment: init.sh creates both.
CREATE DATABASE prefect;
CREATE DATABASE mlflow;
