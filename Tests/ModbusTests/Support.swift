// SOCK_STREAM/MSG_NOSIGNAL: depending on build order the clang importer credits them to another C
// module than Glibc; importing the project's Linux shim as well keeps the lookup independent of that.
import CLinux
import Dispatch
import Foundation
import Modbus
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A value handed between threads under a lock.
final class Locked<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: T
    init(_ value: T) { self.value = value }
    func get() -> T { lock.lock(); defer { lock.unlock() }; return value }
    func set(_ v: T) { lock.lock(); value = v; lock.unlock() }
    func update<R>(_ body: (inout T) -> R) -> R { lock.lock(); defer { lock.unlock() }; return body(&value) }
}

/// Runs blocking code (libmodbus calls) on a thread of its own, never the cooperative pool.
func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { (c: CheckedContinuation<T, Error>) in
        let t = Thread {
            do { c.resume(returning: try body()) } catch { c.resume(throwing: error) }
        }
        t.start()
    }
}

/// A `ModbusServer` with a `.delegate` policy (libmodbus replies from a mapping), bound to
/// 127.0.0.1:0, on its own loop thread.
final class InProcessServer: Sendable {
    let port: Int
    let server: ModbusServer

    /// `makeDelegate` runs on the server thread (the delegate and its mapping live there).
    /// `frameTimeoutMs` is the server's byte timeout: how long a begun frame may stay incomplete.
    init(frameTimeoutMs: Int = 2000, _ makeDelegate: @escaping @Sendable () throws -> ModbusServerDelegate) throws {
        let config = ModbusServer.Configuration(
            host: "127.0.0.1", port: 0, maxClients: 32, idleTimeoutMs: 0, byteTimeoutMs: frameTimeoutMs,
            threadName: "test-delegate")
        server = try ModbusServer(configuration: config, policy: .delegate({ try! makeDelegate() }))
        port = server.port
        try server.start()
    }

    func stop() {
        server.stop()
        server.join()
    }

    deinit { stop() }
}

/// Answers every request from one mapping; `hook` may change the mapping or the action.
final class MappingDelegate: ModbusServerDelegate {
    let mapping: ModbusMapping
    var requests = 0
    let hook: (Int, ModbusRequest, ModbusMapping) -> ModbusServerAction?

    init(_ mapping: ModbusMapping, hook: @escaping (Int, ModbusRequest, ModbusMapping) -> ModbusServerAction? = { _, _, _ in nil }) {
        self.mapping = mapping
        self.hook = hook
    }

    func answer(_ request: ModbusRequest, server: ModbusServerControl) -> ModbusServerAction {
        requests += 1
        return hook(requests, request, mapping) ?? .reply(mapping)
    }
}

/// A plain TCP client socket for sending hand-made frames.
final class RawSocket {
    let fd: Int32

    init(port: Int, receiveTimeoutMs: Int = 3000) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = UInt16(port).bigEndian
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if rc != 0 { close(fd); throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        var tv = timeval(tv_sec: receiveTimeoutMs / 1000, tv_usec: (receiveTimeoutMs % 1000) * 1000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(fd) }

    func send(_ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    /// Reads up to `max` bytes; empty on EOF; nil on timeout or error.
    func receive(max: Int = 512) -> [UInt8]? {
        var buf = [UInt8](repeating: 0, count: max)
        let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, max, 0) }
        if n < 0 { return nil }
        return Array(buf[0..<n])
    }
}

/// A read-holding-registers request frame.
func readFrame(tid: UInt16 = 1, unit: UInt8 = 1, function: UInt8 = 3, address: UInt16, count: UInt16,
               protocolID: UInt16 = 0) -> [UInt8] {
    [UInt8(tid >> 8), UInt8(tid & 0xFF), UInt8(protocolID >> 8), UInt8(protocolID & 0xFF), 0, 6, unit, function,
     UInt8(address >> 8), UInt8(address & 0xFF), UInt8(count >> 8), UInt8(count & 0xFF)]
}

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
