import Foundation
import Testing
import TibetTwin
#if canImport(Glibc)
import Glibc
import TestSupport
#endif

// What an operator watches, tested with the outside tools they use: Prometheus' promtool on a
// real scrape and on the shipped rules, and headless Chromium on the status page, against the
// built appliance polling `tibet-twin simulate` and fed by a twin over TCP.

let promtool = "/usr/bin/promtool"
let chromium = "/usr/bin/chromium"

/// A map for these tests: the rig's crane with a scaled register (`temp_c`, int16 × 0.1),
/// its PLC at `port`, polled every `pollMs`.
func operatorMapYAML(device: String, port: Int, coil: Int, pollMs: Int = 100, maxAgeMs: Int = 1000) -> String {
    rigMapYAML(device: device, port: port, coil: coil, pollMs: pollMs, timeoutMs: 200, maxAgeMs: maxAgeMs,
               extraRegisters: ["{name: temp_c, address: 104, type: int16, scale: 0.1, unit: °C}"])
}

/// A twin for many devices over one TCP connection: every 200 ms one line per device with the
/// status given for it. The status `BAD` sends a line whose `values` is not an object (dropped
/// as `wrong_type`, counted for that device).
final class ManyDeviceTwin {
    let child: Child

    static let script = """
        import datetime, json, socket, sys, time
        host, port, devices, values = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4])
        s, seq = None, int(time.time() * 1000)
        while True:
            try:
                if s is None:
                    s = socket.create_connection((host, port), timeout=2)
                    print("connected", flush=True)
                seq += 1
                ts = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
                out = []
                for d, st in devices.items():
                    v = "oops" if st == "BAD" else values
                    out.append(json.dumps({"device": d, "ts": ts, "seq": seq, "status": "operational" if st == "BAD" else st, "values": v}))
                s.sendall(("\\n".join(out) + "\\n").encode())
            except OSError:
                if s is not None:
                    s.close()
                s = None
            time.sleep(0.2)
        """

    init(port: Int, devices: [String: String], values: [String: Double], dir: TempDir) throws {
        guard let python = pythonWithPymodbus() else { throw HarnessError("python venv missing: run scripts/setup.sh") }
        try dir.write("many_twin.py", Self.script)
        func json(_ o: [String: Any]) -> String {
            String(decoding: try! JSONSerialization.data(withJSONObject: o, options: [.sortedKeys]), as: UTF8.self)
        }
        child = try Child(python, [dir.file("many_twin.py"), "127.0.0.1", String(port), json(devices), json(values)], name: "twin")
    }

    deinit { child.stop(grace: 1) }
}

/// `GET url`: (HTTP status, body), with curl.
func httpStatusAndBody(_ url: String) throws -> (Int, String) {
    let (_, out) = try runTool("/usr/bin/curl", ["-sS", "-w", "\n%{http_code}", url])
    guard let nl = out.lastIndex(of: "\n") else { return (0, out) }
    return (Int(out[out.index(after: nl)...]) ?? 0, String(out[..<nl]))
}

/// The `/status` JSON.
func statusJSON(_ url: String) throws -> JSONValue? {
    let (code, body) = try httpStatusAndBody(url + "/status")
    return code == 200 ? try? JSONParser.parse(body) : nil
}

/// Where the tests leave what a person should look at (screenshots): `.build/test-artifacts`.
func artifactPath(_ name: String) throws -> String {
    let dir = packageRoot.appendingPathComponent(".build/test-artifacts")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    return dir.appendingPathComponent(name).path
}

/// Headless Chromium on `url`: a screenshot into `screenshot` and the DOM after the page's
/// scripts ran. Runs as root here, hence `--no-sandbox`; a profile of its own per call.
func renderInChromium(_ url: String, screenshot: String, height: Int = 2000) throws -> String {
    let profile = try TempDir("tibet-chromium")
    defer { profile.cleanup() }
    let common = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
                  "--user-data-dir=\(profile.path)", "--window-size=1280,\(height)"]
    let (scode, sout) = try runTool(chromium, common + ["--screenshot=\(screenshot)", url])
    guard scode == 0, FileManager.default.fileExists(atPath: screenshot) else {
        throw HarnessError("chromium --screenshot failed (\(scode)): \(sout)")
    }
    let p = Process()
    p.executableURL = URL(fileURLWithPath: chromium)
    p.arguments = common + ["--dump-dom", url]
    let out = Pipe()
    p.standardOutput = out
    p.standardError = FileHandle.nullDevice
    try p.run()
    let dom = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    p.waitUntilExit()
    guard p.terminationStatus == 0 else { throw HarnessError("chromium --dump-dom failed (\(p.terminationStatus))") }
    try dom.write(toFile: screenshot.replacingOccurrences(of: ".png", with: ".html"), atomically: true, encoding: .utf8)
    return dom
}

