import Foundation
import Testing
import TibetTwin
#if canImport(Glibc)
import Glibc
import TestSupport
#endif

/// A PLC (`tibet-twin simulate`) serving `yaml` (written into `dir`) on a free port, or on
/// `port` when restarting one.
func startPLC(_ yaml: (Int) -> String, dir: TempDir, name: String = "plc", port: Int = 0) throws -> SimulatorChild {
    try dir.write("\(name).yaml", yaml(1502))
    return try SimulatorChild(["--map", dir.file("\(name).yaml"), "--listen", "127.0.0.1:\(port)"])
}

/// One running system: PLC, appliance, twin and an outside interlock client, in sync.
struct System {
    let sim: SimulatorChild
    let rig: ApplianceRig
    let twin: PythonTwin
    let coils: CoilWatcher

    static func start(rearmMs: Int = 100, fixedPorts: Bool = false) async throws -> System {
        let scratch = try TempDir("tibet-plc")
        let sim = try startPLC({ rigMapYAML(port: $0) }, dir: scratch)
        _ = sim.command("set position_x 12.5")
        _ = sim.command("set load_kg 2500")
        let rig = try ApplianceRig(maps: ["crane-01": rigMapYAML(port: sim.port, rearmMs: rearmMs)], fixedPorts: fixedPorts)
        try await rig.start()
        let twin = try PythonTwin(port: rig.twinPort, dir: rig.dir)
        let coils = try CoilWatcher(port: rig.interlockPort, count: 2, dir: rig.dir)
        return System(sim: sim, rig: rig, twin: twin, coils: coils)
    }

    /// SIGTERM: exit 0, then the chain verifies.
    func stopAndVerify(sourceLocation: Testing.SourceLocation = #_sourceLocation) async throws {
        let code = await rig.terminate()
        #expect(code == 0, "exit after SIGTERM\n\(rig.transcript)", sourceLocation: sourceLocation)
        let (vcode, vout) = try rig.verifyAudit()
        #expect(vcode == 0, "audit verify: \(vout)", sourceLocation: sourceLocation)
        _ = sim.quit()
    }
}

@Suite("Appliance, end to end", .serialized)
struct ApplianceEndToEndTests {
    @Test func demoComesOutAsItMust() async throws {
        let dir = try TempDir("tibet-demo")
        defer { dir.cleanup() }
        let child = try Child(binaryURL().path, ["demo", "--audit", dir.file("audit")], name: "demo")
        #expect(await eventually(within: 120) { !child.isRunning })
        let code = child.waitForExit(timeout: 5)
        #expect(code == 0, "\(child.transcript)")
        let out = child.stdoutLines.joined(separator: "\n")
        for marker in ["1. In sync → permit", "2. The PLC goes FAULT", "3. The load changes beyond tolerance",
                       "4. The twin goes silent", "5. The twin comes back", "6. Someone tries to write",
                       "Every scenario came out as it must."] {
            #expect(out.contains(marker), "missing \(marker)")
        }
        #expect(!out.contains("✘"))
        #expect(out.contains("Next: keep the chain with `tibet-twin demo --audit DIR`"), "the demo says where to look next")
        #expect(!out.contains("\u{1B}["), "plain text when stdout is not a terminal")
        #expect(out.contains("BLOCKED: status mismatch: physical=fault, twin=operational"))
        let (vcode, vout, verr) = try runTibetTwin(["audit", "verify", dir.file("audit")])
        #expect(vcode == 0, "\(vout)\(verr)")
        let show = try runTibetTwin(["audit", "show", dir.file("audit")]).1
        #expect(show.contains("write_rejected"))
        #expect(show.contains("stopped"))
    }

