import CLinux
import Foundation
import Synchronization
@testable import Modbus

#if canImport(Glibc)
import Glibc
import TestSupport
#endif

/// Something a test client could not do, with errno.
struct ClientFailure: Error, CustomStringConvertible {
    var what: String
    var errno: Int32
    var description: String { "\(what): \(ModbusError.errnoName(errno))" }
}

/// Collects a server's events (called on the server thread).
final class EventLog: Sendable {
    private let events = Mutex<[ModbusServerEvent]>([])
    func append(_ e: ModbusServerEvent) { events.withLock { $0.append(e) } }
    var all: [ModbusServerEvent] { events.withLock { $0 } }
    var sink: @Sendable (ModbusServerEvent) -> Void { { [self] in self.append($0) } }
}

/// A raw TCP client for frames libmodbus would never send.
final class RawClient: Sendable {
    let fd: Int32

    enum Received: Equatable {
        case bytes([UInt8])
        case closed
        case timeout
    }

    /// Connects to 127.0.0.1:`port`; `receiveBuffer` (bytes) is set before connecting, so a
    /// small one really limits what the server can push.
    init(port: Int, host: UInt32 = 0x7F00_0001, receiveBuffer: Int32? = nil) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        if fd < 0 { throw ClientFailure(what: "socket", errno: errno) }
        if var size = receiveBuffer {
            _ = setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        sin.sin_port = UInt16(port).bigEndian
        sin.sin_addr.s_addr = host.bigEndian
        let rc = withUnsafePointer(to: &sin) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if rc != 0 {
            let e = errno
            close(fd)
            throw ClientFailure(what: "connect", errno: e)
        }
        var one: Int32 = 1
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }

    deinit { close(fd) }

    func send(_ bytes: [UInt8]) throws {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + off, $0.count - off, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw ClientFailure(what: "send", errno: errno)
            }
            off += n
        }
    }

    /// Reads exactly `count` bytes, or reports the connection closed, or a timeout.
    func receive(_ count: Int, timeoutMs: Int = 5000) -> Received {
        var out: [UInt8] = []
        let deadline = Date().addingTimeInterval(Double(timeoutMs) / 1000)
        while out.count < count {
            let left = Int32(max(0, deadline.timeIntervalSinceNow * 1000))
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let r = poll(&p, 1, left)
            if r == 0 { return .timeout }
            if r < 0 { if errno == EINTR { continue }; return .closed }
            var buf = [UInt8](repeating: 0, count: count - out.count)
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
            if n == 0 { return .closed }
            if n < 0 { if errno == EINTR { continue }; return .closed }
            out += buf[0..<n]
        }
        return .bytes(out)
    }

    /// Reads one MBAP frame.
    func reply(timeoutMs: Int = 5000) -> Received {
        let h = receive(6, timeoutMs: timeoutMs)
        guard case .bytes(let head) = h else { return h }
        let len = Int(head[4]) << 8 | Int(head[5])
        switch receive(len, timeoutMs: timeoutMs) {
        case .bytes(let body): return .bytes(head + body)
        case let other: return other
        }
    }

    /// Whether the server closes the connection within the time given (reading and discarding
    /// anything it still sends).
    func waitClosed(timeoutMs: Int = 5000) -> Bool {
        let deadline = Date().addingTimeInterval(Double(timeoutMs) / 1000)
        while Date() < deadline {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let r = poll(&p, 1, 50)
            if r > 0 {
                var buf = [UInt8](repeating: 0, count: 512)
                let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
                if n <= 0 { return true }
            }
        }
        return false
    }
}

/// A libmodbus client (the reference peer), blocking; use it from one thread.
final class LibmodbusClient {
    let client: LibmodbusBaselineClient

    init(port: Int, host: String = "127.0.0.1", unit: Int32 = 1, timeoutMs: UInt32 = 2000) throws {
        client = try LibmodbusBaselineClient(host: host, port: port, unit: unit, responseTimeoutMs: timeoutMs)
        if client.connect() != 0 { throw ClientFailure(what: "modbus_connect", errno: client.lastErrno) }
    }

