import Foundation
import Testing
import TibetTwin

#if canImport(Glibc)
import Glibc
import TestSupport
#endif

/// `tibet-twin simulate` as a child; stopped with `quit` (SIGKILL if that fails, and by `Child`'s deinit).
final class SimulatorChild {
    let child: Child
    /// (host:port, device) per `listening` line.
    private(set) var endpoints: [(port: Int, device: String)] = []

    init(_ args: [String], expect devices: Int = 1) throws {
        // Writing to a child that already exited must fail, not kill the test runner.
        signal(SIGPIPE, SIG_IGN)
        child = try Child(binaryURL().path, ["simulate"] + args, name: "simulate")
        for _ in 0..<devices {
            let seen = endpoints.count
            guard let line = child.waitForLine(timeout: 20, { l in
                l.hasPrefix("listening ") && child.stdoutLines.filter { $0.hasPrefix("listening ") }.count > seen
            }) else { throw HarnessError("simulate did not start:\n\(child.transcript)") }
            _ = line
            let all = child.stdoutLines.filter { $0.hasPrefix("listening ") }
            let words = all[seen].split(separator: " ")
            guard words.count == 3, let port = words[1].split(separator: ":").last.flatMap({ Int($0) }) else {
                throw HarnessError("bad listening line: \(all[seen])")
            }
            endpoints.append((port, String(words[2])))
        }
    }

    var port: Int { endpoints[0].port }

    /// Sends a command and waits for its `ok` line (nil if none came).
    @discardableResult
    func command(_ line: String) -> String? {
        let before = child.stdoutLines.count
        child.send(line)
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            let lines = child.stdoutLines
            if lines.count > before, let ok = lines[before...].first(where: { $0.hasPrefix("ok ") || !$0.hasPrefix("listening") }) {
                return ok
            }
            if !child.isRunning { return nil }
            usleep(5_000)
        }
        return nil
    }

    func quit() -> Int32? {
        if !child.isRunning { return child.waitForExit(timeout: 1) }
        child.send("quit")
        if let code = child.waitForExit(timeout: 10) { return code }
        child.signal(SIGKILL)
        return child.waitForExit(timeout: 5)
    }
}

let craneMapPath = packageRoot.appendingPathComponent("maps/crane-01.yaml").path

/// Parses `read --json` output (one object per line).
func readJSON(_ out: String) throws -> [JSONValue] {
    try out.split(separator: "\n").map { try JSONParser.parse(String($0)) }
}

@Suite("simulate and read, end to end")
struct PhysicalCLITests {
    @Test func readJSONAgainstTheSimulatorPrintsWhatTheMapPromises() throws {
        let sim = try SimulatorChild(["--map", craneMapPath, "--listen", "127.0.0.1:0",
                                      "--set", "position_x=12.5", "--set", "load_kg=2500", "--set", "hoist_locked=1",
                                      "--set", "wind_speed=7.3"])
        defer { _ = sim.quit() }
        #expect(sim.endpoints[0].device == "crane-01")
        let (code, out, err) = try runTibetTwin(["read", "--map", craneMapPath, "--plc", "127.0.0.1:\(sim.port)", "--timeout-ms", "5000", "--json"])
        #expect(code == 0, "\(err)")
        let j = try #require(try readJSON(out).first)
        #expect(j["device"] == "crane-01")
        #expect(j["status"] == "operational")
        #expect(j["identity"] == "ok")
        #expect(j["time"]?.stringValue.flatMap { RFC3339.parse($0) } != nil)
        #expect(j["values"]?["position_x"] == ["value": 12.5, "unit": "m", "quality": "good"])
        #expect(j["values"]?["load_kg"] == ["value": 2500, "unit": "kg", "quality": "good"])
        #expect(j["values"]?["hoist_locked"]?["value"] == .bool(true))
        #expect(j["values"]?["hoist_locked"]?["quality"] == "good")
        #expect(j["values"]?["wind_speed"]?["unit"] == "m/s")
        #expect(abs((j["values"]?["wind_speed"]?["value"]?.doubleValue ?? 0) - 7.3) < 1e-9)

        #expect(sim.command("status fault") == "ok status fault")
        #expect(sim.command("set load_kg 3200") == "ok set load_kg 3200")
        let (code2, out2, _) = try runTibetTwin(["read", "--map", craneMapPath, "--plc", "127.0.0.1:\(sim.port)", "--timeout-ms", "5000", "--json"])
        #expect(code2 == 0)
        let j2 = try #require(try readJSON(out2).first)
        #expect(j2["status"] == "fault")
        #expect(j2["values"]?["load_kg"]?["value"] == .int(3200))

        // The table for people names every value, its register and quality.
        let (code3, text, _) = try runTibetTwin(["read", "--map", craneMapPath, "--plc", "127.0.0.1:\(sim.port)", "--timeout-ms", "5000"])
        #expect(code3 == 0)
        #expect(text.contains("load_kg") && text.contains("3200") && text.contains("holding 102+2 uint32 CDAB"))
        #expect(text.contains("status: fault (1)") && text.contains("identity: ok"))
        #expect(sim.quit() == 0)
    }

