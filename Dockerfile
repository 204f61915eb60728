# The worker image used by docker-compose.yml (also runs the payment API: same packages).
# The base install only: the lab's and the benchmark's packages are extras ([lab], [bench]).
FROM python:3.11-slim
WORKDIR /app
COPY . .
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin payments \
    && mkdir -p /data && chown payments /data
# Not root: a compromised worker cannot write outside /data (its tables) and /tmp.
USER payments
EXPOSE 6066
CMD ["faust", "-A", "streams_app", "worker", "-l", "info"]