    /// The demo's story, with the coil read by pymodbus and the PLC a separate `simulate`.
    @Test func craneStorySeenByAnOutsideClient() async throws {
        let s = try await System.start()
        let c = s.coils
        #expect(await c.becomes(0, true), "in sync → permit\n\(s.rig.transcript)")
        #expect(await c.becomes(1, true))

        // The operator's view while permitted.
        let (scode, sout, _) = try runTibetTwin(["status", "--url", s.rig.url])
        #expect(scode == 0)
        #expect(sout.contains("PERMIT  move_left (coil 0)"))
        let json = try JSONParser.parse(try runTibetTwin(["status", "--url", s.rig.url, "--json"]).1)
        #expect(json["devices"]?["crane-01"]?["intents"]?["move_left"]?["permit"]?.boolValue == true)
        #expect(json["node"]?.stringValue == "e2e-guard")

        _ = s.sim.command("status fault")
        #expect(await c.becomes(0, false), "PLC FAULT while the twin says operational → blocked")
        let blocked = try JSONParser.parse(try runTibetTwin(["status", "--url", s.rig.url, "--json"]).1)
        #expect(blocked["devices"]?["crane-01"]?["intents"]?["move_left"]?["reason_code"]?.intValue == 6)
        _ = s.sim.command("status operational")
        #expect(await c.becomes(0, true))

        _ = s.sim.command("set load_kg 3200")
        #expect(await c.becomes(0, false), "load beyond tolerance → blocked")
        await s.twin.command("set load_kg 3200")
        #expect(await c.becomes(0, true), "the twin agrees again → re-armed")

        await s.twin.command("silent on")
        #expect(await c.becomes(0, false), "a silent twin blocks after max_age_ms although the values match")
        await s.twin.command("silent off")
        #expect(await c.becomes(0, true), "twin back → re-armed")

        // A write from mbpoll (another Modbus stack): exception, and the coil does not move.
        let (wcode, wout) = try runTool("/usr/bin/mbpoll", ["-m", "tcp", "-p", String(s.rig.interlockPort), "-a", "1", "-t", "0",
                                                           "-r", "0", "-0", "-1", "127.0.0.1", "0"])
        #expect(wcode != 0, "the write must be refused: \(wout)")
        #expect(wout.lowercased().contains("illegal function"), "\(wout)")
        try await Task.sleep(for: .milliseconds(200))
        #expect(c.history.last?.first == "1", "the coil did not move")

        let metrics = String(decoding: try await httpGet(s.rig.url + "/metrics"), as: UTF8.self)
        #expect(metrics.contains("tibet_twin_interlock_writes_rejected_total 1"))
        #expect(metrics.contains("tibet_twin_blocks_total{reason=\"STATUS_MISMATCH\"}"))
        #expect(metrics.contains("tibet_twin_poll_latency_seconds_bucket"))
        #expect(metrics.contains("tibet_twin_twin_lines_accepted_total"))
        #expect(metrics.contains("tibet_twin_audit_tokens_total"))

        // SIGTERM: the permits drop to 0 and are served as 0 before the listener closes.
        try await s.stopAndVerify()
        let h = c.history
        #expect(h.last == "00", "served as 0 during the grace period: \(h.suffix(4))")
        let show = try s.rig.auditShow()
        #expect(show.contains("write_rejected"))
        #expect(show.contains("status mismatch: physical=fault, twin=operational"))
        #expect(show.contains("stopped"))
    }

    // MARK: The fault matrix

    @Test func plcKilledAndRestarted() async throws {
        let s = try await System.start()
        #expect(await s.coils.becomes(0, true))
        let port = s.sim.port
        s.sim.child.signal(SIGKILL)
        _ = s.sim.child.waitForExit(timeout: 5)
        #expect(await s.coils.becomes(0, false), "a dead PLC blocks (COMMS)")
        let json = try JSONParser.parse(try runTibetTwin(["status", "--url", s.rig.url, "--json"]).1)
        let code = json["devices"]?["crane-01"]?["intents"]?["move_left"]?["reason_code"]?.intValue
        #expect(code == Int64(ReasonCode.comms.rawValue) || code == Int64(ReasonCode.physicalStale.rawValue), "\(json)")
        // Back on the same port: the poller reconnects (capped backoff) and the permit re-arms.
        let scratch = try TempDir("tibet-plc")
        defer { scratch.cleanup() }
        let again = try startPLC({ _ in rigMapYAML(port: port) }, dir: scratch, port: port)
        _ = again.command("set position_x 12.5")
        _ = again.command("set load_kg 2500")
        #expect(await s.coils.becomes(0, true, within: 20), "re-armed after the PLC came back\n\(s.rig.transcript)")
        try await s.stopAndVerify()
        _ = again.quit()
    }

