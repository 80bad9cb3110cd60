// SOCK_STREAM/MSG_NOSIGNAL: depending on build order the clang importer credits them to another C
// module than Glibc; importing the project's Linux shim as well keeps the lookup independent of that.
import CLinux
import Dispatch
import Foundation
import Modbus
import Synchronization

#if canImport(Glibc)
import Glibc
import TestSupport
#endif


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
