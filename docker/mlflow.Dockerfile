# The MLflow tracking server of docker/compose.yaml (the command is there): MLflow 3 and the
# Postgres driver its postgresql+psycopg:// backend store URI names.
FROM python:3.11-slim
RUN pip install --no-cache-dir "mlflow>=3,<4" "psycopg[binary]"
EXPOSE 5000