    @Test func plcTooSlow() async throws {
        let s = try await System.start()
        #expect(await s.coils.becomes(0, true))
        _ = s.sim.command("stall 1500")  // answers come late: beyond timeout_ms 100
        #expect(await s.coils.becomes(0, false), "a PLC slower than its timeout blocks")
        #expect(await s.coils.becomes(0, true, within: 20), "re-armed when it answers on time again")
        try await s.stopAndVerify()
    }

    @Test func plcAnsweringExceptions() async throws {
        let s = try await System.start()
        #expect(await s.coils.becomes(0, true))
        _ = s.sim.command("exception 4")
        #expect(await s.coils.becomes(0, false), "exception answers block")
        _ = s.sim.command("exception off")
        #expect(await s.coils.becomes(0, true, within: 20))
        try await s.stopAndVerify()
    }

    @Test func twinClientCutAndBack() async throws {
        let s = try await System.start()
        #expect(await s.coils.becomes(0, true))
        await s.twin.command("silent on")
        await s.twin.command("cut")
        #expect(await s.coils.becomes(0, false), "the twin's connection is gone: stale")
        await s.twin.command("silent off")
        #expect(await eventually(within: 10) { s.twin.child.stdoutLines.filter { $0 == "connected" }.count >= 2 }, "reconnected")
        #expect(await s.coils.becomes(0, true), "a new connection re-arms")
        try await s.stopAndVerify()
    }

