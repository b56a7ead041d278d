-- Run once by the postgres image when its volume is new (docker-entrypoint-initdb.d): the
-- database of the Optuna studies, next to MLflow's (POSTGRES_DB=mlflow).
CREATE DATABASE optuna;
