-- One PostgreSQL server, a database each for the Prefect server and MLflow's store.
CREATE DATABASE prefect;
CREATE DATABASE mlflow;