    /// Disk full, for real: the appliance's RLIMIT_FSIZE is lowered below its segment's size
    /// (prlimit on the running process), so the next audit write fails with EFBIG.
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/prlimit")))
    func auditDiskFull() async throws {
        let s = try await System.start()
        #expect(await s.coils.becomes(0, true))
        let pid = try #require(s.rig.child?.pid)
        let (lcode, lout) = try runTool("/usr/bin/prlimit", ["--pid", String(pid), "--fsize=1024:unlimited"])
        #expect(lcode == 0, "\(lout)")
        _ = s.sim.command("status fault")  // a drop: its token cannot be written
        #expect(await s.coils.becomes(0, false))
        _ = s.sim.command("status operational")
        #expect(await eventually(within: 15) {
            (try? healthz(s.rig.url)) == 503
        }, "healthz says the audit chain is not writable")
        // While the chain cannot be written nothing may rise (AUDIT).
        try await Task.sleep(for: .milliseconds(600))
        #expect(s.coils.history.last?.first == "0", "no rise without a durable token")
        let json = try JSONParser.parse(try runTibetTwin(["status", "--url", s.rig.url, "--json"]).1)
        #expect(json["audit_healthy"]?.boolValue == false)
        #expect(json["devices"]?["crane-01"]?["intents"]?["move_left"]?["reason_code"]?.intValue == Int64(ReasonCode.audit.rawValue))
        // Space returns: the store recovers by itself and the permit re-arms.
        _ = try runTool("/usr/bin/prlimit", ["--pid", String(pid), "--fsize=unlimited:unlimited"])
        #expect(await s.coils.becomes(0, true, within: 20), "re-armed after the audit chain recovered\n\(s.rig.transcript)")
        try await s.stopAndVerify()
        let show = try s.rig.auditShow()
        #expect(show.contains("audit_recovered"), "the recovery is on the record")
    }

    @Test func sighupWithABrokenMapKeepsTheOldOne() async throws {
        let s = try await System.start()
        #expect(await s.coils.becomes(0, true))
        let seen = s.coils.history.count
        try s.rig.dir.write("maps/crane-01.yaml", rigMapYAML(port: s.sim.port).replacingOccurrences(of: "type: float32", with: "type: flaot32"))
        s.rig.child?.signal(SIGHUP)
        #expect(await eventually(within: 10) { s.rig.child?.stderrLines.contains { $0.contains("reload refused") } ?? false }, "\(s.rig.transcript)")
        let refusal = s.rig.child?.stderrLines.first { $0.contains("reload refused") } ?? ""
        #expect(refusal.contains("crane-01.yaml:"), "names the file and line: \(refusal)")
        #expect(refusal.contains("flaot32"))
        try await Task.sleep(for: .milliseconds(500))
        #expect(s.coils.history.dropFirst(seen - 1).allSatisfy { $0.first == "1" }, "the old map keeps running; the coil never blinked")
        try await s.stopAndVerify()
        let show = try s.rig.auditShow(json: true)
        #expect(show.contains("config_loaded"))
        #expect(show.contains("flaot32"), "the refusal is audited with its reason")
    }

    @Test func sighupWithGoodMapsKeepsUnchangedDevicesAndReArmsChanged() async throws {
        // Two devices, one PLC each; the robot's map changes, the crane's does not.
        let scratch = try TempDir("tibet-plc")
        defer { scratch.cleanup() }
        let crane = try startPLC({ rigMapYAML(port: $0) }, dir: scratch, name: "crane")
        let robot = try startPLC({ rigMapYAML(device: "robot-07", port: $0, coil: 4) }, dir: scratch, name: "robot")
        for p in [crane, robot] {
            _ = p.command("set position_x 12.5")
            _ = p.command("set load_kg 2500")
        }
        let rig = try ApplianceRig(maps: ["crane-01": rigMapYAML(port: crane.port),
                                          "robot-07": rigMapYAML(device: "robot-07", port: robot.port, coil: 4)])
        try await rig.start()
        let twinA = try PythonTwin(port: rig.twinPort, device: "crane-01", dir: rig.dir)
        let twinDir = try TempDir("tibet-twin2")
        defer { twinDir.cleanup() }
        let twinB = try PythonTwin(port: rig.twinPort, device: "robot-07", dir: twinDir)
        let coils = try CoilWatcher(port: rig.interlockPort, count: 6, dir: rig.dir)
        #expect(await coils.becomes(0, true))
        #expect(await coils.becomes(4, true))
        let seen = coils.history.count
        // The robot's rearm_ms changes (its map is replaced); a tolerance typo would be refused.
        try rig.dir.write("maps/robot-07.yaml", rigMapYAML(device: "robot-07", port: robot.port, coil: 4, rearmMs: 400))
        rig.child?.signal(SIGHUP)
        #expect(await eventually(within: 10) { rig.child?.stderrLines.contains { $0.contains("reload applied") } ?? false }, "\(rig.transcript)")
        #expect(await coils.becomes(4, false), "the replaced robot starts blocked")
        #expect(await coils.becomes(4, true, within: 20), "and re-arms")
        let after = coils.history.dropFirst(seen - 1)
        #expect(after.allSatisfy { $0.first == "1" }, "the unchanged crane never blinked: \(Array(after))")
        #expect(after.contains { $0.dropFirst(4).first == "0" }, "the replaced robot started blocked: \(Array(after))")
        let code = await rig.terminate()
        #expect(code == 0)
        let (vcode, vout) = try rig.verifyAudit()
        #expect(vcode == 0, "\(vout)")
        let show = try rig.auditShow(json: true)
        #expect(show.contains("map replaced"))
        _ = (twinA, twinB)
        _ = crane.quit()
        _ = robot.quit()
    }

    /// SIGKILL: no `stopped` token, maybe a torn line. The restart repairs the chain, and the
    /// permits start at 0 (served before the first evaluation) and re-arm.
    @Test func sigkillAndRestart() async throws {
        let s = try await System.start(rearmMs: 600, fixedPorts: true)
        #expect(await s.coils.becomes(0, true))
        s.rig.child?.signal(SIGKILL)
        _ = s.rig.child?.waitForExit(timeout: 5)
        #expect(await eventually(within: 10) { s.coils.child.stdoutLines.last?.hasPrefix("error") ?? false }, "the interlock is gone")
        let seen = s.coils.history.count
        try await s.rig.start()
        #expect(await eventually(within: 15) { s.coils.history.count > seen }, "the watcher reads the restarted appliance")
        let firstAfter = s.coils.history[seen]
        #expect(firstAfter == "00", "permits start at 0 after a restart, got \(firstAfter)")
        #expect(await s.coils.becomes(0, true, within: 20), "and re-arm\n\(s.rig.transcript)")
        try await s.stopAndVerify()
        let show = try s.rig.auditShow()
        #expect(show.components(separatedBy: " started ").count - 1 >= 2, "both starts are on the record")
    }

    @Test func startErrorsAreOneLineEachAndExit2() async throws {
        let rig = try ApplianceRig(maps: ["crane-01": rigMapYAML(port: 1502).replacingOccurrences(of: "type: float32", with: "type: flaot32")])
        let (code, out, err) = try runTibetTwin(["run", "--config", rig.dir.file("tibet-twin.yaml")])
        #expect(code == 2)
        #expect(out.isEmpty, "nothing served, nothing printed on stdout")
        let lines = err.split(separator: "\n")
        #expect(lines.count == 1, "\(err)")
        #expect(err.contains("crane-01.yaml:10:"), "file:line:col of the problem: \(err)")
        #expect(err.contains("flaot32"), "\(err)")
        #expect(!FileManager.default.fileExists(atPath: rig.dir.file("audit")), "the audit chain was not even opened")

        // A taken port: the interlock cannot listen.
        let taken = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(taken) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(taken, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        listen(taken, 1)
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(taken, $0, &len) } }
        let port = Int(UInt16(bigEndian: addr.sin_port))
        try rig.dir.write("maps/crane-01.yaml", rigMapYAML(port: 1502))
        let config = try String(contentsOfFile: rig.dir.file("tibet-twin.yaml"), encoding: .utf8)
            .replacingOccurrences(of: "listen: 127.0.0.1:0, unit", with: "listen: 127.0.0.1:\(port), unit")
        try rig.dir.write("tibet-twin.yaml", config)
        let (pcode, pout, perr) = try runTibetTwin(["run", "--config", rig.dir.file("tibet-twin.yaml")])
        #expect(pcode == 2)
        #expect(pout.isEmpty)
        #expect(perr.hasPrefix("tibet-twin run: \(rig.dir.file("tibet-twin.yaml")):3:21: interlock.listen: ")
                && perr.contains("127.0.0.1:\(port)") && perr.contains("EADDRINUSE"), "file:line:col of the key: \(perr)")
        #expect(perr.split(separator: "\n").count == 1, "\(perr)")
    }

    @Test func aThousandPLCsOnLinksOfTheirOwnAreRefusedAtStartWithTheNumbers() async throws {
        var maps: [String: String] = [:]
        for i in 0..<1000 {
            let name = String(format: "dev-%04d", i)
            maps[name] = rigMapYAML(device: name, port: 20000 + i, coil: 2 * i)
        }
        let rig = try ApplianceRig(maps: maps)
        let (code, out, err) = try runTibetTwin(["run", "--config", rig.dir.file("tibet-twin.yaml")])
        #expect(code == 2, "\(err)")
        #expect(out.isEmpty)
        #expect(err.contains("more than the 1024 libmodbus's select() allows") && err.contains("PLC links 1000 (1000 devices on 1000 links"), "\(err)")
        #expect(!FileManager.default.fileExists(atPath: rig.dir.file("audit")), "refused before the audit chain was opened")
    }
}

