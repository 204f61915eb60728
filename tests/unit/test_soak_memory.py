"""How the soak judges memory: growth over the run, and the slope once the dedup state has
stopped growing (what a leak would show)."""

from __future__ import annotations

from lab.soak import Sample, SoakResult, scrape_memory


def _result(rss: list[tuple[float, float]], horizon_s: float | None = 600.0) -> SoakResult:
    return SoakResult(guarantee="exactly_once", minutes=30, rate=200, events=360_000, horizon_s=horizon_s,
                      samples=[Sample(t=t, rss_mb={"w1": mb}, state_mb={"w1": 0.3}) for t, mb in rss])


def test_state_that_grows_until_the_horizon_then_stays_is_flat_after_it():
    # 100 MB -> 200 MB over the first 10 minutes (the dedup state filling), flat after.
    rss = [(t, 100 + min(t, 600) / 6) for t in range(0, 1800, 10)]
    result = _result(rss)
    assert result.rss_growth_mb()["w1"] > 40  # the whole-run figure sees the state build up
    assert result.rss_slope_after_horizon() == {"w1": 0.0}


def test_a_leak_after_the_horizon_shows_as_its_rate():
    rss = [(t, 200 + t / 60) for t in range(0, 1800, 10)]  # +1 MB a minute, all along
    assert result_slope(rss) == 10.0


def test_no_horizon_or_too_few_late_samples_give_no_slope():
    rss = [(t, 100.0) for t in range(0, 1800, 10)]
    assert _result(rss, horizon_s=None).rss_slope_after_horizon() == {}
    assert _result(rss, horizon_s=1700).rss_slope_after_horizon() == {}


def result_slope(rss: list[tuple[float, float]]) -> float:
    return _result(rss).rss_slope_after_horizon()["w1"]


def test_the_memory_table_says_which_part_grows_after_the_horizon():
    samples = [Sample(t=t, rss_mb={"w1": 200 + t / 60}, state_mb={},
                      memory={"w1": {"rss": 200 + t / 60, "rocksdb_memtables": 20.0}})
               for t in range(0, 1800, 10)]
    result = SoakResult(guarantee="exactly_once", minutes=30, rate=200, events=360_000, horizon_s=600.0,
                        samples=samples)
    rows = result.memory_table()["w1"]
    assert rows["rss"] == (201.0, 200 + 1790 / 60, 10.0)
    assert rows["rocksdb_memtables"] == (20.0, 20.0, 0.0)


def test_a_worker_s_memory_parts_are_read_from_its_metrics_page():
    import http.server
    import threading

    from streams_app import metrics

    metrics.set_memory({"rss": 3 * 2**20, "rocksdb_memtables": 2**20, "table_stores": 4, "open_stores": 5})
    page = metrics.generate_latest(metrics.REGISTRY)

    class Metrics(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        parts = scrape_memory(f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
    assert parts == {"rss": 3.0, "rocksdb_memtables": 1.0, "stores_tables": 4.0, "stores_process": 5.0}
    assert scrape_memory("http://127.0.0.1:9") == {}  # nobody there: nothing, no error
