import Foundation
import Appliance
import Logging
import Modbus
import MQTT
import Platform
import TibetTwin

/// `tibet-twin demo`: the seed's crane story, for real, on loopback. A simulated PLC (the
/// project's simulator), a twin that sends feed lines over TCP, the whole appliance (the same
/// `ApplianceRuntime` as `run`), and an interlock PLC stand-in reading the permit coil with
/// libmodbus every 2 ms. Each scenario changes one thing and measures how many ms the coil took
/// to follow; the run ends with `audit verify` of the demo's chain.
package struct CraneDemo: Sendable {
    /// Where the audit chain is kept (a fresh temporary directory when nil).
    package var auditDir: String?
    /// ANSI colours (on a terminal).
    package var color: Bool
    /// Where each output line goes.
    package var output: @Sendable (String) -> Void
    /// The twin publishes its lines to a local mosquitto (started by the demo) that the
    /// appliance subscribes to, instead of writing them to the appliance's TCP feed.
    package var twinOverMQTT: Bool
    /// The twin is the crane model on a local asyncua OPC UA server (started by the demo; the
    /// demo's twin writes its nodes every cycle) whose nodes the map binds (`twin: {opcua: …}`).
    package var twinOverOPCUA: Bool

    package init(auditDir: String? = nil, color: Bool = false, twinOverMQTT: Bool = false, twinOverOPCUA: Bool = false,
                 output: @escaping @Sendable (String) -> Void) {
        self.auditDir = auditDir
        self.color = color
        self.twinOverMQTT = twinOverMQTT
        self.twinOverOPCUA = twinOverOPCUA
        self.output = output
    }

    /// The demo crane: the crane-01 of docs/register-maps.md (port profile: 200 ms drift and age, polled every
    /// 50 ms, re-arm 100 ms), with two intents.
    static let mapYAML = """
        device: crane-01
        profile: port
        plc: {host: 127.0.0.1, port: PORT, unit: 1, poll_ms: 50, timeout_ms: 100}
        limits: {max_drift_ms: 200, max_age_ms: 200, rearm_ms: 100}
        identity:
          - {name: serial, address: 9000, type: uint32, expect: 4711}
        status:
          {address: 0, table: holding, type: uint16,
           values: {0: operational, 1: fault, 2: maintenance, 3: emergency}}
        registers:
          - {name: position_x, address: 100, type: float32, order: ABCD, unit: m, tolerance: 0.5}
          - {name: load_kg, address: 102, type: uint32, order: CDAB, scale: 1, unit: kg, tolerance: 100}
        intents:
          move_left: {coil: 0}
          hoist:     {coil: 1, requires: {load_kg: {max: 40000}}}

        """

    /// With `--twin opcua`: crane-01's twin is the asyncua server's Crane01 (Mode as a code).
    static let opcuaBinding = """
        twin:
          opcua:
            status: {node: "ns=2;s=Crane01.Mode", values: {1: operational, 2: fault, 3: maintenance, 4: emergency}}
            values: {position_x: "ns=2;s=Crane01.PosX", load_kg: "nsu=urn:tibet-twin:test;s=Crane01.Load"}
            sampling_ms: 20

        """

    static let opcuaStatusCodes = ["operational": 1, "fault": 2, "maintenance": 3, "emergency": 4]

    /// One cycle of the model on the OPC UA server: the twin line's status and values written to
    /// their nodes with one new SourceTimestamp.
    static func opcuaCycle(_ line: [UInt8]) -> String? {
        guard let j = try? JSONParser.parse(String(decoding: line, as: UTF8.self)),
              let status = j["status"]?.stringValue, let code = opcuaStatusCodes[status],
              let x = j["values"]?["position_x"]?.doubleValue, let load = j["values"]?["load_kg"]?.doubleValue else { return nil }
        return "setmany Mode int32 \(code) PosX double \(x) Load float \(load)"
    }

    /// One scenario's outcome.
    package struct Outcome: Sendable {
        package var title: String
        package var passed: Bool
        package var detail: String
    }

    /// Runs every scenario; returns whether each came out as it must.
    package func run() async -> Bool {
        let c = Palette(on: color)
        let work: String
        do {
            work = try Self.makeTempDir()
        } catch {
            output("\(c.red)demo: cannot create a working directory: \(error)\(c.off)")
            return false
        }
        defer { try? FileManager.default.removeItem(atPath: work) }
        let audit = auditDir.map { $0.hasPrefix("/") ? $0 : FileManager.default.currentDirectoryPath + "/" + $0 } ?? work + "/audit"

        output("\(c.bold)tibet-twin demo\(c.off) — no action without proven synchronization")
        output("The crane story of the original, for real on loopback: a simulated PLC, a twin feed,")
        output("the guard, and an interlock PLC reading the permit coil with libmodbus.")
        output("")

        // The PLC.
        let simulator: PLCSimulator
        let map: DeviceMap
        do {
            let mapYAML = Self.mapYAML + (twinOverOPCUA ? Self.opcuaBinding : "")
            let probe = try MapLoader.parse(yaml: mapYAML.replacingOccurrences(of: "PORT", with: "1502"), file: "crane-01.yaml")
            simulator = try PLCSimulator(maps: [probe], host: "127.0.0.1", port: 0,
                                         initial: ["load_kg": "2500", "position_x": "12.5"])
            let port = simulator.endpoints[0].port
            try FileManager.default.createDirectory(atPath: work + "/maps", withIntermediateDirectories: true)
            try mapYAML.replacingOccurrences(of: "PORT", with: String(port))
                .write(toFile: work + "/maps/crane-01.yaml", atomically: true, encoding: .utf8)
            map = try MapLoader.parse(yaml: mapYAML.replacingOccurrences(of: "PORT", with: String(port)), file: "crane-01.yaml")
        } catch {
            output("\(c.red)demo: the PLC simulator did not start: \(error)\(c.off)")
            return false
        }
        defer { simulator.stop() }

        // The broker, for the twin over MQTT.
        var broker: DemoBroker?
        if twinOverMQTT {
            do {
                broker = try DemoBroker(dir: work)
            } catch {
                output("\(c.red)demo: \(error)\(c.off)")
                return false
            }
        }
        defer { broker?.stop() }
        let mqttFeed = broker.map { "\n    - mqtt: {broker: 127.0.0.1:\($0.port), topics: [plant/twin/+], topic_names_device: true, reconnect_min_ms: 50}" } ?? ""

        // The OPC UA server with the crane model, for the twin over OPC UA.
        var opcua: DemoOPCUAServer?
        if twinOverOPCUA {
            do {
                opcua = try DemoOPCUAServer()
            } catch {
                output("\(c.red)demo: \(error)\(c.off)")
                return false
            }
        }
        defer { opcua?.stop() }
        let opcuaFeed = opcua.map { "\n    - opcua: {endpoint: \"\($0.endpoint)\", publishing_ms: 20, reconnect_min_ms: 50}" } ?? ""

        // The appliance.
        let config = """
            node: demo-guard
            maps: maps/
            interlock: {listen: 127.0.0.1:0, unit: 1, allow: [127.0.0.0/8], stop_grace_ms: 300}
            twin:
              feeds:
                - tcp: 127.0.0.1:0\(mqttFeed)\(opcuaFeed)
            audit: {dir: \(audit), key: guard.key, checkpoint_s: 60}
            http: {listen: 127.0.0.1:0}

            """
        let runtime: ApplianceRuntime
        do {
            _ = try KeyFiles.generate(out: work + "/guard.key")
            try config.write(toFile: work + "/tibet-twin.yaml", atomically: true, encoding: .utf8)
            runtime = try await ApplianceRuntime.start(configPath: work + "/tibet-twin.yaml",
                                                       notifier: SystemdNotifier(socketPath: nil),
                                                       logger: Logger(label: "tibet-twin.demo"))
        } catch {
            output("\(c.red)demo: the appliance did not start: \(error)\(c.off)")
            return false
        }
        let serving = Task { try? await runtime.run(handleSignals: false) }
        let ports = runtime.ports
        let pollMs = map.plc.pollMs
        let maxAge = Int(map.limits.maxAgeMs)

        var publisher: MQTTClient?
        if let broker {
            do {
                let p = try MQTTClient(options: MQTTOptions(host: "127.0.0.1", port: broker.port, clientId: "demo-twin"),
                                       onEvent: { _ in }, onMessage: { _ in })
                try p.start()
                publisher = p
            } catch {
                output("\(c.red)demo: the twin's MQTT client did not start: \(error)\(c.off)")
                return false
            }
        }
        defer { publisher?.stop() }
        var publish: (@Sendable (String, [UInt8]) -> Bool)?
        if let p = publisher {
            publish = { device, line in
                guard p.isConnected else { return false }
                do {
                    try p.publish(topic: "plant/twin/\(device)", payload: line, qos: 1)
                    return true
                } catch {
                    return false
                }
            }
        }
        if let server = opcua {
            // The model writes its nodes each cycle; a cycle it skips (silent) writes nothing.
            publish = { _, line in Self.opcuaCycle(line).map { server.command($0) } ?? false }
        }
        let twin = TwinClient(port: ports.twinTCP[0], device: "crane-01", periodMs: 50, status: "operational",
                              values: ["position_x": 12.5, "load_kg": 2500], publisher: publish)
        twin.start()
        let coils = CoilReader(port: ports.interlock, count: 2, periodUs: 2000)
        coils.start()

        output("  PLC simulator   127.0.0.1:\(simulator.endpoints[0].port)  crane-01, polled every \(pollMs) ms")
        if let opcua {
            output("  twin feed       opcua \(opcua.endpoint) (asyncua), crane model nodes ns=2;s=Crane01.*, written every 50 ms (max_age_ms \(maxAge))")
        } else if let broker {
            output("  twin feed       mqtt 127.0.0.1:\(broker.port) (mosquitto), topic plant/twin/crane-01, a message every 50 ms (max_age_ms \(maxAge))")
        } else {
            output("  twin feed       tcp 127.0.0.1:\(ports.twinTCP[0])  a line every 50 ms (max_age_ms \(maxAge))")
        }
        output("  interlock       127.0.0.1:\(ports.interlock)  coil 0 = move_left, read every 2 ms")
        output("  status page     http://127.0.0.1:\(ports.http)/")
        output("  audit chain     \(audit)")
        output("")

        var outcomes: [Outcome] = []
        func now() -> Int64 { SystemTimeSource().now().monotonicNs }
        func ms(_ from: Int64, _ to: Int64) -> String {
            let v = Double(to - from) / 1e6
            return v < 10 ? String(format: "%.1f", v) : String(Int(v.rounded()))
        }
        func reason() async -> String {
            let snap: StatusSnapshot = await withCheckedContinuation { k in runtime.guardLoop.status { k.resume(returning: $0) } }
            return snap.devices.first?.intents.first { $0.intent == "move_left" }?.reason ?? "?"
        }
        func scenario(_ n: Int, _ title: String, _ story: String) {
            output("\(c.bold)\(n). \(title)\(c.off)")
            output("   \(story)")
        }
        func report(_ title: String, _ ok: Bool, _ line: String, _ extra: String? = nil) {
            output("   \(ok ? "\(c.green)✔" : "\(c.red)✘") \(line)\(c.off)")
            if let extra { output("     \(c.dim)\(extra)\(c.off)") }
            output("")
            outcomes.append(Outcome(title: title, passed: ok, detail: line))
        }
        func set(_ command: String) {
            do { try simulator.execute(command) } catch { output("   \(c.red)simulator: \(error)\(c.off)") }
        }

        // 1. In sync → permit.
        scenario(1, "In sync → permit", "PLC and twin agree: operational, load 2500 kg, position 12.5 m.")
        var t0 = now()
        if let t = coils.waitFor(coil: 0, true, sinceNs: t0, timeoutMs: 10_000) {
            report("in sync", true, "coil 0 → 1 after \(ms(t0, t)) ms from start",
                   "first evaluation, \(Int(map.limits.rearmMs)) ms re-arm, then the rise's token made durable before the coil rose")
        } else {
            report("in sync", false, "coil 0 never rose within 10 s (\(await reason()))")
        }

        // 2. PLC FAULT while the twin says operational.
        scenario(2, "The PLC goes FAULT while the twin still says operational",
                 "The deadly scenario: the twin's model says all is well; the machine says it is not.")
        t0 = now()
        set("status fault")
        if let t = coils.waitFor(coil: 0, false, sinceNs: t0, timeoutMs: 5000) {
            let d = Double(t - t0) / 1e6
            report("fault", true, "coil 0 → 0 after \(ms(t0, t)) ms " + (d <= Double(pollMs) + 5
                ? "(within one poll of \(pollMs) ms)" : "(a poll is \(pollMs) ms; this machine was busy)"), await reason())
        } else {
            report("fault", false, "coil 0 still 1 after 5 s")
        }
        set("status operational")
        _ = coils.waitFor(coil: 0, true, sinceNs: now(), timeoutMs: 10_000)

        // 3. Load beyond tolerance.
        scenario(3, "The load changes beyond tolerance",
                 "The PLC weighs 3200 kg; the twin still believes 2500 kg (tolerance 100 kg).")
        t0 = now()
        set("set load_kg 3200")
        if let t = coils.waitFor(coil: 0, false, sinceNs: t0, timeoutMs: 5000) {
            report("deviation", true, "coil 0 → 0 after \(ms(t0, t)) ms", await reason())
        } else {
            report("deviation", false, "coil 0 still 1 after 5 s")
        }
        twin.update { $0.values["load_kg"] = 3200 }
        _ = coils.waitFor(coil: 0, true, sinceNs: now(), timeoutMs: 10_000)

        // 4. The twin goes silent while the values still match.
        scenario(4, "The twin goes silent while the values still match",
                 "The seed compared the last values it had and would have allowed this. Silence is staleness.")
        twin.update { $0.silent = true }
        usleep(120_000)  // let any line in flight arrive; the clock starts at the last line sent
        let last = twin.lastSent
        if let t = coils.waitFor(coil: 0, false, sinceNs: last, timeoutMs: 5000) {
            let late = Double(t - last) / 1e6 - Double(maxAge)
            report("silent", true, "coil 0 → 0 \(ms(last, t)) ms after the twin's last line "
                + "(max_age_ms \(maxAge); \(late <= 0 ? "on time" : "\(String(format: "%.0f", late)) ms past it, at most one tick"))",
                   await reason())
        } else {
            report("silent", false, "coil 0 still 1 five seconds into the silence")
        }

        // 5. The twin comes back → re-arm.
        scenario(5, "The twin comes back", "Lines flow again; every check must hold for rearm_ms before the permit returns.")
        t0 = now()
        twin.update { $0.silent = false }
        twin.sendNow()
        if let t = coils.waitFor(coil: 0, true, sinceNs: t0, timeoutMs: 10_000) {
            report("re-arm", true, "coil 0 → 1 after \(ms(t0, t)) ms (re-arm \(Int(map.limits.rearmMs)) ms + a durable token)")
        } else {
            report("re-arm", false, "coil 0 did not return within 10 s (\(await reason()))")
        }

        // 6. A write attempt on the coil.
        scenario(6, "Someone tries to write the permit coil", "A Modbus client sends FC 5 (write single coil) := 0, and FC 6.")
        let writeOutcome = Self.tryWrites(port: ports.interlock)
        usleep(100_000)
        let still = coils.current?.first == 1
        report("write refused", writeOutcome.refused && still,
               writeOutcome.refused ? "refused with exception 1 (illegal function); coil 0 still \(still ? 1 : 0)"
                   : "NOT refused: \(writeOutcome.detail)", writeOutcome.detail)

        // Stop and verify the chain.
        twin.stop()
        coils.stop()
        await runtime.shutdown()
        _ = await serving.value
        output("\(c.bold)Audit chain\(c.off)")
        var verified = false
        switch (try? AuditDirectory.verify(audit, pinnedKeys: [runtime.audit.publicKey])) {
        case .success(let s)?:
            verified = true
            output("   \(c.green)✔ audit verify \(audit): \(s.tokens) tokens in \(s.segments) segment(s), every hash, link and signature checks\(c.off)")
            let shown = (try? AuditDirectory.tokens(audit)) ?? []
            let permits = shown.filter { $0.token.action == .permitChanged }.count
            let writes = shown.filter { $0.token.action == .writeRejected }.count
            output("     \(c.dim)\(permits) permit changes, \(writes) refused write(s), started/config_loaded/stopped; `tibet-twin audit show \(auditDir ?? "DIR")` reads it\(c.off)")
        case .failure(let f)?:
            output("   \(c.red)✘ audit verify failed: \(f)\(c.off)")
        case nil:
            output("   \(c.red)✘ audit verify could not read \(audit)\(c.off)")
        }
        outcomes.append(Outcome(title: "audit verify", passed: verified, detail: ""))
        output("")
        let passed = outcomes.allSatisfy(\.passed)
        if passed {
            output("\(c.green)\(c.bold)Every scenario came out as it must.\(c.off)")
            output("")
            output("Next: keep the chain with `tibet-twin demo --audit DIR` and read it with `tibet-twin audit show DIR`;")
            output("serve a map's registers with `tibet-twin simulate --map maps/crane-01.yaml` and read them back with")
            output("`tibet-twin read --map maps/crane-01.yaml`; `make run` starts the appliance with a simulated PLC")
            output("and twin and prints its status page address; docs/README.md says what to read next.")
        } else {
            output("\(c.red)\(c.bold)Failed: \(outcomes.filter { !$0.passed }.map(\.title).joined(separator: ", "))\(c.off)")
        }
        return passed
    }

    /// FC 5 and FC 6 against the interlock; both must draw exception 1.
    static func tryWrites(port: Int) -> (refused: Bool, detail: String) {
        do {
            let client = try ModbusClient(host: "127.0.0.1", port: port, unit: 1, responseTimeoutMs: 1000)
            try client.connect()
            defer { client.close() }
            var codes: [String] = []
            var refused = true
            do {
                try client.writeBit(address: 0, value: false)
                refused = false
                codes.append("FC 5 accepted")
            } catch {
                codes.append("FC 5 → exception \(error.exceptionCode.map(String.init) ?? "none: \(error)")")
                refused = refused && error.exceptionCode == 1
            }
            if !client.isConnected { try client.connect() }
            do {
                try client.writeRegister(address: 16, value: 0)
                refused = false
                codes.append("FC 6 accepted")
            } catch {
                codes.append("FC 6 → exception \(error.exceptionCode.map(String.init) ?? "none: \(error)")")
                refused = refused && error.exceptionCode == 1
            }
            return (refused, codes.joined(separator: ", ") + "; both audited as write_rejected")
        } catch {
            return (false, "could not connect: \(error)")
        }
    }

    static func makeTempDir() throws -> String {
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("tibet-twin-demo-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: base, withIntermediateDirectories: true)
        return base.path
    }

    struct Palette {
        let bold, green, red, dim, off: String
        init(on: Bool) {
            bold = on ? "\u{1B}[1m" : ""
            green = on ? "\u{1B}[32m" : ""
            red = on ? "\u{1B}[31m" : ""
            dim = on ? "\u{1B}[2m" : ""
            off = on ? "\u{1B}[0m" : ""
        }
    }
}

/// A local MQTT broker for the demo and the benchmark: `/usr/sbin/mosquitto` on a free loopback
/// port, its config in `dir`; killed by `stop()`.
package final class DemoBroker: @unchecked Sendable {
    package let port: Int

    struct NotStarted: Error, CustomStringConvertible {
        var description: String
    }

    package init(dir: String) throws {
        let path = "/usr/sbin/mosquitto"
        guard FileManager.default.isExecutableFile(atPath: path) else {
            throw NotStarted(description: "--twin mqtt needs the mosquitto broker (Debian package mosquitto) at \(path)")
        }
        var lastError = "no free port"
        for _ in 0..<5 {
            let candidate = Int.random(in: 20_000...60_000)
            let conf = "listener \(candidate) 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\n"
                + (getuid() == 0 ? "user root\n" : "")
            try conf.write(toFile: dir + "/mosquitto.conf", atomically: true, encoding: .utf8)
            let p = Process()
            p.executableURL = URL(fileURLWithPath: path)
            p.arguments = ["-c", dir + "/mosquitto.conf"]
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            try p.run()
            let deadline = monotonicNowNs() + 5_000_000_000
            while p.isRunning, monotonicNowNs() < deadline, !Self.accepts(candidate) { usleep(20_000) }
            if p.isRunning, Self.accepts(candidate) {
                port = candidate
                started = p
                return
            }
            if p.isRunning { kill(p.processIdentifier, SIGKILL) }
            p.waitUntilExit()
            lastError = "mosquitto did not start on 127.0.0.1:\(candidate)"
        }
        throw NotStarted(description: lastError)
    }

    private var started: Process?

    package func stop() {
        guard let p = started else { return }
        started = nil
        if p.isRunning { kill(p.processIdentifier, SIGKILL) }
        p.waitUntilExit()
    }

    static func accepts(_ port: Int) -> Bool {
        guard let fd = try? SystemCall.retrying({ socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0) }) else { return false }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        } == 0
    }
}
