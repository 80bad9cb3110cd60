import Foundation

#if canImport(Glibc)
import Glibc
#endif

// What every test target shares: paths into the package, outside peers (the pymodbus PLC),
// waiting for a condition, small socket helpers. Test targets cannot share sources, so this is
// a plain target that only test targets depend on.

/// The package root (for scripts/ and .venv/).
public let packageRoot: URL = {
    var u = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { u.deleteLastPathComponent() }
    return u
}()

/// The Python with pymodbus 3.8.6: `$TIBET_TWIN_PYTHON`, else `<root>/.venv/bin/python`.
public func pythonWithPymodbus() -> String? {
    if let p = ProcessInfo.processInfo.environment["TIBET_TWIN_PYTHON"], FileManager.default.isExecutableFile(atPath: p) { return p }
    let p = packageRoot.appendingPathComponent(".venv/bin/python").path
    return FileManager.default.isExecutableFile(atPath: p) ? p : nil
}

/// A Python peer (a script of scripts/ on pymodbus) as a child process: started with one JSON
/// argument, it says `listening …` once serving, then answers one line per stdin command.
/// Stopped by `stop()` or deinit.
public final class PythonPeer: @unchecked Sendable {
    public let process = Process()
    /// The `listening …` line.
    public let listening: String
    private let input = Pipe()
    private let lines: LineReader

    public init(script: String, spec: String) throws {
        guard let python = pythonWithPymodbus() else { throw SimpleError("pymodbus not installed: run scripts/setup.sh") }
        let out = Pipe()
        process.executableURL = URL(fileURLWithPath: python)
        process.arguments = [packageRoot.appendingPathComponent("scripts/\(script)").path, spec]
        process.standardInput = input
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        lines = LineReader(out.fileHandleForReading)
        guard let first = lines.next(timeoutMs: 20_000), first.hasPrefix("listening ") else {
            kill(process.processIdentifier, SIGKILL)
            throw SimpleError("\(script) did not start")
        }
        listening = first
    }

    /// Sends one command; its reply line, or nil after 10 s.
    public func send(_ line: String) -> String? {
        input.fileHandleForWriting.write(Data((line + "\n").utf8))
        return lines.next(timeoutMs: 10_000)
    }

    /// Closes its stdin (it exits at end of input); SIGKILL if it has not gone within 5 s.
    public func stop() { stopChild(process, closing: input) }

    deinit { stop() }
}

/// A pymodbus PLC (scripts/pymodbus_plc.py) as a child process; stopped by `stop()` or deinit.
public final class PymodbusPLC: @unchecked Sendable {
    private let peer: PythonPeer
    public var process: Process { peer.process }
    public let port: Int

    /// Starts the child with `spec` (see the script) and waits for its `listening` line.
    public init(spec: String) throws {
        peer = try PythonPeer(script: "pymodbus_plc.py", spec: spec)
        guard let p = peer.listening.split(separator: ":").last.flatMap({ Int($0) }) else {
            peer.stop()
            throw SimpleError("pymodbus PLC did not start")
        }
        port = p
    }

    /// Sends one command and waits for its "ok".
    public func command(_ line: String) throws {
        guard peer.send(line) == "ok" else { throw SimpleError("pymodbus PLC: no ok for \(line)") }
    }

    public func stop() { peer.stop() }
}

/// Stops a child that exits at the end of its input: closes `input`, then SIGKILL if it has not
/// gone within 5 s. (SIGTERM is not used: children inherit the test runner's blocked-signal mask.)
public func stopChild(_ process: Process, closing input: Pipe) {
    guard process.isRunning else { return }
    try? input.fileHandleForWriting.close()
    let deadline = Date().addingTimeInterval(5)
    while process.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.02) }
    if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    process.waitUntilExit()
}

/// A small deterministic generator (SplitMix64), so a failing random test can be repeated by seed.
public struct SplitMix: RandomNumberGenerator, Sendable {
    public var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Reads lines from a pipe on a background thread, handing them over with a timeout.
public final class LineReader: @unchecked Sendable {
    private let cond = NSCondition()
    private var queue: [String] = []
    private var eof = false

    public init(_ handle: FileHandle) {
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
    public func next(timeoutMs: Int) -> String? {
        let deadline = Date().addingTimeInterval(Double(timeoutMs) / 1000)
        cond.lock(); defer { cond.unlock() }
        while queue.isEmpty && !eof {
            if !cond.wait(until: deadline) { return nil }
        }
        return queue.isEmpty ? nil : queue.removeFirst()
    }
}

public struct SimpleError: Error, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
}

/// A port nothing listens on (bound, read back and closed).
public func closedPort() -> Int {
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


/// Polls `condition` every 10 ms until it holds or `seconds` pass (a liveness bound, not a
/// timing test); sleeps without blocking a cooperative thread.
public func eventually(within seconds: Double = 10, _ condition: () -> Bool) async -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(10))
    }
    return condition()
}