/// `GET url` with curl (an outside client); the body.
func httpGet(_ url: String) async throws -> [UInt8] {
    Array(try runTool("/usr/bin/curl", ["-sS", url]).1.utf8)
}

/// The HTTP status of `/healthz`.
func healthz(_ url: String) throws -> Int {
    let (_, out) = try runTool("/usr/bin/curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", url + "/healthz"])
    return Int(out) ?? 0
}

/// systemd's side of `Type=notify`: a unix datagram socket collecting what the service sends.
final class NotifySocket: @unchecked Sendable {
    let path: String
    let fd: Int32
    private let lock = NSLock()
    private var messages: [String] = []
    private var open = true

    init(dir: TempDir) throws {
        path = dir.file("notify.sock")
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in bytes.enumerated() { raw[i] = b } }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + 1))
            }
        }
        guard rc == 0 else { throw HarnessError("bind \(path): errno \(errno)") }
        var tv = timeval(tv_sec: 0, tv_usec: 200_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        Thread { [self] in
            var buf = [UInt8](repeating: 0, count: 4096)
            while lock.withLock({ open }) {
                let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                if n > 0 { lock.withLock { messages.append(String(decoding: buf[0..<n], as: UTF8.self)) } }
            }
        }.start()
    }

    var all: [String] { lock.withLock { messages } }

    deinit {
        lock.withLock { open = false }
        usleep(250_000)
        close(fd)
    }
}