/// The row of `device` in a dumped DOM: its opening tag and cells.
func domRow(_ dom: String, device: String) -> String? {
    guard let start = dom.range(of: "data-device=\"\(device)\"") else { return nil }
    let rest = dom[start.lowerBound...]
    guard let end = rest.range(of: "</tr>") else { return nil }
    return String(rest[..<end.upperBound])
}

/// Every `tibet_twin_…` metric name an expression text mentions (histogram parts to their family).
func metricNames(in text: String) -> Set<String> {
    var names = Set<String>()
    var i = text.startIndex
    while let r = text.range(of: "tibet_twin_", range: i..<text.endIndex) {
        var j = r.upperBound
        while j < text.endIndex, text[j].isLetter || text[j].isNumber || text[j] == "_" { j = text.index(after: j) }
        names.insert(String(text[r.lowerBound..<j]))
        i = j
    }
    return names
}

/// The sample names of a Prometheus text exposition (histograms with their `_bucket`, `_sum`, `_count`).
func exportedNames(_ exposition: String) -> Set<String> {
    var names = Set<String>()
    for line in exposition.split(separator: "\n") where !line.hasPrefix("#") {
        let end = line.firstIndex { $0 == "{" || $0 == " " } ?? line.endIndex
        names.insert(String(line[..<end]))
    }
    return names
}

@Suite("Operator view: metrics, rules, readiness, status page", .serialized)
struct OperatorViewTests {
    let dashboard = packageRoot.appendingPathComponent("contrib/grafana/tibet-twin.json")
    let alerts = packageRoot.appendingPathComponent("contrib/prometheus/alerts.yml")
    let alertTests = packageRoot.appendingPathComponent("contrib/prometheus/alerts.test.yml")

    @Test func shippedAlertRulesPassPromtool() throws {
        let (ccode, cout) = try runTool(promtool, ["check", "rules", alerts.path])
        #expect(ccode == 0, "\(cout)")
        #expect(cout.contains("SUCCESS: 6 rules found"), "\(cout)")
        let (tcode, tout) = try runTool(promtool, ["test", "rules", alertTests.path])
        #expect(tcode == 0, "\(tout)")
        #expect(tout.contains("SUCCESS"), "\(tout)")
        // The unit tests exercise at least these alerts.
        let tests = try String(contentsOf: alertTests, encoding: .utf8)
        for alert in ["TibetTwinPLCUnreachable", "TibetTwinHeartbeatStalled", "TibetTwinDeviceBlocked",
                      "TibetTwinAuditUnhealthy", "TibetTwinTwinSilent"] {
            #expect(tests.contains("alertname: \(alert)"), "no unit test for \(alert)")
        }
    }

    @Test func dashboardIsGrafanaJSONWithADeviceVariable() throws {
        let json = try JSONParser.parse(String(contentsOf: dashboard, encoding: .utf8))
        let vars = json["templating"]?["list"]?.arrayValue ?? []
        #expect(vars.contains { $0["name"]?.stringValue == "device" && $0["multi"]?.boolValue == true })
        let panels = json["panels"]?.arrayValue ?? []
        let titles = panels.compactMap { $0["title"]?.stringValue }
        for t in ["Permits per device", "Blocked intents by reason over time", "Physical and twin age vs limit",
                  "Poll latency", "Audit durability lag"] {
            #expect(titles.contains(t), "no panel \(t)")
        }
        // Every per-device expression is filtered by the variable.
        for p in panels {
            for t in p["targets"]?.arrayValue ?? [] {
                let expr = t["expr"]?.stringValue ?? ""
                if expr.contains("tibet_twin_device_") || expr.contains("tibet_twin_intent_") {
                    #expect(expr.contains("device=~\"$device\""), "\(expr)")
                }
            }
        }
    }

