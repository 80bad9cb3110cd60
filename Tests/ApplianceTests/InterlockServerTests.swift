import Foundation
import InMemoryLogging
import Logging
import Modbus
import ServiceLifecycle
import Synchronization
import Testing
import TibetTwin
@testable import Appliance
import TestSupport


/// The Python with pymodbus 3.8.6: `$TIBET_TWIN_PYTHON` or `<package root>/.venv/bin/python`.
func pymodbusPython() -> String? {
    if let p = ProcessInfo.processInfo.environment["TIBET_TWIN_PYTHON"], FileManager.default.isExecutableFile(atPath: p) {
        return p
    }
    let venv = packageRoot.appendingPathComponent(".venv/bin/python").path
    return FileManager.default.isExecutableFile(atPath: venv) ? venv : nil
}

/// The first executable named `name` on PATH (or in /usr/bin).
func executable(_ name: String) -> String? {
    let path = (ProcessInfo.processInfo.environment["PATH"] ?? "") + ":/usr/bin:/usr/local/bin"
    for dir in path.split(separator: ":") {
        let p = "\(dir)/\(name)"
        if FileManager.default.isExecutableFile(atPath: p) { return p }
    }
    return nil
}

/// What a child wrote to one pipe.
final class CollectedData: Sendable {
    let data = Mutex(Data())
}

struct ChildResult {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// Runs a child process to completion; it is killed if it outlives `timeout` seconds, and in
/// every case it is gone when this returns.
func runChild(_ executable: String, _ arguments: [String], timeout: Double = 30) throws -> ChildResult {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: executable)
    p.arguments = arguments
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    p.standardInput = FileHandle.nullDevice
    try p.run()
    defer {
        if p.isRunning {
            p.terminate()
            usleep(100_000)
            if p.isRunning { kill(p.processIdentifier, SIGKILL) }
        }
        p.waitUntilExit()
    }
    // Read both pipes on other threads so a chatty child cannot block on a full pipe.
    let outData = CollectedData(), errData = CollectedData()
    let group = DispatchGroup()
    for (pipe, sink) in [(out, outData), (err, errData)] {
        group.enter()
        let handle = pipe.fileHandleForReading
        Thread {
            let d = handle.readDataToEndOfFile()
            sink.data.withLock { $0 = d }
            group.leave()
        }.start()
    }
    let deadline = Date().addingTimeInterval(timeout)
    while p.isRunning && Date() < deadline { usleep(10_000) }
    if p.isRunning {
        p.terminate()
        usleep(200_000)
        if p.isRunning { kill(p.processIdentifier, SIGKILL) }
    }
    p.waitUntilExit()
    _ = group.wait(timeout: .now() + 5)
    return ChildResult(status: p.terminationStatus,
                       stdout: String(decoding: outData.data.withLock { $0 }, as: UTF8.self),
                       stderr: String(decoding: errData.data.withLock { $0 }, as: UTF8.self))
}

/// `runChild` on a thread of its own, so waiting for the child never holds one of the few
/// cooperative threads other tests need.
func runChildOffPool(_ executable: String, _ arguments: [String], timeout: Double = 30) async throws -> ChildResult {
    try await withCheckedThrowingContinuation { (cont: CheckedContinuation<ChildResult, any Error>) in
        Thread {
            do {
                cont.resume(returning: try runChild(executable, arguments, timeout: timeout))
            } catch {
                cont.resume(throwing: error)
            }
        }.start()
    }
}

func interlockMap(_ device: String, _ intents: [(String, UInt16)]) -> DeviceMap {
    DeviceMap(
        device: device, profile: .port, plc: PLCEndpoint(host: "127.0.0.1"),
        limits: Limits(maxDriftMs: 200, rearmMs: 100),
        status: StatusSpec(register: RegisterSpec(name: "status", address: 0), values: [0: "operational"]),
        registers: [], intents: intents.map { IntentSpec(name: $0.0, coil: $0.1) })
}

