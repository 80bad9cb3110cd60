import Testing
import Foundation
import Synchronization
import TibetTwin
@testable import Appliance
import TestSupport

/// A stand-in for the guard loop: answers status from a fixed snapshot and records resets.
final class FakeControl: ApplianceControl {
    let snapshot: StatusSnapshot
    let resets = Mutex<[(String, String?, String)]>([])
    let metrics = ApplianceMetrics()
    let healthy: Bool
    let sinceTickMs: Double?

    init(snapshot: StatusSnapshot = FakeControl.sample, healthy: Bool = true, sinceTickMs: Double? = nil) {
        self.snapshot = snapshot
        self.healthy = healthy
        self.sinceTickMs = sinceTickMs
    }

    func status(_ done: @escaping @Sendable (StatusSnapshot?) -> Void) {
        // Answer from another thread, as the guard loop does.
        Thread.detachNewThread { [snapshot] in done(snapshot) }
    }

    func reset(device: String, intent: String?, client: String, _ done: @escaping @Sendable (ResetOutcome) -> Void) {
        resets.withLock { $0.append((device, intent, client)) }
        guard let d = snapshot.devices.first(where: { $0.device == device }) else { return done(.unknownDevice(device)) }
        if let intent, !d.intents.contains(where: { $0.intent == intent }) {
            return done(.unknownIntent(device: device, intent: intent))
        }
        done(.done(device: device, cleared: d.intents.filter { $0.latched && (intent == nil || $0.intent == intent) }.map(\.intent)))
    }

    func metricsText(status: StatusSnapshot?) -> [UInt8] { metrics.render(status: status) }

    func health() -> HealthSnapshot {
        HealthSnapshot(guardAlive: healthy, auditHealthy: true, ready: true, heartbeat: 7, sinceTickMs: sinceTickMs ?? (healthy ? 3 : 9000))
    }

    static let sample = StatusSnapshot(
        node: "guard-01", healthy: true, auditHealthy: true, heartbeat: 42, wallNs: 1_764_000_000_000_000_000,
        devices: [
            DeviceStatus(
                device: "crane-01",
                intents: [
                    IntentStatus(intent: "move_left", coil: 0, permit: true, reasonCode: .ok, reason: "OK: in sync"),
                    IntentStatus(intent: "hoist", coil: 1, permit: false, reasonCode: .statusMismatch,
                                 reason: "BLOCKED: status mismatch: physical=fault, twin=operational", latched: true),
                ],
                driftMs: 12.34, physicalAgeMs: 20, twinAgeMs: 35.06, physicalStatus: "fault", twinStatus: "operational",
                identity: "ok", twinSeq: 1042, blockCount: 3,
                values: [ValueStatus(name: "load_kg", physical: .uint(2500), quality: .good, twin: 2510, unit: "kg", tolerance: 100),
                         ValueStatus(name: "position_x", physical: nil, quality: .badTimeout, twin: 12.5, unit: "m <x>")]),
        ])
}

/// Starts an HTTP server for `control` on a free loopback port; stops it when done.
func withServer(_ control: any ApplianceControl, _ body: (String) async throws -> Void) async throws {
    let server = HTTPServer(host: "127.0.0.1", port: 0, handler: HTTPAPI(control: control).handler)
    let port = try await server.start()
    do {
        try await body("http://127.0.0.1:\(port)")
    } catch {
        await server.stop()
        throw error
    }
    await server.stop()
}

@Suite("HTTP API")
struct HTTPAPITests {
    @Test func statusJSONHasTheShapeOfSpec6() async throws {
        try await withServer(FakeControl()) { url in
            let (code, body) = try SimpleHTTPClient.request(method: "GET", url: url, path: "/status")
            #expect(code == 200)
            let json = try JSONParser.parse(String(decoding: body, as: UTF8.self))
            #expect(json["node"]?.stringValue == "guard-01")
            #expect(json["healthy"]?.boolValue == true)
            #expect(json["heartbeat"]?.intValue == 42)
            let crane = try #require(json["devices"]?["crane-01"])
            #expect(crane["intents"]?["move_left"]?["permit"]?.boolValue == true)
            #expect(crane["intents"]?["move_left"]?["reason_code"]?.intValue == 0)
            #expect(crane["intents"]?["hoist"]?["permit"]?.boolValue == false)
            #expect(crane["intents"]?["hoist"]?["reason_code"]?.intValue == 6)
            #expect(crane["intents"]?["hoist"]?["reason"]?.stringValue == "BLOCKED: status mismatch: physical=fault, twin=operational")
            #expect(crane["drift_ms"]?.doubleValue == 12.3)
            #expect(crane["physical_age_ms"]?.doubleValue == 20)
            #expect(crane["twin_age_ms"]?.doubleValue == 35.1)
            #expect(crane["values"]?["load_kg"]?["value"]?.intValue == 2500)
            #expect(crane["values"]?["load_kg"]?["quality"]?.stringValue == "good")
            #expect(crane["values"]?["position_x"]?["quality"]?.stringValue == "bad_timeout")
            #expect(crane["values"]?["position_x"]?["value"] == .null)
            // The CLI reads it back into the same snapshot.
            let back = try #require(StatusSnapshot(json: json))
            #expect(back.devices.first?.intents.map(\.intent) == ["move_left", "hoist"])
            #expect(back.devices.first?.intents.last?.latched == true)
            #expect(back.permitCount == 1)
        }
    }