    /// The real appliance with two devices, one in sync and one whose PLC is down and whose
    /// twin lines are malformed; a twin line for a device no map has. The scrape passes
    /// `promtool check metrics`, holds every name the dashboard and the rules use, per-device
    /// values that match the situation, and no series for the unknown device.
    @Test func scrapeIsValidAndHasEveryNameTheDashboardAndRulesUse() async throws {
        let scratch = try TempDir("tibet-ops")
        defer { scratch.cleanup() }
        try scratch.write("plc.yaml", operatorMapYAML(device: "crane-01", port: 1502, coil: 0))
        let sim = try SimulatorChild(["--map", scratch.file("plc.yaml"), "--listen", "127.0.0.1:0",
                                      "--set", "position_x=230.1", "--set", "load_kg=2500", "--set", "temp_c=7.3"])
        defer { _ = sim.quit() }
        let rig = try ApplianceRig(maps: [
            "crane-01": operatorMapYAML(device: "crane-01", port: sim.port, coil: 0),
            "crane-02": operatorMapYAML(device: "crane-02", port: closedPort(), coil: 2),
        ])
        try await rig.start()
        let twin = try ManyDeviceTwin(port: rig.twinPort,
                                      devices: ["crane-01": "operational", "crane-02": "BAD", "intruder-9f3": "operational"],
                                      values: ["position_x": 230.1, "load_kg": 2500, "temp_c": 7.3], dir: scratch)
        _ = twin
        let permitted = await eventually(within: 30) {
            guard let s = try? statusJSON(rig.url) else { return false }
            return s["devices"]?["crane-01"]?["intents"]?["move_left"]?["permit"] == .bool(true)
        }
        #expect(permitted, "crane-01 never permitted\n\(rig.transcript)")

        var scrape = ""
        let complete = await eventually(within: 30) {
            scrape = (try? runTool("/usr/bin/curl", ["-sS", rig.url + "/metrics"]))?.1 ?? ""
            return scrape.contains("tibet_twin_device_poll_errors_total{device=\"crane-02\"")
                && scrape.contains("tibet_twin_device_twin_lines_dropped_total{device=\"crane-02\",reason=\"wrong_type\"}")
        }
        #expect(complete, "\(scrape.split(separator: "\n").filter { $0.contains("crane-02") && !$0.contains("intent") }.joined(separator: "\n"))")
        let file = scratch.file("scrape.txt")
        try scrape.write(toFile: file, atomically: true, encoding: .utf8)
        let (pcode, pout) = try runTool("/bin/sh", ["-c", "\(promtool) check metrics < '\(file)'"])
        #expect(pcode == 0, "promtool check metrics:\n\(pout)")

        let exported = exportedNames(scrape)
        let used = try metricNames(in: String(contentsOf: dashboard, encoding: .utf8))
            .union(metricNames(in: String(contentsOf: alerts, encoding: .utf8)))
        #expect(used.count >= 20)
        for name in used.sorted() {
            #expect(exported.contains(name), "\(name) is used by the dashboard or the rules but not exported")
        }

        // The figures say what is going on.
        #expect(scrape.contains("tibet_twin_intent_permit{device=\"crane-01\",intent=\"move_left\"} 1"))
        #expect(scrape.contains("tibet_twin_intent_permit{device=\"crane-02\",intent=\"hoist\"} 0"))
        #expect(scrape.contains("tibet_twin_intent_reason{device=\"crane-02\",intent=\"hoist\",reason=\"COMMS\"} 1"), "\(scrape)")
        #expect(scrape.contains("tibet_twin_device_physical_data{device=\"crane-01\"} 1"))
        #expect(scrape.contains("tibet_twin_device_physical_data{device=\"crane-02\"} 0"))
        #expect(scrape.contains("tibet_twin_device_inputs_good{device=\"crane-02\"} 0"))
        #expect(scrape.contains("tibet_twin_device_max_age_seconds{device=\"crane-01\"} 1"))
        #expect(!scrape.contains("tibet_twin_device_physical_age_seconds{device=\"crane-02\"}"), "no data is not an age")
        // A line naming no mapped device is counted per source only: no series carries its name.
        #expect(!scrape.contains("intruder-9f3"))
        let unknownDrops = scrape.split(separator: "\n").first {
            $0.hasPrefix("tibet_twin_twin_lines_dropped_total{source=\"tcp:") && $0.contains("reason=\"unknown_device\"}")
        }
        #expect(unknownDrops.map { !$0.hasSuffix(" 0") } == true, "\(unknownDrops ?? "no per-source unknown_device series")")

        // Liveness and readiness part ways: the process is fine, crane-02's inputs are not.
        #expect(try healthz(rig.url) == 200)
        let (rcode, rbody) = try httpStatusAndBody(rig.url + "/readyz")
        #expect(rcode == 503)
        #expect(rbody.hasPrefix("not ready: 1 of 2 devices with failing inputs\n"), "\(rbody)")
        #expect(rbody.contains("crane-02: comms: poll failed:"), "\(rbody)")
        #expect(!rbody.contains("crane-01"), "\(rbody)")

        // Values print at their precision in /status (float32 230.1, 73 × 0.1).
        let (_, status) = try httpStatusAndBody(rig.url + "/status")
        #expect(status.contains("\"position_x\":{\"quality\":\"good\",\"tolerance\":0.5,\"twin\":230.1,\"unit\":\"m\",\"value\":230.1}"), "\(status)")
        #expect(status.contains("\"value\":7.3}"), "\(status)")
        #expect(await rig.terminate() == 0)
    }