    /// Every example map, served by one `simulate` process (a port per device) and read back
    /// by `read --json`: status, identity and every value good, and a value set through the
    /// simulator's stdin arrives decoded (scale, order and table of that map).
    @Test func everyExampleMapIsServedAndReadBackGood() throws {
        let dir = packageRoot.appendingPathComponent("maps")
        let files = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasSuffix(".yaml") }.sorted()
        #expect(files.count >= 6)
        var maps: [String: (path: String, map: DeviceMap)] = [:]
        for f in files {
            let path = dir.appendingPathComponent(f).path
            let m = try MapLoader.parse(yaml: String(contentsOfFile: path, encoding: .utf8), file: path)
            maps[m.device] = (path, m)
        }
        let sim = try SimulatorChild(["--map", dir.path, "--listen", "127.0.0.1:0"], expect: files.count)
        defer { _ = sim.quit() }
        #expect(Set(sim.endpoints.map(\.device)) == Set(maps.keys))
        for (port, device) in sim.endpoints {
            let (path, map) = try #require(maps[device])
            // A numeric value of this map, set to 42 in engineering units.
            let target = map.registers.first { $0.type != .string && $0.type != .bool && $0.bit == nil && !$0.table.isBitTable }
            if let target {
                #expect(sim.command("@\(device) set \(target.name) 42") == "ok set \(target.name) 42", "\(device)")
            }
            // Some maps allow 20 ms; a loaded test machine is not that PLC.
            let (code, out, err) = try runTibetTwin(["read", "--map", path, "--plc", "127.0.0.1:\(port)", "--timeout-ms", "5000", "--json"])
            #expect(code == 0, "\(device): \(err)")
            let j = try #require(try readJSON(out).first, "\(device)")
            #expect(j["device"]?.stringValue == device)
            #expect(j["status"]?.stringValue == "operational", "\(device)")
            #expect(j["identity"]?.stringValue == (map.identity.isEmpty ? "not_configured" : "ok"), "\(device)")
            let values = try #require(j["values"]?.objectValue, "\(device)")
            #expect(values.count == map.registers.count, "\(device)")
            for r in map.registers {
                #expect(values[r.name]?["quality"]?.stringValue == "good", "\(device).\(r.name): \(String(describing: values[r.name]))")
            }
            if let target {
                let got = values[target.name]?["value"]?.doubleValue
                #expect(got.map { abs($0 - 42) < 1e-6 } == true, "\(device).\(target.name) = \(String(describing: got))")
            }
        }
        #expect(sim.quit() == 0)
    }

    @Test func unitsPerPortServesDevicesBehindGatewayPorts() throws {
        let child = try Child(binaryURL().path, ["simulate", "--map", craneMapPath, "--replicas", "4",
                                                 "--listen", "127.0.0.1:0", "--units-per-port", "2"], name: "simulate")
        defer { child.signal(SIGKILL); _ = child.waitForExit(timeout: 5) }
        #expect(child.waitForLine(timeout: 20) { _ in child.stdoutLines.filter { $0.hasPrefix("listening ") }.count == 4 } != nil,
                "\(child.transcript)")
        let lines = child.stdoutLines.filter { $0.hasPrefix("listening ") }.map { $0.split(separator: " ") }
        #expect(lines.map { $0.count } == [5, 5, 5, 5], "listening HOST:PORT unit N DEVICE: \(lines)")
        #expect(lines.map { $0[3] } == ["1", "2", "1", "2"])
        let ports = lines.compactMap { $0[1].split(separator: ":").last.flatMap { Int($0) } }
        #expect(ports.count == 4 && ports[0] == ports[1] && ports[2] == ports[3] && ports[0] != ports[2], "\(ports)")
        // Unit 1 behind the first port answers as the crane map (unit 1) expects.
        let (code, _, err) = try runTibetTwin(["read", "--map", craneMapPath, "--plc", "127.0.0.1:\(ports[0])", "--timeout-ms", "5000"])
        #expect(code == 0, "\(err)")
    }

    @Test func watchPrintsOneLinePerPoll() throws {
        let sim = try SimulatorChild(["--map", craneMapPath, "--listen", "127.0.0.1:0", "--set", "load_kg=42"])
        defer { _ = sim.quit() }
        let (code, out, err) = try runTibetTwin(["read", "--map", craneMapPath, "--plc", "127.0.0.1:\(sim.port)", "--timeout-ms", "5000",
                                                 "--watch", "--count", "3", "--json"])
        #expect(code == 0, "\(err)")
        let lines = try readJSON(out)
        #expect(lines.count >= 3)
        #expect(lines.allSatisfy { $0["values"]?["load_kg"]?["value"] == .int(42) })
    }

    @Test func mbpollReadsTheSimulatorAndAgreesWithTheMap() throws {
        let maps = try MapLoader.parse(yaml: String(contentsOfFile: craneMapPath, encoding: .utf8), file: craneMapPath)
        let sim = try SimulatorChild(["--map", craneMapPath, "--listen", "127.0.0.1:0",
                                      "--set", "position_x=-3.25", "--set", "load_kg=70000", "--set", "hoist_locked=1",
                                      "--set", "wind_speed=-1.5"])
        defer { _ = sim.quit() }
        // mbpoll -0: 0-based addresses; -t 4 holding, -t 3 input.
        func mbpoll(_ table: String, _ address: Int, _ count: Int) throws -> [UInt16] {
            let (code, out) = try runTool("/usr/bin/mbpoll", ["-m", "tcp", "-p", String(sim.port), "-a", "1", "-t", table,
                                                              "-r", String(address), "-c", String(count), "-0", "-1", "127.0.0.1"])
            #expect(code == 0, "\(out)")
            // Lines like "[100]: \t49232 (-16304)": the unsigned value first, then the signed one.
            return out.split(separator: "\n").compactMap { line -> UInt16? in
                guard line.hasPrefix("["), let colon = line.firstIndex(of: ":") else { return nil }
                let v = line[line.index(after: colon)...].split(whereSeparator: { $0 == " " || $0 == "\t" }).first
                return v.flatMap { Int($0) }.map { UInt16(truncatingIfNeeded: $0) }
            }
        }
        let spec = { (name: String) in maps.register(named: name)! }
        let pos = try mbpoll("4", 100, 2)
        #expect(pos == RegisterDecoder.encode(.double(-3.25), as: spec("position_x")))
        #expect(try RegisterDecoder.decode(spec("position_x"), words: pos) == .double(-3.25))
        let load = try mbpoll("4", 102, 2)
        #expect(try RegisterDecoder.decode(spec("load_kg"), words: load) == .uint(70000))
        #expect(load == [UInt16(70000 & 0xFFFF), UInt16(70000 >> 16)])  // CDAB: low word first
        let word7 = try mbpoll("4", 7, 1)
        #expect(word7.first.map { $0 & 0b1000 != 0 } == true)
        let wind = try mbpoll("3", 4, 1)
        #expect(wind == [UInt16(bitPattern: -15)])
        let serial = try mbpoll("4", 9000, 2)
        #expect(serial == [0, 4711])
        let status = try mbpoll("4", 0, 1)
        #expect(status == [0])
    }

    @Test func readJSONAgainstPymodbusPrintsWhatTheMapPromises() throws {
        guard let python = pythonWithPymodbus() else { throw HarnessError("pymodbus venv missing: run scripts/setup.sh") }
        // crane-01 as pymodbus holds it: status 2 (maintenance), position 1.5 (0x3FC0 0x0000),
        // load 65537 CDAB (1, 1), hoist word 0, serial 4711, wind_speed input 4 = 120 (12.0 m/s).
        let spec = #"{"unit": 1, "holding": {"0": 2, "100": 16320, "101": 0, "102": 1, "103": 1, "7": 0, "9000": 0, "9001": 4711}, "input": {"4": 120}}"#
        let plc = try Child(python, [packageRoot.appendingPathComponent("scripts/pymodbus_plc.py").path, spec], name: "pymodbus")
        defer { plc.signal(SIGKILL); _ = plc.waitForExit(timeout: 5) }
        let line = try #require(plc.waitForLine(timeout: 20) { $0.hasPrefix("listening ") }, "\(plc.transcript)")
        let port = try #require(line.split(separator: ":").last.flatMap { Int($0) })
        let (code, out, err) = try runTibetTwin(["read", "--map", craneMapPath, "--plc", "127.0.0.1:\(port)", "--timeout-ms", "5000", "--json"])
        #expect(code == 0, "\(err)")
        let j = try #require(try readJSON(out).first)
        #expect(j["status"] == "maintenance")
        #expect(j["identity"] == "ok")
        #expect(j["values"]?["position_x"]?["value"] == .double(1.5))
        #expect(j["values"]?["load_kg"]?["value"] == .int(65537))
        #expect(j["values"]?["hoist_locked"]?["value"] == .bool(false))
        #expect(j["values"]?["wind_speed"]?["value"]?.doubleValue == 12.0)
        #expect(j["poll_error"] == .null)
    }

    @Test func unreachablePLCExitsOneAndSaysWhy() throws {
        // Port 1 on loopback: nothing listens there.
        let (code, out, _) = try runTibetTwin(["read", "--map", craneMapPath, "--plc", "127.0.0.1:1", "--json"])
        #expect(code == 1)
        let j = try #require(try readJSON(out).first)
        #expect(j["status"] == .null)
        #expect(j["identity"] == "unknown")
        #expect(j["values"]?["load_kg"] == ["value": nil, "unit": "kg", "quality": "bad_comm"])
        #expect(j["poll_error"]?.stringValue?.contains("ECONNREFUSED") == true)
    }

    @Test func outOfDescriptorsIsATypedErrorNotACrash() throws {
        // 50 listeners under a limit of 16 descriptors: the simulator runs out, says so in one
        // line and exits 1; it never reaches a descriptor >= 1024 or aborts.
        let bin = binaryURL().path
        let child = try Child("/bin/sh", ["-c", "ulimit -n 16 && exec '\(bin)' simulate --map '\(craneMapPath)' --replicas 50 --listen 127.0.0.1:0"],
                              name: "simulate")
        let code = child.waitForExit(timeout: 20)
        if code == nil { child.signal(SIGKILL) }
        #expect(code == 1, "\(child.transcript)")
        #expect(child.stderrLines.contains { $0.hasPrefix("error: cannot listen") && $0.hasSuffix("EMFILE (too many open files)") }, "\(child.transcript)")
    }

    @Test func simulateRejectsBadInputWithExitTwo() throws {
        let (c1, _, e1) = try runTibetTwin(["simulate", "--map", craneMapPath, "--listen", "127.0.0.1:0", "--set", "nope=1"])
        #expect(c1 == 2)
        #expect(e1.contains("nope"))
        let (c2, _, e2) = try runTibetTwin(["simulate", "--map", "/nonexistent.yaml", "--listen", "127.0.0.1:0"])
        #expect(c2 == 2)
        #expect(e2.contains("/nonexistent.yaml"))
        let (c3, _, _) = try runTibetTwin(["simulate", "--map", craneMapPath, "--listen", "nowhere"])
        #expect(c3 == 2)
    }

    @Test func simulateAnswersCommandsAndServesReplicas() throws {
        let sim = try SimulatorChild(["--map", craneMapPath, "--listen", "127.0.0.1:0", "--replicas", "3"], expect: 3)
        defer { _ = sim.quit() }
        #expect(Set(sim.endpoints.map(\.port)).count == 3)
        #expect(sim.command("@2 set load_kg 9") == "ok set load_kg 9")
        #expect(sim.command("@2 get load_kg") == "load_kg 9")
        #expect(sim.command("@1 get load_kg") == "load_kg 0")
        let (code, out, _) = try runTibetTwin(["read", "--map", craneMapPath, "--plc", "127.0.0.1:\(sim.endpoints[1].port)", "--timeout-ms", "5000", "--json"])
        #expect(code == 0)
        #expect(try readJSON(out).first?["values"]?["load_kg"]?["value"] == .int(9))
        sim.child.send("bogus")
        #expect(sim.child.waitForLine(timeout: 10, stderr: true) { $0.contains("unknown command") } != nil)
        #expect(sim.quit() == 0)
    }

    @Test func simulateStopsOnSIGTERMEvenIfTheParentBlockedIt() throws {
        let sim = try SimulatorChild(["--map", craneMapPath, "--listen", "127.0.0.1:0"])
        sim.child.signal(SIGTERM)
        let code = sim.child.waitForExit(timeout: 10)
        #expect(code != nil)
        if code == nil { sim.child.signal(SIGKILL) }
    }

}