    @Test func curlAgreesAsAnOutsideClient() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: "/usr/bin/curl"))
        try await withServer(FakeControl()) { url in
            let (code, out) = try runProcess("/usr/bin/curl", ["-sS", "-w", "\n%{http_code} %{content_type}", url + "/status"])
            #expect(code == 0)
            #expect(out.hasSuffix("200 application/json"))
            #expect(out.contains("\"crane-01\""))
            let (hcode, html) = try runProcess("/usr/bin/curl", ["-sS", url + "/"])
            #expect(hcode == 0)
            #expect(html.contains("http-equiv=\"refresh\""))
            #expect(html.contains("class=\"intent ok\""))
            #expect(html.contains("class=\"intent blocked\""))
            #expect(html.contains("status mismatch: physical=fault, twin=operational"))
            #expect(html.contains("m &lt;x&gt;"), "values are HTML-escaped")
            // Keep-alive: two requests on one connection.
            let (kcode, two) = try runProcess("/usr/bin/curl", ["-sS", "-o", "/dev/null", "-o", "/dev/null", "-w", "%{num_connects} ",
                                                               url + "/healthz", url + "/healthz"])
            #expect(kcode == 0)
            #expect(two == "1 0 ")
        }
    }

    @Test func healthz() async throws {
        try await withServer(FakeControl()) { url in
            let (code, body) = try SimpleHTTPClient.request(method: "GET", url: url, path: "/healthz")
            #expect(code == 200)
            #expect(String(decoding: body, as: UTF8.self).hasPrefix("ok"))
        }
        try await withServer(FakeControl(healthy: false)) { url in
            let (code, body) = try SimpleHTTPClient.request(method: "GET", url: url, path: "/healthz")
            #expect(code == 503)
            #expect(String(decoding: body, as: UTF8.self).contains("guard loop not ticking"))
        }
        // During start-up, before the guard loop exists: no tick at all (infinity) is an answer,
        // not a crash of the appliance.
        try await withServer(FakeControl(healthy: false, sinceTickMs: .infinity)) { url in
            let (code, body) = try SimpleHTTPClient.request(method: "GET", url: url, path: "/healthz")
            #expect(code == 503)
            #expect(String(decoding: body, as: UTF8.self).contains("guard loop not ticking (no tick yet)"))
        }
    }

    @Test func resetIsAPostWithItsOutcome() async throws {
        let control = FakeControl()
        try await withServer(control) { url in
            let (get, _) = try SimpleHTTPClient.request(method: "GET", url: url, path: "/reset?device=crane-01")
            #expect(get == 405)
            #expect(control.resets.withLock { $0.isEmpty }, "a GET never resets")

            let (ok, body) = try SimpleHTTPClient.request(method: "POST", url: url, path: "/reset?device=crane-01&intent=hoist")
            #expect(ok == 200)
            let json = try JSONParser.parse(String(decoding: body, as: UTF8.self))
            #expect(json["cleared"] == .array(["hoist"]))

            let (jsonBody, _) = try SimpleHTTPClient.request(method: "POST", url: url, path: "/reset",
                                                         body: Array(#"{"device":"crane-01"}"#.utf8))
            #expect(jsonBody == 200)

            let (unknown, ubody) = try SimpleHTTPClient.request(method: "POST", url: url, path: "/reset?device=nope")
            #expect(unknown == 404)
            #expect(String(decoding: ubody, as: UTF8.self).contains("unknown device"))
            let (missing, _) = try SimpleHTTPClient.request(method: "POST", url: url, path: "/reset")
            #expect(missing == 400)
        }
        let calls = control.resets.withLock { $0 }
        #expect(calls.count == 3)
        #expect(calls.first?.0 == "crane-01")
        #expect(calls.first?.1 == "hoist")
        #expect(calls.first?.2.hasPrefix("127.0.0.1:") == true, "the client's address is handed on for the audit")
        #expect(calls.dropFirst().first?.1 == nil)
    }

    @Test func metricsArePrometheusText() async throws {
        let control = FakeControl()
        control.metrics.countDecisions(5)
        control.metrics.countDrop(reason: .statusMismatch)
        control.metrics.countRise()
        control.metrics.countTick(heartbeat: 9)
        control.metrics.addSource {
            [.counter(name: "tibet_twin_polls_total", help: "Polls", labels: [("device", "crane-01")], total: 17),
             .histogram(name: "tibet_twin_poll_latency_seconds", help: "Poll latency", labels: [],
                        bounds: [0.001, 0.01], counts: [3, 16], sum: 0.05, count: 17)]
        }
        try await withServer(control) { url in
            let (code, body) = try SimpleHTTPClient.request(method: "GET", url: url, path: "/metrics")
            #expect(code == 200)
            let text = String(decoding: body, as: UTF8.self)
            #expect(text.contains("# TYPE tibet_twin_decisions_total counter"))
            #expect(text.contains("tibet_twin_decisions_total 5"))
            #expect(text.contains("tibet_twin_blocks_total{reason=\"STATUS_MISMATCH\"} 1"))
            #expect(text.contains("tibet_twin_permit_changes_total{direction=\"rise\"} 1"))
            #expect(text.contains("tibet_twin_heartbeat 9"))
            #expect(text.contains("tibet_twin_polls_total{device=\"crane-01\"} 17"))
            #expect(text.contains("# TYPE tibet_twin_poll_latency_seconds histogram"))
            #expect(text.contains("tibet_twin_poll_latency_seconds_bucket{le=\"0.001\"} 3"))
            #expect(text.contains("tibet_twin_poll_latency_seconds_bucket{le=\"+Inf\"} 17"))
            #expect(text.contains("tibet_twin_poll_latency_seconds_count 17"))
        }
    }

    @Test func snapshotCountersAccumulateAcrossRestarts() {
        let m = ApplianceMetrics()
        let total = Mutex<UInt64>(10)
        m.addSource { [.counter(name: "x_total", help: "x", labels: [], total: total.withLock { $0 })] }
        _ = m.render()
        total.withLock { $0 = 15 }
        _ = m.render()
        total.withLock { $0 = 4 }  // the part was restarted by a reload
        let text = String(decoding: m.render(), as: UTF8.self)
        #expect(text.contains("x_total 19"))
    }

    @Test func unknownPathsAndBadMethods() async throws {
        try await withServer(FakeControl()) { url in
            let nope = try SimpleHTTPClient.request(method: "GET", url: url, path: "/nope")
            #expect(nope.status == 404)
            let post = try SimpleHTTPClient.request(method: "POST", url: url, path: "/status")
            #expect(post.status == 405)
            let big = try SimpleHTTPClient.request(method: "POST", url: url, path: "/reset",
                                                   body: [UInt8](repeating: 65, count: HTTPServer.maxBody + 10))
            #expect(big.status == 413)
            // The server is still there.
            let health = try SimpleHTTPClient.request(method: "GET", url: url, path: "/healthz")
            #expect(health.status == 200)
        }
    }

    @Test func unreachableIsATypedError() {
        #expect(throws: HTTPClientError.self) {
            _ = try SimpleHTTPClient.request(method: "GET", url: "http://127.0.0.1:1", path: "/status", timeoutMs: 1000)
        }
        #expect(SimpleHTTPClient.parse(url: "http://[::1]:9102/base/")! == ("::1", 9102, "/base"))
        #expect(SimpleHTTPClient.parse(url: "127.0.0.1:9102")! == ("127.0.0.1", 9102, ""))
        #expect(SimpleHTTPClient.parse(url: "https://x:1") == nil)
    }

    @Test func statusTextAndPercentDecoding() {
        let text = FakeControl.sample.text(color: false)
        #expect(text.contains("PERMIT  move_left (coil 0)"))
        #expect(text.contains("BLOCKED hoist (coil 1)  BLOCKED: status mismatch"))
        #expect(text.contains("[latched]"))
        let (path, q) = HTTPRequestHandler.split(uri: "/reset?device=crane%2D01&intent=move+left&x")
        #expect(path == "/reset")
        #expect(q == ["device": "crane-01", "intent": "move left", "x": ""])
    }
}