    @Test func readyzTurnsReadyWhenEveryInputIsGood() async throws {
        let s = try await System.start()
        #expect(await s.coils.becomes(0, true), "\(s.rig.transcript)")
        #expect(await eventually(within: 20) { (try? httpStatusAndBody(s.rig.url + "/readyz"))?.0 == 200 })
        let (_, body) = try httpStatusAndBody(s.rig.url + "/readyz")
        #expect(body == "ready: 1 devices, every input good\n", "\(body)")
        await s.twin.command("silent on")
        #expect(await eventually(within: 20) {
            guard let (code, body) = try? httpStatusAndBody(s.rig.url + "/readyz") else { return false }
            return code == 503 && body.contains("crane-01: twin stale")
        }, "\((try? httpStatusAndBody(s.rig.url + "/readyz"))?.1 ?? "")")
        #expect(try healthz(s.rig.url) == 200, "liveness does not depend on the inputs")
        try await s.stopAndVerify()
    }

    /// One device: in sync (green), then its PLC stops (red header, `no data`, FAULT), each
    /// rendered by Chromium; the screenshots are left for a person to look at.
    @Test func statusPageWithOneDeviceInChromium() async throws {
        let s = try await System.start()
        #expect(await s.coils.becomes(0, true), "\(s.rig.transcript)")
        _ = s.sim.command("set position_x 230.1")
        await s.twin.command("set position_x 230.1")
        #expect(await eventually(within: 20) {
            (try? statusJSON(s.rig.url))?["devices"]?["crane-01"]?["values"]?["position_x"]?["value"] == .double(230.1)
        })
        let okShot = try artifactPath("status-1.png")
        let okDOM = try renderInChromium(s.rig.url + "/", screenshot: okShot, height: 700)
        print("status page, 1 device in sync: \(okShot)")
        let row = domRow(okDOM, device: "crane-01") ?? ""
        #expect(row.contains("data-state=\"ok\""), "\(row)")
        #expect(row.contains("position_x: 230.1 m"), "\(row)")
        #expect(okDOM.contains("<header class=\"allgood\""))
        #expect(okDOM.contains("1 of 1 shown"), "the filter script ran")

        _ = s.sim.quit()
        #expect(await eventually(within: 20) {
            (try? statusJSON(s.rig.url))?["devices"]?["crane-01"]?["poll_error"]?.stringValue != nil
        })
        let downShot = try artifactPath("status-1-plc-down.png")
        let downDOM = try renderInChromium(s.rig.url + "/", screenshot: downShot, height: 700)
        print("status page, 1 device, PLC down: \(downShot)")
        let down = domRow(downDOM, device: "crane-01") ?? ""
        #expect(down.contains("data-state=\"fault\""), "\(down)")
        #expect(down.contains("no data"), "\(down)")
        #expect(!down.contains("physical age"), "\(down)")
        #expect(downDOM.contains("<header class=\"fault\""), "a device in fault turns the header red")
        #expect(downDOM.contains("1 of 1 devices in FAULT"))
        // The reason once for the device (as text; its title repeats it for the tooltip), not once per intent.
        let reasonCount = down.components(separatedBy: ">comms: poll failed").count - 1
        #expect(reasonCount == 1, "\(down)")
        #expect(await s.rig.terminate() == 0)
    }

    /// 200 devices on one simulator: most in sync, some blocked by a status mismatch, some with
    /// their PLC down or no twin. The page stays one compact row per device, each with its state.
    @Test func statusPageWithTwoHundredDevicesInChromium() async throws {
        let n = 200
        let scratch = try TempDir("tibet-ops200")
        defer { scratch.cleanup() }
        try scratch.write("plc.yaml", operatorMapYAML(device: "dev-sim", port: 1502, coil: 0))
        let sim = try SimulatorChild(["--map", scratch.file("plc.yaml"), "--listen", "127.0.0.1:0", "--replicas", String(n),
                                      "--set", "position_x=230.1", "--set", "load_kg=2500", "--set", "temp_c=7.3"], expect: n)
        defer { _ = sim.quit() }
        func name(_ i: Int) -> String { "dev-" + String(1000 + i).dropFirst() }
        // 1…170 in sync, 171…180 twin says maintenance, 181…190 PLC down, 191…200 no twin.
        var maps: [String: String] = [:]
        var twinDevices: [String: String] = [:]
        var expected: [String: String] = [:]
        for i in 1...n {
            let port = (181...190).contains(i) ? closedPort() : sim.endpoints[i - 1].port
            maps[name(i)] = operatorMapYAML(device: name(i), port: port, coil: 2 * (i - 1), pollMs: 250, maxAgeMs: 2000)
            if i <= 190 { twinDevices[name(i)] = (171...180).contains(i) ? "maintenance" : "operational" }
            expected[name(i)] = i <= 170 ? "ok" : i <= 180 ? "blocked" : "fault"
        }
        let rig = try ApplianceRig(maps: maps)
        try await rig.start()
        let twin = try ManyDeviceTwin(port: rig.twinPort, devices: twinDevices,
                                      values: ["position_x": 230.1, "load_kg": 2500, "temp_c": 7.3], dir: scratch)
        _ = twin
        var states: [String: String] = [:]
        let settled = await eventually(within: 90) {
            guard let s = try? statusJSON(rig.url), let devs = s["devices"]?.objectValue else { return false }
            for (d, v) in devs {
                let permits = (v["intents"]?.objectValue ?? [:]).values.map { $0["permit"] == .bool(true) }
                let faulty = !(v["input_problems"]?.arrayValue ?? []).isEmpty
                states[d] = faulty ? "fault" : permits.allSatisfy { $0 } ? "ok" : "blocked"
            }
            return states == expected
        }
        #expect(settled, "states: \(expected.filter { states[$0.key] != $0.value }.prefix(5))\n\(rig.transcript.suffix(2000))")

        let shot = try artifactPath("status-200.png")
        let dom = try renderInChromium(rig.url + "/", screenshot: shot, height: 2000)
        print("status page, 200 devices: \(shot)")
        var wrong: [String] = []
        for (device, state) in expected.sorted(by: { $0.key < $1.key }) {
            guard let row = domRow(dom, device: device), row.contains("data-state=\"\(state)\"") else { wrong.append(device); continue }
            if state == "fault", (181...190).map(name).contains(device), !row.contains("no data") { wrong.append(device) }
        }
        #expect(wrong.isEmpty, "rows without their state: \(wrong.prefix(10))")
        #expect(dom.components(separatedBy: "<tr class=\"row ").count - 1 == n)
        #expect(dom.contains("<header class=\"fault\""))
        #expect(dom.contains("20 of 200 devices in FAULT"), "the header counts the faults")
        #expect(dom.contains("170 ok, 10 blocked, 20 fault"))
        #expect(dom.contains("200 of 200 shown"), "the filter script ran")
        #expect(dom.contains("status mismatch: physical=operational, twin=maintenance"))

        // /readyz names the 20 devices whose inputs fail, one line each.
        let (rcode, rbody) = try httpStatusAndBody(rig.url + "/readyz")
        #expect(rcode == 503)
        #expect(rbody.split(separator: "\n").count == 21, "\(rbody)")
        #expect(rbody.hasPrefix("not ready: 20 of 200 devices with failing inputs\n"))
        // The scrape at 200 devices: valid, and its series bounded by the maps.
        let file = scratch.file("scrape.txt")
        let (ccode, timing) = try runTool("/usr/bin/curl", ["-sS", "-o", file, "-w", "%{size_download} bytes in %{time_total} s", rig.url + "/metrics"])
        #expect(ccode == 0)
        let scrape = try String(contentsOfFile: file, encoding: .utf8)
        let (pcode, pout) = try runTool("/bin/sh", ["-c", "\(promtool) check metrics < '\(file)'"])
        #expect(pcode == 0, "\(pout)")
        let perDevice = scrape.split(separator: "\n").filter { $0.hasPrefix("tibet_twin_device_") || $0.hasPrefix("tibet_twin_intent_") }
        let labelled = Set(perDevice.compactMap { line -> String? in
            guard let r = line.range(of: "device=\"") else { return nil }
            return String(line[r.upperBound...].prefix { $0 != "\"" })
        })
        #expect(labelled == Set(expected.keys), "device label values are exactly the maps' devices")
        print("metrics at 200 devices: \(perDevice.count) per-device series of \(scrape.split(separator: "\n").count) lines, \(timing)")

        // The filter (kept in the URL) narrows the table to what it matches.
        let filteredShot = try artifactPath("status-200-filtered.png")
        let filtered = try renderInChromium(rig.url + "/#!", screenshot: filteredShot, height: 900)
        print("status page, 200 devices, only blocked and fault: \(filteredShot)")
        #expect(filtered.contains("30 of 200 shown"), "only blocked and fault rows")
        #expect(await rig.terminate() == 0)
    }
}
