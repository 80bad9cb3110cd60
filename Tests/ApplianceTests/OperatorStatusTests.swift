import Testing
import Foundation
import TibetTwin
@testable import Appliance
import TestSupport

// The operator's view built from a status snapshot: /readyz, the per-device metrics and the
// page's wording. The same paths run for real (appliance, promtool, chromium) in EndToEndTests.

/// Two devices: crane-01 in sync, crane-02 with its PLC down (the reason shared by both its
/// intents, the hoist with an extra condition of its own).
let faultSnapshot = StatusSnapshot(
    node: "guard-01", healthy: true, auditHealthy: true, heartbeat: 7, wallNs: 1_764_000_000_000_000_000,
    devices: [
        DeviceStatus(device: "crane-01", intents: [
            IntentStatus(intent: "move_left", coil: 0, permit: true, reasonCode: .ok, reason: "Sync OK: drift=3ms, status match"),
        ], driftMs: 3, physicalAgeMs: 12, twinAgeMs: 30, physicalStatus: "operational", twinStatus: "operational",
        blockCount: 2, values: [ValueStatus(name: "position_x", physical: .double(Double(Float(230.1))), quality: .good,
                                            twin: 230.1, unit: "m", precision: .float32)],
        reasonCode: .ok, maxAgeMs: 500, maxDriftMs: 200),
        DeviceStatus(device: "crane-02", intents: [
            IntentStatus(intent: "move_left", coil: 1, permit: false, reasonCode: .comms,
                         reason: "BLOCKED: comms: poll failed: connect: ECONNREFUSED"),
            IntentStatus(intent: "hoist", coil: 2, permit: false, reasonCode: .comms,
                         reason: "BLOCKED: comms: poll failed: connect: ECONNREFUSED; intent hoist requires load_kg <= 40000, got no value",
                         conditions: ["intent hoist requires load_kg <= 40000, got no value"]),
        ], physicalAgeMs: 0.5, twinAgeMs: 40, twinStatus: "operational", blockCount: 5,
        reasonCode: .comms, reason: "comms: poll failed: connect: ECONNREFUSED",
        physicalError: "connect: ECONNREFUSED", inputProblems: ["comms: poll failed: connect: ECONNREFUSED"],
        maxAgeMs: 500, maxDriftMs: 200),
    ])

