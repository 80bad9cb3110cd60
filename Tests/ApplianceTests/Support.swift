import Dispatch
import Foundation
import TibetTwin

#if canImport(Glibc)
import Glibc
#endif

// Test support for the appliance tests (test targets cannot share sources; ModbusTests has
// the same PLC harness).

/// The crane map of docs/register-maps.md, built in code, pointed at `port`.
/// A generous default timeout: tests about timeouts pass their own; the rest must not flake under load.
func craneMap(port: Int, pollMs: Int = 50, timeoutMs: Int = 1000, maxGap: Int = 16) -> DeviceMap {
    DeviceMap(
        device: "crane-01", profile: .port,
        plc: PLCEndpoint(host: "127.0.0.1", port: port, unit: 1, pollMs: pollMs, timeoutMs: timeoutMs, maxGap: maxGap),
        limits: Limits(maxDriftMs: 200, rearmMs: 100),
        identity: [IdentitySpec(register: RegisterSpec(name: "serial", address: 9000, type: .uint32), expect: .uint(4711))],
        status: StatusSpec(register: RegisterSpec(name: "status", address: 0),
                           values: [0: "operational", 1: "fault", 2: "maintenance", 3: "emergency"]),
        registers: [
            RegisterSpec(name: "position_x", address: 100, type: .float32, unit: "m", tolerance: 0.5),
            RegisterSpec(name: "load_kg", address: 102, type: .uint32, order: .CDAB, unit: "kg", tolerance: 100),
            RegisterSpec(name: "hoist_locked", address: 7, bit: 3),
            RegisterSpec(name: "wind_speed", table: .input, address: 4, type: .int16, scale: 0.1, unit: "m/s"),
        ],
        intents: [IntentSpec(name: "move_left", coil: 0)])
}

/// Collects what a poller delivers and lets a test wait for a state it wants.
final class StateLog: @unchecked Sendable {
    private let cond = NSCondition()
    private var states: [PhysicalState] = []

    func put(_ s: PhysicalState) { cond.lock(); states.append(s); cond.broadcast(); cond.unlock() }

    var all: [PhysicalState] { cond.lock(); defer { cond.unlock() }; return states }
    var count: Int { cond.lock(); defer { cond.unlock() }; return states.count }

    /// The first state from index `from` on that satisfies `ok`, waiting up to `timeoutMs`
    /// (a generous liveness bound, never a measurement).
    @discardableResult
    func wait(from: Int = 0, timeoutMs: Int = 5000, _ ok: (PhysicalState) -> Bool) -> (index: Int, state: PhysicalState)? {
        let deadline = Date().addingTimeInterval(Double(timeoutMs) / 1000)
        cond.lock(); defer { cond.unlock() }
        var i = from
        while true {
            while i < states.count {
                if ok(states[i]) { return (i, states[i]) }
                i += 1
            }
            if !cond.wait(until: deadline) { return nil }
        }
    }
}

func value(_ s: PhysicalState, _ name: String) -> Double? { s.values[name]?.value?.number }

/// The package root (for scripts/ and .venv/).
let packageRoot: URL = {
    var u = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { u.deleteLastPathComponent() }
    return u
}()

/// The Python with pymodbus 3.8.6: `$TIBET_TWIN_PYTHON`, else `<root>/.venv/bin/python`.
func pythonWithPymodbus() -> String? {
    if let p = ProcessInfo.processInfo.environment["TIBET_TWIN_PYTHON"], FileManager.default.isExecutableFile(atPath: p) { return p }
    let p = packageRoot.appendingPathComponent(".venv/bin/python").path
    return FileManager.default.isExecutableFile(atPath: p) ? p : nil
}

/// A pymodbus PLC (scripts/pymodbus_plc.py) as a child process; stopped by `stop()` or deinit.
final class PymodbusPLC: @unchecked Sendable {
    let process = Process()
    let port: Int
    private let input = Pipe()
    private let lines: LineReader

