import Foundation

#if canImport(Glibc)
import Glibc
import TestSupport
#endif

/// What the test client could not do.
struct TestClientError: Error, CustomStringConvertible {
    var what: String
    var description: String { what }
}

/// A minimal blocking Modbus/TCP client over a plain socket, for reading the interlock in tests
/// (pymodbus and mbpoll give the outside opinion; this one keeps the tests quick).
final class ApplianceModbusClient {
    let fd: Int32
    private var tid: UInt16 = 0

    init(port: Int, host: UInt32 = 0x7F00_0001, timeoutMs: Int = 3000) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        if fd < 0 { throw TestClientError(what: "socket: errno \(errno)") }
        var tv = timeval(tv_sec: timeoutMs / 1000, tv_usec: Int(timeoutMs % 1000) * 1000)
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
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
            throw TestClientError(what: "connect: errno \(e)")
        }
    }

    deinit { close(fd) }

    /// Sends one request PDU and returns the reply PDU; a Modbus exception throws.
    func request(_ pdu: [UInt8], unit: UInt8 = 1) throws -> [UInt8] {
        tid &+= 1
        let len = pdu.count + 1
        let frame = [UInt8(tid >> 8), UInt8(tid & 0xFF), 0, 0, UInt8(len >> 8), UInt8(len & 0xFF), unit] + pdu
        let sent = frame.withUnsafeBytes { send(fd, $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL)) }
        if sent != frame.count { throw TestClientError(what: "send failed") }
        let head = try receive(6)
        let body = try receive(Int(head[4]) << 8 | Int(head[5]))
        if head[0] != UInt8(tid >> 8) || head[1] != UInt8(tid & 0xFF) { throw TestClientError(what: "wrong tid") }
        if body[1] & 0x80 != 0 { throw TestClientError(what: "exception \(body.count > 2 ? body[2] : 0)") }
        return Array(body.dropFirst())
    }

    private func receive(_ n: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: n)
        var got = 0
        while got < n {
            let r = out.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + got, n - got, 0) }
            if r == 0 { throw TestClientError(what: "connection closed") }
            if r < 0 {
                if errno == EINTR { continue }
                throw TestClientError(what: "recv: errno \(errno)")
            }
            got += r
        }
        return out
    }

    func readBits(_ address: Int, _ count: Int, discrete: Bool = false, unit: UInt8 = 1) throws -> [UInt8] {
        let pdu = try request([discrete ? 2 : 1, UInt8(address >> 8), UInt8(address & 0xFF), UInt8(count >> 8), UInt8(count & 0xFF)],
                              unit: unit)
        return (0..<count).map { (pdu[2 + $0 / 8] >> UInt8($0 % 8)) & 1 }
    }

    func readRegisters(_ address: Int, _ count: Int, input: Bool = false) throws -> [UInt16] {
        let pdu = try request([input ? 4 : 3, UInt8(address >> 8), UInt8(address & 0xFF), UInt8(count >> 8), UInt8(count & 0xFF)])
        return (0..<count).map { UInt16(pdu[2 + 2 * $0]) << 8 | UInt16(pdu[3 + 2 * $0]) }
    }
}