@Suite("Operator status: readiness, metrics, page")
struct OperatorStatusTests {
    @Test func readyzNamesEachFailingDevice() async throws {
        try await withServer(FakeControl(snapshot: faultSnapshot)) { url in
            let (code, body) = try SimpleHTTPClient.request(method: "GET", url: url, path: "/readyz")
            #expect(code == 503)
            #expect(String(decoding: body, as: UTF8.self) == """
                not ready: 1 of 2 devices with failing inputs
                crane-02: comms: poll failed: connect: ECONNREFUSED

                """)
            let (hcode, _) = try SimpleHTTPClient.request(method: "GET", url: url, path: "/healthz")
            #expect(hcode == 200, "liveness stays up while a device's inputs fail")
        }
        try await withServer(FakeControl()) { url in
            let (code, body) = try SimpleHTTPClient.request(method: "GET", url: url, path: "/readyz")
            #expect(code == 200)
            #expect(String(decoding: body, as: UTF8.self) == "ready: 1 devices, every input good\n")
        }
        try await withServer(FakeControl(healthy: false)) { url in
            let (code, body) = try SimpleHTTPClient.request(method: "GET", url: url, path: "/readyz")
            #expect(code == 503, "a guard that does not tick is not ready either")
            #expect(String(decoding: body, as: UTF8.self).contains("appliance: guard loop not ticking"))
        }
    }

    @Test func metricsCarryPerDeviceAndPerIntentSeries() async throws {
        try await withServer(FakeControl(snapshot: faultSnapshot)) { url in
            let (code, body) = try SimpleHTTPClient.request(method: "GET", url: url, path: "/metrics")
            #expect(code == 200)
            let text = String(decoding: body, as: UTF8.self)
            for line in [
                "tibet_twin_intent_permit{device=\"crane-01\",intent=\"move_left\"} 1",
                "tibet_twin_intent_permit{device=\"crane-02\",intent=\"hoist\"} 0",
                "tibet_twin_intent_reason_code{device=\"crane-02\",intent=\"hoist\"} 12",
                "tibet_twin_intent_reason{device=\"crane-02\",intent=\"hoist\",reason=\"COMMS\"} 1",
                "tibet_twin_intent_reason{device=\"crane-01\",intent=\"move_left\",reason=\"OK\"} 1",
                "tibet_twin_device_inputs_good{device=\"crane-02\"} 0",
                "tibet_twin_device_physical_data{device=\"crane-02\"} 0",
                "tibet_twin_device_blocks_total{device=\"crane-02\"} 5",
                "tibet_twin_device_physical_age_seconds{device=\"crane-01\"} 0.012",
                "tibet_twin_device_max_age_seconds{device=\"crane-01\"} 0.5",
                "tibet_twin_device_drift_seconds{device=\"crane-01\"} 0.003",
            ] {
                #expect(text.contains(line + "\n"), "missing \(line)")
            }
            #expect(!text.contains("tibet_twin_device_physical_age_seconds{device=\"crane-02\"}"), "no data has no age")
            // Each family once, its samples together.
            #expect(text.components(separatedBy: "# TYPE tibet_twin_intent_permit gauge").count == 2)
            let lines = text.split(separator: "\n").filter { $0.hasPrefix("tibet_twin_intent_permit{") || $0.hasPrefix("# TYPE tibet_twin_intent_permit ") }
            #expect(lines.count == 4)
        }
    }

    @Test func pollAndTwinSeriesOnlyForMappedDevices() {
        var live = PollerStats()
        var a = DevicePollStats(device: "crane-01")
        a.polls = 10
        a.errors = [.timeout: 2]
        a.connected = true
        a.lastPollNs = 1_500_000
        live.devices = [a]
        var retired = PollerStats()
        var old = DevicePollStats(device: "crane-01")
        old.polls = 5
        old.errors = [.timeout: 1, .connect: 3]
        var gone = DevicePollStats(device: "removed-by-reload")
        gone.polls = 99
        var first = PollerStats()
        first.devices = [old, gone]
        var second = PollerStats()
        second.devices = [old]
        retired.absorb(first)
        retired.absorb(second)
        #expect(retired.devices.count == 2, "a reload adds to a device's entry, not a new one")
        let polls = ApplianceMetrics.text(DeviceMetrics.pollSamples(live, retired: retired, devices: ["crane-01"]))
        #expect(polls.contains("tibet_twin_device_polls_total{device=\"crane-01\"} 20\n"))
        #expect(polls.contains("tibet_twin_device_poll_errors_total{device=\"crane-01\",kind=\"timeout\"} 4\n"))
        #expect(polls.contains("tibet_twin_device_poll_errors_total{device=\"crane-01\",kind=\"connect\"} 6\n"))
        #expect(polls.contains("tibet_twin_device_poll_duration_seconds{device=\"crane-01\"} 0.0015\n"))
        #expect(polls.contains("tibet_twin_device_plc_connected{device=\"crane-01\"} 1\n"))
        #expect(!polls.contains("removed-by-reload"))

        var feed = TwinFeedCounters(source: "tcp:127.0.0.1:7502")
        feed.devices["crane-01"] = DeviceTwinCounters(accepted: 7, dropped: [.replay: 2])
        feed.devices["old-device"] = DeviceTwinCounters(accepted: 1, dropped: [:])
        var other = TwinFeedCounters(source: "unix:/run/t.sock")
        other.devices["crane-01"] = DeviceTwinCounters(accepted: 3, dropped: [:])
        let twin = ApplianceMetrics.text(DeviceMetrics.twinSamples([feed, other], devices: ["crane-01", "crane-02"]))
        #expect(twin.contains("tibet_twin_device_twin_lines_accepted_total{device=\"crane-01\"} 10\n"))
        #expect(twin.contains("tibet_twin_device_twin_lines_accepted_total{device=\"crane-02\"} 0\n"), "a silent device shows 0")
        #expect(twin.contains("tibet_twin_device_twin_lines_dropped_total{device=\"crane-01\",reason=\"replay\"} 2\n"))
        #expect(!twin.contains("old-device"))
    }

    @Test func pageShowsNoDataAndARedHeaderForAFault() {
        let html = faultSnapshot.html
        #expect(html.contains("<header class=\"fault\""))
        #expect(html.contains("1 of 2 devices in FAULT"))
        #expect(html.contains("<title>FAULT · tibet-twin guard-01</title>"))
        let row2 = html.components(separatedBy: "data-device=\"crane-02\"")[1].components(separatedBy: "</tr>")[0]
        #expect(row2.contains("data-state=\"fault\""))
        #expect(row2.contains("no data"))
        #expect(!row2.contains("age 0.5"), "a failed poll has no age to show")
        #expect(row2.components(separatedBy: ">comms: poll failed: connect: ECONNREFUSED").count - 1 == 1,
                "the reason once for the device, not per intent")
        #expect(row2.contains("<span class=\"cond\">intent hoist requires load_kg &lt;= 40000, got no value</span>"))
        let row1 = html.components(separatedBy: "data-device=\"crane-01\"")[1].components(separatedBy: "</tr>")[0]
        #expect(row1.contains("data-state=\"ok\""))
        #expect(row1.contains("position_x: 230.1 m"), "float32 at its precision")
        #expect(row1.contains("operational · 12 ms"))
        #expect(html.contains("<th>physical · age (limit 500 ms)</th>"), "a limit all devices share is in the heading")

        let good = StatusSnapshot(node: "g", healthy: true, auditHealthy: true, heartbeat: 1, wallNs: 0,
                                  devices: [faultSnapshot.devices[0]])
        #expect(good.html.contains("<header class=\"allgood\""))
        let text = faultSnapshot.text(color: false)
        #expect(text.contains("1 of 2 devices in FAULT"))
        #expect(text.contains("crane-02  FAULT"))
        #expect(text.contains("physical no data"))
        #expect(text.contains("  reason: comms: poll failed: connect: ECONNREFUSED\n"))
        #expect(text.contains("  BLOCKED move_left (coil 1)\n"), "the shared reason is not repeated per intent")
        #expect(text.contains("  BLOCKED hoist (coil 2)  intent hoist requires load_kg <= 40000, got no value\n"))
    }

    @Test func statusJSONCarriesTheNewFieldsAndReadsBack() throws {
        let json = faultSnapshot.json
        let c2 = try #require(json["devices"]?["crane-02"])
        #expect(c2["reason"]?.stringValue == "comms: poll failed: connect: ECONNREFUSED")
        #expect(c2["reason_code"]?.intValue == 12)
        #expect(c2["poll_error"]?.stringValue == "connect: ECONNREFUSED")
        #expect(c2["input_problems"] == .array(["comms: poll failed: connect: ECONNREFUSED"]))
        #expect(c2["intents"]?["hoist"]?["conditions"] == .array(["intent hoist requires load_kg <= 40000, got no value"]))
        #expect(json["devices"]?["crane-01"]?["values"]?["position_x"]?["value"] == .double(230.1))
        #expect(json.canonical.contains("\"value\":230.1}"))
        let back = try #require(StatusSnapshot(json: try JSONParser.parse(json.canonical)))
        #expect(back.devices[1].inputProblems == faultSnapshot.devices[1].inputProblems)
        #expect(back.devices[1].reason == faultSnapshot.devices[1].reason)
        #expect(back.devices[1].physicalError == "connect: ECONNREFUSED")
        #expect(back.devices[1].intents.first { $0.intent == "hoist" }?.conditions == faultSnapshot.devices[1].intents[1].conditions)
        #expect(back.failingDevices.map(\.device) == ["crane-02"])
    }
}
