/// The HTTP API's figures for `/metrics`: what the server cut off and what the reset gate refused.
enum HTTPMetrics {
    static func samples(server c: HTTPServerCounters, resets: [ResetRefusal: UInt64]) -> [MetricSample] {
        let refusedHelp = "HTTP connections closed at accept, by reason"
        var out: [MetricSample] = [
            .counter(name: "tibet_twin_http_connections_refused_total", help: refusedHelp,
                     labels: [("reason", "max_connections")], total: c.refusedTotal),
            .counter(name: "tibet_twin_http_connections_refused_total", help: refusedHelp,
                     labels: [("reason", "max_connections_per_client")], total: c.refusedPerClient),
            .counter(name: "tibet_twin_http_request_timeouts_total",
                     help: "HTTP connections closed because a request did not arrive within http.request_timeout_ms",
                     labels: [], total: c.requestTimeouts),
            .counter(name: "tibet_twin_http_bad_requests_total", help: "HTTP requests that were not HTTP (400, closed)",
                     labels: [], total: c.badRequests),
        ]
        for r in ResetRefusal.allCases {
            out.append(.counter(name: "tibet_twin_http_resets_refused_total",
                                help: "POST /reset refused before reaching the guard, by reason",
                                labels: [("reason", r.rawValue)], total: resets[r] ?? 0))
        }
        return out
    }
}
