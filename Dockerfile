# The worker image used by docker-compose.yml.
FROM python:3.11-slim
WORKDIR /app
COPY . .
RUN pip install --no-cache-dir -e .
EXPOSE 6066
CMD ["faust", "-A", "streams_app", "worker", "-l", "info"]