    /// Starts the child with `spec` (see the script) and waits for its `listening` line.
    init(spec: String) throws {
        guard let python = pythonWithPymodbus() else { throw SimpleError("pymodbus not installed: run scripts/setup.sh") }
        let out = Pipe()
        process.executableURL = URL(fileURLWithPath: python)
        process.arguments = [packageRoot.appendingPathComponent("scripts/pymodbus_plc.py").path, spec]
        process.standardInput = input
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        lines = LineReader(out.fileHandleForReading)
        guard let first = lines.next(timeoutMs: 20_000), first.hasPrefix("listening "),
              let p = first.split(separator: ":").last.flatMap({ Int($0) }) else {
            kill(process.processIdentifier, SIGKILL)
            throw SimpleError("pymodbus PLC did not start")
        }
        port = p
    }

    /// Sends one command and waits for its "ok".
    func command(_ line: String) throws {
        input.fileHandleForWriting.write(Data((line + "\n").utf8))
        guard lines.next(timeoutMs: 10_000) == "ok" else { throw SimpleError("pymodbus PLC: no ok for \(line)") }
    }

    /// Closes its stdin (it exits at end of input); SIGKILL if it has not gone within 5 s.
    /// (SIGTERM is not used: children inherit the test runner's blocked-signal mask.)
    func stop() {
        guard process.isRunning else { return }
        try? input.fileHandleForWriting.close()
        let deadline = Date().addingTimeInterval(5)
        while process.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.02) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    deinit { stop() }
}

/// Reads lines from a pipe on a background thread, handing them over with a timeout.
final class LineReader: @unchecked Sendable {
    private let cond = NSCondition()
    private var queue: [String] = []
    private var eof = false

    init(_ handle: FileHandle) {
        let t = Thread { [self] in
            var pending = Data()
            while true {
                let chunk = handle.availableData
                if chunk.isEmpty { break }
                pending.append(chunk)
                while let nl = pending.firstIndex(of: 0x0A) {
                    let line = String(decoding: pending[pending.startIndex..<nl], as: UTF8.self)
                    pending.removeSubrange(pending.startIndex...nl)
                    cond.lock(); queue.append(line); cond.broadcast(); cond.unlock()
                }
            }
            cond.lock(); eof = true; cond.broadcast(); cond.unlock()
        }
        t.start()
    }

    /// The next line, or nil after `timeoutMs` or at end of file.
    func next(timeoutMs: Int) -> String? {
        let deadline = Date().addingTimeInterval(Double(timeoutMs) / 1000)
        cond.lock(); defer { cond.unlock() }
        while queue.isEmpty && !eof {
            if !cond.wait(until: deadline) { return nil }
        }
        return queue.isEmpty ? nil : queue.removeFirst()
    }
}

struct SimpleError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// A port nothing listens on (bound, read back and closed).
func closedPort() -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
    return Int(UInt16(bigEndian: addr.sin_port))
}

/// A TCP listener on 127.0.0.1 that accepts every connection and closes it at once (a gateway
/// out of sessions); counts the connections. Stopped by `stop()` (waits for its thread).
final class SlammingListener: @unchecked Sendable {
    private let fd: Int32
    let port: Int
    private let lock = NSLock()
    private var accepted = 0
    private var stopping = false
    private let done = DispatchSemaphore(value: 0)

    init() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw SimpleError("socket failed") }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard rc == 0, listen(fd, 16) == 0 else { close(fd); throw SimpleError("bind/listen failed") }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        self.fd = fd
        port = Int(UInt16(bigEndian: addr.sin_port))
        startAccepting()
    }

    private func startAccepting() {
        Thread { [self] in
            while true {
                var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                _ = poll(&p, 1, 20)
                lock.lock(); let stop = stopping; lock.unlock()
                if stop { break }
                if p.revents & Int16(POLLIN) != 0 {
                    let c = accept(fd, nil, nil)
                    if c >= 0 { close(c); lock.lock(); accepted += 1; lock.unlock() }
                }
            }
            done.signal()
        }.start()
    }

    var connections: Int { lock.lock(); defer { lock.unlock() }; return accepted }

    func stop() {
        lock.lock()
        let already = stopping
        stopping = true
        lock.unlock()
        if already { return }
        done.wait()
        close(fd)
    }

    deinit { stop() }
}