/// The same as `eventually`, for code that cannot await: blocks the calling thread.
public func waitUntil(within seconds: Double = 10, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if condition() { return true }
        usleep(10_000)
    }
    return condition()
}

/// Runs blocking code (libmodbus calls, OPC UA requests) on a thread of its own, never the
/// cooperative pool.
public func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { (c: CheckedContinuation<T, Error>) in
        let t = Thread {
            do { c.resume(returning: try body()) } catch { c.resume(throwing: error) }
        }
        t.start()
    }
}

/// Sleeps without blocking a cooperative thread.
public func pause(_ ms: Int) async {
    try? await Task.sleep(for: .milliseconds(ms))
}

/// A value handed between threads under a lock.
public final class Locked<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: T
    public init(_ value: T) { self.value = value }
    public func get() -> T { lock.lock(); defer { lock.unlock() }; return value }
    public func set(_ v: T) { lock.lock(); value = v; lock.unlock() }
    public func update<R>(_ body: (inout T) -> R) -> R { lock.lock(); defer { lock.unlock() }; return body(&value) }
}

/// A TCP listener on 127.0.0.1 that accepts every connection and closes it at once (a gateway
/// out of sessions); counts the connections. Stopped by `stop()` (waits for its thread).
public final class SlammingListener: @unchecked Sendable {
    private let fd: Int32
    public let port: Int
    private let lock = NSLock()
    private var accepted = 0
    private var stopping = false
    private let done = DispatchSemaphore(value: 0)

    public init() throws {
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

    public var connections: Int { lock.lock(); defer { lock.unlock() }; return accepted }

    public func stop() {
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

/// Whether the other end of socket `fd` has closed it (EOF or reset), without waiting: reads
/// and discards whatever is already there.
public func peerHasClosed(_ fd: Int32) -> Bool {
    var buf = [UInt8](repeating: 0, count: 4096)
    while true {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, 0) > 0 else { return false }
        let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
        if n <= 0 { return true }
    }
}

/// A pseudo-terminal pair from socat (`pty,raw,echo=0`), as a null-modem cable between two
/// serial ports: `a` for the side under test, `b` for the peer. Stopped by `stop()` or deinit.
/// Pseudo-terminals refuse parity E/O here: tests run the line at 8N1.
public final class PtyPair: @unchecked Sendable {
    public let process = Process()
    public let directory: String
    public var a: String { directory + "/a" }
    public var b: String { directory + "/b" }

    public init() throws {
        var template = Array((NSTemporaryDirectory() + "tt-pty-XXXXXX").utf8CString)
        guard let dir = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw SimpleError("mkdtemp failed")
        }
        directory = String(cString: dir)
        process.executableURL = URL(fileURLWithPath: "/usr/bin/socat")
        process.arguments = ["pty,raw,echo=0,link=\(directory)/a", "pty,raw,echo=0,link=\(directory)/b"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        guard waitUntil(within: 10, { FileManager.default.fileExists(atPath: directory + "/a")
                                       && FileManager.default.fileExists(atPath: directory + "/b") }) else {
            stop()
            throw SimpleError("socat made no pty pair")
        }
    }

    public func stop() {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(atPath: directory)
    }

    deinit { stop() }
}

/// Several Modbus units behind one link (scripts/pymodbus_units.py): on a serial pty, behind a
/// one-connection TCP gateway, or RTU frames on TCP. Stopped by `stop()` or deinit.
public final class PymodbusUnits: @unchecked Sendable {
    private let peer: PythonPeer
    /// The TCP port (gateway, rtu-tcp), or 0 for a serial peer.
    public let port: Int

    /// `spec` as the script documents it; waits for its `listening` line.
    public init(spec: String) throws {
        peer = try PythonPeer(script: "pymodbus_units.py", spec: spec)
        port = Int(peer.listening.dropFirst("listening ".count)) ?? 0
    }

    /// Sends one command and waits for its "ok" (or, for `count`, returns the number).
    @discardableResult
    public func command(_ line: String) throws -> Int {
        guard let reply = peer.send(line) else { throw SimpleError("pymodbus units: no reply to \(line)") }
        if reply.hasPrefix("count "), let n = Int(reply.dropFirst(6)) { return n }
        guard reply == "ok" else { throw SimpleError("pymodbus units: \(reply) for \(line)") }
        return 0
    }

    public func stop() { peer.stop() }
}

/// Runs a program and returns (exit code, stdout).
public func runProcess(_ path: String, _ args: [String]) throws -> (Int32, String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: path)
    p.arguments = args
    let out = Pipe()
    p.standardOutput = out
    p.standardError = FileHandle.nullDevice
    try p.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: data, as: UTF8.self))
}