@Suite("Appliance under systemd's notify protocol")
struct ApplianceNotifyTests {
    @Test func readyWatchdogReloadingStopping() async throws {
        let scratch = try TempDir("tibet-plc")
        defer { scratch.cleanup() }
        let sim = try startPLC({ rigMapYAML(port: $0) }, dir: scratch)
        defer { _ = sim.quit() }
        let rig = try ApplianceRig(maps: ["crane-01": rigMapYAML(port: sim.port)])
        // A fixed http.listen, so `status --config` can find the API from the config alone.
        let http = closedPort()
        let config = try String(contentsOfFile: rig.dir.file("tibet-twin.yaml"), encoding: .utf8)
        try rig.dir.write("tibet-twin.yaml", config.replacingOccurrences(of: "http: {listen: 127.0.0.1:0}",
                                                                         with: "http: {listen: 127.0.0.1:\(http)}"))
        let notify = try NotifySocket(dir: rig.dir)
        let c = try Child(binaryURL().path, ["run", "--config", rig.dir.file("tibet-twin.yaml")],
                          environment: ["NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "400000"], name: "run",
                          currentDirectory: rig.dir.path)
        rig.child = c
        #expect(await eventually(within: 20) { notify.all.contains { $0.hasPrefix("READY=1") } }, "\(c.transcript)")
        let ready = notify.all.first { $0.hasPrefix("READY=1") } ?? ""
        #expect(ready.contains("STATUS=1 devices"), "\(ready)")
        // The watchdog is pinged from the evaluation tick, several times per WATCHDOG_USEC.
        #expect(await eventually(within: 10) { notify.all.filter { $0 == "WATCHDOG=1\n" }.count >= 5 })

        let (scode, sout, serr) = try runTibetTwin(["status", "--config", rig.dir.file("tibet-twin.yaml")])
        #expect(scode == 0, "status --config finds the API from http.listen: \(serr)")
        #expect(sout.contains("e2e-guard"))

        c.signal(SIGHUP)
        #expect(await eventually(within: 10) { notify.all.contains("RELOADING=1\n") })
        #expect(await eventually(within: 10) { notify.all.filter { $0.hasPrefix("READY=1") }.count >= 2 }, "READY=1 again after the reload")
        c.signal(SIGTERM)
        #expect(await eventually(within: 15) { !c.isRunning })
        #expect(c.waitForExit(timeout: 1) == 0)
        #expect(notify.all.contains { $0.hasPrefix("STOPPING=1") })
        let order = notify.all.firstIndex { $0.hasPrefix("STOPPING=1") } ?? -1
        #expect(order > (notify.all.firstIndex { $0.hasPrefix("READY=1") } ?? Int.max))
    }
}