/// Collects the interlock's audit events.
final class InterlockEventLog: Sendable {
    private let events = Mutex<[InterlockEvent]>([])
    var all: [InterlockEvent] { events.withLock { $0 } }
    var sink: @Sendable (InterlockEvent) -> Void { { [self] e in self.events.withLock { $0.append(e) } } }
}

/// Reads tables with pymodbus 3.8.6, tries every write function, prints one JSON object.
let pymodbusProbe = #"""
import json, sys
from pymodbus.client import ModbusTcpClient
port, ncoils, nregs, unit = (int(a) for a in sys.argv[1:5])
c = ModbusTcpClient("127.0.0.1", port=port, timeout=3, retries=0)
if not c.connect():
    print(json.dumps({"error": "connect failed"})); sys.exit(2)
out = {}
def res(r):
    return ("exception", r.exception_code) if r.isError() else ("ok", None)
r = c.read_coils(0, count=ncoils, slave=unit); out["coils"] = [int(b) for b in r.bits[:ncoils]]
r = c.read_discrete_inputs(0, count=ncoils, slave=unit); out["discrete"] = [int(b) for b in r.bits[:ncoils]]
r = c.read_input_registers(0, count=nregs, slave=unit); out["input"] = list(r.registers)
r = c.read_holding_registers(0, count=nregs, slave=unit); out["holding"] = list(r.registers)
out["beyond_coils"] = res(c.read_coils(ncoils, count=1, slave=unit))
out["beyond_registers"] = res(c.read_input_registers(nregs, count=1, slave=unit))
w = {}
w["5"] = res(c.write_coil(0, True, slave=unit))
w["6"] = res(c.write_register(0, 1, slave=unit))
w["15"] = res(c.write_coils(0, [True, True, True], slave=unit))
w["16"] = res(c.write_registers(0, [1, 2], slave=unit))
w["22"] = res(c.mask_write_register(address=0, and_mask=0, or_mask=0xFFFF, slave=unit))
w["23"] = res(c.readwrite_registers(read_address=0, read_count=1, write_address=0, values=[9], slave=unit))
out["writes"] = w
r = c.read_coils(0, count=ncoils, slave=unit); out["coils_after"] = [int(b) for b in r.bits[:ncoils]]
c.close()
print(json.dumps(out))
"""#

@Suite("Interlock server")
struct InterlockServerTests {
    let layout = try! InterlockLayout(maps: [
        interlockMap("crane-01", [("move_left", 0), ("hoist", 1)]),
        interlockMap("robot-07", [("weld", 5)]),
    ])

    let logs = InMemoryLogHandler()
    var logger: Logger { Logger(label: "test.interlock") { _ in logs } }

    func config(_ mutate: (inout InterlockConfig) -> Void = { _ in }) -> InterlockConfig {
        var c = InterlockConfig(host: "127.0.0.1", port: 0)
        mutate(&c)
        return c
    }

    /// A table with crane-01 permitting `hoist` only, robot-07 blocked by drift.
    func evaluated(heartbeat: UInt16) -> PermitTable {
        PermitTable(layout: layout, heartbeat: heartbeat, healthy: true, devices: [
            "crane-01": DeviceDiagnostics(reason: .ok, driftMs: 12, physicalAgeMs: 20, twinAgeMs: 30,
                                          permits: ["hoist"], blockCount: 4),
            "robot-07": DeviceDiagnostics(reason: .drift, driftMs: 800, physicalAgeMs: 10, twinAgeMs: 15,
                                          permits: [], blockCount: 9),
        ])
    }

    @Test func permitsAreZeroUntilTheFirstPublish() throws {
        let server = try InterlockServer(config: config(), layout: layout, logger: logger)
        try server.start()
        defer { server.stopImmediately() }
        let c = try ApplianceModbusClient(port: server.port)
        #expect(try c.readBits(0, 6) == [0, 0, 0, 0, 0, 0])
        let regs = try c.readRegisters(0, 32, input: true)
        #expect(regs[0] == 0 && regs[1] == 0 && regs[2] == 2)
        #expect(regs[16] == 0xFFFF && regs[24] == 0xFFFF)
        server.publish(evaluated(heartbeat: 1))
        #expect(try c.readBits(0, 6) == [0, 1, 0, 0, 0, 0])
        #expect(try c.readRegisters(0, 3) == [1, 1, 2])
    }

    @Test func pymodbusSeesTheLayoutAndCannotWrite() async throws {
        let python = try #require(pymodbusPython(), "no pymodbus venv: run scripts/setup.sh")
        let log = InterlockEventLog()
        let server = try InterlockServer(config: config(), layout: layout, logger: logger, events: log.sink)
        try server.start()
        defer { server.stopImmediately() }
        let table = evaluated(heartbeat: 77)
        server.publish(table)
        let r = try await runChildOffPool(python, ["-c", pymodbusProbe, String(server.port), "6", "32", "1"])
        #expect(r.status == 0, "\(r.stderr)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], "\(r.stdout) \(r.stderr)")
        let expectedBits = table.bits.map(Int.init)
        let expectedRegs = table.registers.map(Int.init)
        #expect(json["coils"] as? [Int] == expectedBits)
        #expect(json["discrete"] as? [Int] == expectedBits)
        #expect(json["input"] as? [Int] == expectedRegs)
        #expect(json["holding"] as? [Int] == expectedRegs)
        #expect(json["coils_after"] as? [Int] == expectedBits)
        #expect((json["beyond_coils"] as? [Any])?.last as? Int == 2)
        #expect((json["beyond_registers"] as? [Any])?.last as? Int == 2)
        let writes = try #require(json["writes"] as? [String: [Any]])
        for fc in ["5", "6", "15", "16", "22", "23"] {
            #expect(writes[fc]?.first as? String == "exception", "FC \(fc)")
            #expect(writes[fc]?.last as? Int == 1, "FC \(fc)")
        }
        #expect(server.table == table)
        let rejected = log.all.compactMap { e -> UInt8? in
            if case .writeRejected(let client, _, let fc, _, _) = e, client.hasPrefix("127.0.0.1:") { return fc }
            return nil
        }
        #expect(rejected == [5, 6, 15, 16, 22, 23])
        #expect(server.counters().writesRejected == 6)
    }

    @Test func mbpollReadsEveryTable() async throws {
        let mbpoll = try #require(executable("mbpoll"), "mbpoll not installed: run scripts/setup.sh")
        let server = try InterlockServer(config: config(), layout: layout, logger: logger)
        try server.start()
        defer { server.stopImmediately() }
        let table = evaluated(heartbeat: 4242)
        server.publish(table)
        func poll(_ type: String, _ count: Int) async throws -> [Int] {
            let r = try await runChildOffPool(mbpoll, ["-m", "tcp", "-p", String(server.port), "-a", "1", "-t", type, "-0",
                                          "-r", "0", "-c", String(count), "-1", "127.0.0.1"])
            #expect(r.status == 0, "mbpoll -t \(type): \(r.stdout) \(r.stderr)")
            // Lines like "[3]: 	1"; holding/input registers may print as "[17]: 	12 (...)".
            return r.stdout.split(separator: "\n").compactMap { line -> Int? in
                guard line.hasPrefix("["), let close = line.firstIndex(of: ":") else { return nil }
                let value = line[line.index(after: close)...].trimmingCharacters(in: .whitespaces)
                return Int(value.split(separator: " ").first ?? "")
            }
        }
        #expect(try await poll("0", 6) == table.bits.map(Int.init))
        #expect(try await poll("1", 6) == table.bits.map(Int.init))
        #expect(try await poll("3", 32) == table.registers.map(Int.init))
        #expect(try await poll("4", 32) == table.registers.map(Int.init))
        // Beyond the layout: mbpoll reports the exception and exits 1.
        let beyond = try await runChildOffPool(mbpoll, ["-m", "tcp", "-p", String(server.port), "-a", "1", "-t", "0", "-0",
                                           "-r", "6", "-c", "1", "-1", "127.0.0.1"])
        #expect(beyond.status != 0)
    }

    @Test func shutdownServesZerosForTheGracePeriodThenCloses() async throws {
        // On 127.0.0.2: no other test's listener can take the port once this one closes.
        let server = try InterlockServer(config: config { $0.stopGraceMs = 600; $0.host = "127.0.0.2" }, layout: layout,
                                         logger: logger)
        try server.start()
        let c = try ApplianceModbusClient(port: server.port, host: 0x7F00_0002)
        server.publish(evaluated(heartbeat: 9))
        #expect(try c.readBits(0, 2) == [0, 1])
        let stopped = Task { await server.stop() }
        // During the grace period: still answering, every permit 0, later publishes ignored.
        #expect(await eventually { (try? c.readBits(0, 2)) == [0, 0] })
        server.publish(evaluated(heartbeat: 10))
        #expect(try c.readBits(0, 6) == [0, 0, 0, 0, 0, 0])
        let regs = try c.readRegisters(0, 32, input: true)
        #expect(regs[0] == 9 && regs[1] == 0)
        #expect(regs[20] == 0 && regs[16] == 0xFFFF)
        #expect(!server.table.anyPermit)
        await stopped.value
        #expect(throws: (any Error).self) { try c.readBits(0, 1) }
        #expect(throws: (any Error).self) { try ApplianceModbusClient(port: server.port, host: 0x7F00_0002) }
    }

    @Test func asAServiceGracefulShutdownServesZerosThenEnds() async throws {
        let server = try InterlockServer(config: config { $0.stopGraceMs = 500; $0.host = "127.0.0.2" }, layout: layout,
                                         logger: logger)
        let group = ServiceGroup(services: [server], logger: logger)
        let running = Task { try await group.run() }
        server.publish(evaluated(heartbeat: 5))
        // The group starts the server on the cooperative pool, which a parallel test run may
        // keep busy for a while: each attempt on a fresh connection, so a timed-out one cannot
        // leave a late answer behind.
        #expect(await eventually(within: 30) {
            (try? ApplianceModbusClient(port: server.port, host: 0x7F00_0002, timeoutMs: 500).readBits(0, 2)) == [0, 1]
        })
        let c = try ApplianceModbusClient(port: server.port, host: 0x7F00_0002)
        #expect(try c.readBits(0, 2) == [0, 1])
        await group.triggerGracefulShutdown()
        #expect(await eventually { (try? c.readBits(0, 2)) == [0, 0] })
        server.publish(evaluated(heartbeat: 6))
        #expect(try c.readBits(0, 2) == [0, 0])
        try await running.value
        #expect(throws: (any Error).self) { try c.readBits(0, 1) }
    }

    @Test func refusedClientsAndWritesAreReportedEveryTime() throws {
        let log = InterlockEventLog()
        let server = try InterlockServer(config: config { $0.allow = { _ in false } }, layout: layout, logger: logger, events: log.sink)
        try server.start()
        defer { server.stopImmediately() }
        for _ in 0..<5 {
            #expect(throws: (any Error).self) {
                let c = try ApplianceModbusClient(port: server.port)
                _ = try c.readBits(0, 1)
            }
        }
        #expect(waitUntil { log.all.count == 5 })
        #expect(log.all.allSatisfy {
            if case .clientRefused(let client, "not_allowed") = $0 { return client.hasPrefix("127.0.0.1:") }
            return false
        })
        #expect(server.counters().refusedNotAllowed == 5)
    }

    @Test func configSectionFillsTheServerSettings() throws {
        let parsed = try ApplianceConfig.parse(yaml: """
            node: g
            twin: {feeds: [{tcp: 127.0.0.1:7502}]}
            interlock: {listen: 127.0.0.1:0, unit: 7, allow: [10.0.0.0/24, 127.0.0.1], max_clients: 3,
                        stop_grace_ms: 100, idle_timeout_ms: 5000, byte_timeout_ms: 250}
            """, file: "t.yaml")
        let c = InterlockConfig(parsed.interlock)
        #expect(c.host == "127.0.0.1" && c.port == 0 && c.unit == 7)
        #expect(c.maxClients == 3 && c.stopGraceMs == 100 && c.idleTimeoutMs == 5000 && c.byteTimeoutMs == 250)
        #expect(c.allow(PeerAddress(bytes: [10, 0, 0, 9], port: 1)))
        #expect(c.allow(PeerAddress(bytes: [127, 0, 0, 1], port: 1)))
        #expect(!c.allow(PeerAddress(bytes: [127, 0, 0, 2], port: 1)))
        #expect(!c.allow(PeerAddress(bytes: [10, 0, 1, 9], port: 1)))
        // A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d.
        #expect(c.allow(PeerAddress(bytes: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 10, 0, 0, 9], port: 1)))
        let server = try InterlockServer(config: c, layout: layout, logger: logger)
        try server.start()
        defer { server.stopImmediately() }
        let client = try ApplianceModbusClient(port: server.port)
        #expect(try client.readBits(0, 1, unit: 7) == [0])
        #expect(throws: TestClientError.self) { try client.readBits(0, 1, unit: 1) }
    }

    @Test func theLogIsRateLimitedButNotTheCountOrTheAudit() throws {
        let log = InterlockEventLog()
        let server = try InterlockServer(config: config(), layout: layout, logger: logger, events: log.sink)
        try server.start()
        defer { server.stopImmediately() }
        let c = try ApplianceModbusClient(port: server.port)
        for i in 0..<20 {
            #expect(throws: TestClientError.self) { try c.request([5, 0, UInt8(i), 0xFF, 0]) }
        }
        #expect(server.counters().writesRejected == 20)
        #expect(log.all.count == 20)
        let lines = logs.entries.filter { "\($0.message)".contains("write refused") }
        #expect(lines.count == 1)
        #expect(lines.first?.metadata["client"].map { "\($0)".hasPrefix("127.0.0.1:") } == true)
        #expect(server.table == PermitTable.allBlocked(layout: layout))
    }

    @Test func aThousandConnectionAttemptsDoNotCrashTheServer() async throws {
        let python = try #require(pymodbusPython(), "no pymodbus venv: run scripts/setup.sh")
        let server = try InterlockServer(config: config { $0.maxClients = 8 }, layout: layout, logger: logger)
        try server.start()
        defer { server.stopImmediately() }
        server.publish(evaluated(heartbeat: 3))
        // An outside process opens 1100 connections and holds them all at once (its own
        // descriptors, so this test process stays far below 1024).
        let script = #"""
        import socket, sys, resource, time
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
        socks = []
        for i in range(1100):
            s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
            socks.append(s)
        time.sleep(0.5)
        closed = 0
        for s in socks:
            s.settimeout(0.01)
            try:
                if s.recv(1) == b"": closed += 1
            except socket.timeout:
                pass
            except OSError:
                closed += 1
        print(len(socks), closed)
        """#
        let r = try await runChildOffPool(python, ["-c", script, String(server.port)], timeout: 60)
        #expect(r.status == 0, "\(r.stderr)")
        let parts = r.stdout.split(whereSeparator: \.isWhitespace).compactMap { Int($0) }
        #expect(parts.first == 1100)
        // All but the 8 admitted were closed at accept (those 8 were closed by the peer's exit).
        #expect(parts.last.map { $0 >= 1092 } == true, "\(r.stdout)")
        #expect(await eventually { server.counters().refusedTooManyClients >= 1092 })
        let c = try ApplianceModbusClient(port: server.port)
        #expect(try c.readBits(0, 2) == [0, 1])
    }
}