    func readBits(_ address: Int, _ count: Int, discrete: Bool = false) throws -> [UInt8] {
        var out = [UInt8](repeating: 0xEE, count: count)
        let rc = client.readBits(address, count, into: &out, discrete: discrete)
        if rc != count { throw ClientFailure(what: discrete ? "modbus_read_input_bits" : "modbus_read_bits", errno: client.lastErrno) }
        return out
    }

    func readRegisters(_ address: Int, _ count: Int, input: Bool = false) throws -> [UInt16] {
        var out = [UInt16](repeating: 0xEEEE, count: count)
        let rc = client.readRegisters(address, count, into: &out, input: input)
        if rc != count { throw ClientFailure(what: input ? "modbus_read_input_registers" : "modbus_read_registers", errno: client.lastErrno) }
        return out
    }

    /// errno of a failed call (`MODBUS_ENOBASE + code` for an exception), 0 on success.
    func errnoOf(_ call: (LibmodbusBaselineClient) -> Int32) -> Int32 {
        call(client) < 0 ? client.lastErrno : 0
    }
}

/// A flag one thread sets and another polls.
final class StopFlag: Sendable {
    private let flag = Mutex(false)
    var isSet: Bool { flag.withLock { $0 } }
    func set() { flag.withLock { $0 = true } }
}

/// A client on its own thread reading coils the whole time, counting reads and failures: the
/// "second client" that must see no error while others misbehave.
final class Watcher: Sendable {
    private struct Stats {
        var reads = 0
        var failures: [String] = []
        var stop = false
        var done = false
        var maxMs = 0.0
    }
    private let stats = Mutex(Stats())

    init(port: Int, coils: Int) {
        let thread = Thread { [self] in
            let client: LibmodbusClient
            do {
                client = try LibmodbusClient(port: port, timeoutMs: 3000)
            } catch {
                stats.withLock { $0.failures.append("\(error)"); $0.done = true }
                return
            }
            while !stats.withLock({ $0.stop }) {
                let t0 = Date()
                do {
                    _ = try client.readBits(0, coils)
                    let ms = Date().timeIntervalSince(t0) * 1000
                    stats.withLock { $0.reads += 1; $0.maxMs = max($0.maxMs, ms) }
                } catch {
                    stats.withLock { $0.failures.append("\(error)") }
                }
                usleep(2000)
            }
            stats.withLock { $0.done = true }
        }
        thread.start()
    }

    var reads: Int { stats.withLock { $0.reads } }
    var failures: [String] { stats.withLock { $0.failures } }
    var maxMs: Double { stats.withLock { $0.maxMs } }

    /// Stops the thread and waits for it (bounded).
    func finish() {
        stats.withLock { $0.stop = true }
        _ = waitUntil(within: 10) { stats.withLock { $0.done } }
    }
}

/// The image most server tests serve: 17 coils with a pattern, registers 100 + address.
let sampleImage = ModbusImage(
    coils: (0..<17).map { UInt8($0 % 3 == 0 ? 1 : 0) },
    discreteInputs: (0..<17).map { UInt8($0 % 3 == 0 ? 1 : 0) },
    holdingRegisters: (0..<32).map { UInt16(100 + $0) },
    inputRegisters: (0..<32).map { UInt16(100 + $0) })

/// An image with the most registers one read can ask for (125), for large replies.
let bigImage = ModbusImage(coils: [1], discreteInputs: [1], holdingRegisters: (0..<125).map { UInt16(100 + $0) },
                           inputRegisters: [0])

/// Starts a server on 127.0.0.1 port 0 and always stops it, also when the body throws.
@discardableResult
func withServer<R>(image: ModbusImage = sampleImage, events: EventLog? = nil,
                   _ configure: (inout ModbusServer.Configuration) -> Void = { _ in },
                   _ body: (ModbusServer) async throws -> R) async throws -> R {
    var config = ModbusServer.Configuration(host: "127.0.0.1", port: 0, threadName: "test-server")
    configure(&config)
    let log = events ?? EventLog()
    let sink = log.sink
    let server = try ModbusServer(configuration: config, image: image, events: sink)
    try server.start()
    defer {
        server.stop()
        server.join()
    }
    return try await body(server)
}
