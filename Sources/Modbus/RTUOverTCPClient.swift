import CLinux
import CModbus
import Platform

#if canImport(Glibc)
import Glibc
#endif

/// Modbus RTU frames on a TCP connection (`framing: rtu`), as cheap serial/Ethernet gateways
/// speak it. libmodbus has no backend for it, so the frames are built and checked here
/// (`RTUFrame`): CRC-16/MODBUS, the answer's length from its function code, exception answers.
///
/// RTU frames carry no transaction id, so an answer that arrives after its timeout could be
/// taken for the answer to the next request of the same unit and function. The connection is
/// therefore closed after a timeout and after every malformed answer, shared link or not: the
/// next request starts on a fresh stream.
///
/// Thread confinement: not `Sendable`; every call blocks for up to the response timeout.
public final class RTUOverTCPClient: ModbusLinkClient {
    public let host: String
    public let port: Int
    public private(set) var unit: Int
    public private(set) var responseTimeoutMs: Int
    public private(set) var byteTimeoutMs: Int?
    public private(set) var isConnected = false
    public let endpoint: String
    private var fd: Int32 = -1

    public init(host: String, port: Int, unit: Int = 1, responseTimeoutMs: Int = 500, byteTimeoutMs: Int? = nil) {
        self.host = host
        self.port = port
        self.unit = unit
        self.responseTimeoutMs = responseTimeoutMs
        self.byteTimeoutMs = byteTimeoutMs
        endpoint = (host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)") + " (rtu)"
    }

    deinit { close() }

    public func setUnit(_ unit: Int) throws(ModbusError) {
        guard (0...255).contains(unit) else {
            throw ModbusError(kind: .other, errno: EINVAL, function: "rtu_set_unit", unit: unit, endpoint: endpoint)
        }
        self.unit = unit
    }

    public func setTimeouts(responseMs: Int, byteMs: Int?) throws(ModbusError) {
        responseTimeoutMs = max(responseMs, 1)
        byteTimeoutMs = byteMs
    }

    /// Connects (non-blocking connect, waiting at most `timeoutMs`, default the response timeout).
    public func connect(timeoutMs: Int? = nil) throws(ModbusError) {
        close()
        func fail(_ function: String, _ e: Int32, _ kind: ModbusError.Kind = .connect) -> ModbusError {
            ModbusError(kind: kind, errno: e, function: function, unit: unit, endpoint: endpoint)
        }
        guard let address = NetAddress(host: host, port: port) else {
            var e = fail("rtu_connect", ECONNREFUSED)
            e.resolveFailure = NetAddress.resolveFailure(host) ?? "no address"
            throw e
        }
        let s = socket(address.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard s >= 0 else { throw fail("socket", errno) }
        var one: Int32 = 1
        _ = setsockopt(s, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        let rc = address.withSockaddr { Glibc.connect(s, $0, $1) }
        if rc != 0 {
            let e = errno
            guard e == EINPROGRESS else { Glibc.close(s); throw fail("connect", e) }
            var p = pollfd(fd: s, events: Int16(POLLOUT), revents: 0)
            let n = Self.pollRetrying(&p, timeoutMs: timeoutMs ?? responseTimeoutMs)
            if n == 0 { Glibc.close(s); throw fail("connect", ETIMEDOUT) }
            var err: Int32 = 0
            var len = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &len)
            if n < 0 || err != 0 { Glibc.close(s); throw fail("connect", n < 0 ? errno : err) }
        }
        fd = s
        isConnected = true
    }

    public func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
        isConnected = false
    }

    public func readRegisters(table: ModbusTable, address: Int, count: Int,
                              into buffer: UnsafeMutableBufferPointer<UInt16>) throws(ModbusError) {
        let data = try exchange(table: table, address: address, count: count, capacity: buffer.count, bitTable: false)
        let b = data.startIndex
        for i in 0..<count { buffer[i] = UInt16(data[b + 2 * i]) << 8 | UInt16(data[b + 2 * i + 1]) }
    }

    public func readBits(table: ModbusTable, address: Int, count: Int,
                         into buffer: UnsafeMutableBufferPointer<UInt8>) throws(ModbusError) {
        let data = try exchange(table: table, address: address, count: count, capacity: buffer.count, bitTable: true)
        let b = data.startIndex
        for i in 0..<count { buffer[i] = (data[b + i / 8] >> UInt8(i % 8)) & 1 }
    }

    /// One request and its answer's data bytes; closes the connection on anything but an exception.
    private func exchange(table: ModbusTable, address: Int, count: Int, capacity: Int,
                          bitTable: Bool) throws(ModbusError) -> ArraySlice<UInt8> {
        let function = "rtu_read_\(table.rawValue)"
        func fail(_ kind: ModbusError.Kind, _ e: Int32) -> ModbusError {
            ModbusError(kind: kind, errno: e, function: function, unit: unit, table: table.rawValue,
                        address: address, count: count, endpoint: endpoint)
        }
        guard table.isBitTable == bitTable, count >= 1, count <= table.maxReadCount, capacity >= count,
              address >= 0, address + count <= 65536, (0...255).contains(unit) else { throw fail(.other, EINVAL) }
        guard isConnected else { throw fail(.notConnected, ENOTCONN) }
        let fc = table.readFunction
        let request = RTUFrame.readRequest(unit: UInt8(unit), function: fc, address: UInt16(address), count: UInt16(count))
        do throws(PartialWrite) {
            try SystemCall.sendAll(fd, request)
        } catch {
            close()
            throw fail(.connectionLost, error.errno.rawValue)
        }
        // The answer: read until its length (from the function code and byte count) is known
        // and reached, within the response timeout (and the byte timeout between bytes).
        let deadline = monotonicNowNs() + Int64(responseTimeoutMs) * 1_000_000
        var frame: [UInt8] = []
        frame.reserveCapacity(256)
        var need: Int? = nil
        while need == nil || frame.count < need! {
            var waitMs = Int((deadline - monotonicNowNs() + 999_999) / 1_000_000)
            if let b = byteTimeoutMs, !frame.isEmpty { waitMs = b }
            if waitMs <= 0 { close(); throw fail(.timeout, ETIMEDOUT) }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let n = Self.pollRetrying(&p, timeoutMs: waitMs)
            if n == 0 {
                if byteTimeoutMs != nil || monotonicNowNs() >= deadline { close(); throw fail(.timeout, ETIMEDOUT) }
                continue
            }
            if n < 0 { let e = errno; close(); throw fail(.connectionLost, e) }
            var chunk = [UInt8](repeating: 0, count: 260 - frame.count)
            let got = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, need.map { max($0 - frame.count, 1) } ?? 3, 0) }
            if got == 0 { close(); throw fail(.connectionLost, ECONNRESET) }
            if got < 0 {
                let e = errno
                if e == EINTR || e == EAGAIN { continue }
                close()
                throw fail(.connectionLost, e)
            }
            frame += chunk[..<got]
            if need == nil, let n = RTUFrame.answerLength(frame[...]) {
                if n < 0 { close(); throw fail(.badResponse, CModbus_EMBBADDATA()) }
                need = n
            }
        }
        guard RTUFrame.crcMatches(frame) else { close(); throw fail(.badResponse, CModbus_EMBBADCRC()) }
        guard frame[0] == UInt8(unit) else { close(); throw fail(.badResponse, CModbus_EMBBADSLAVE()) }
        if frame[1] == fc | 0x80 {
            throw fail(.exception(frame[2]), CModbus_ENOBASE() + Int32(frame[2]))
        }
        let expected = bitTable ? (count + 7) / 8 : 2 * count
        guard frame[1] == fc, Int(frame[2]) == expected else { close(); throw fail(.badResponse, CModbus_EMBBADDATA()) }
        return frame[3..<(3 + expected)]  // indices 3…: callers read from startIndex
    }

    private static func pollRetrying(_ p: inout pollfd, timeoutMs: Int) -> Int32 {
        while true {
            let n = poll(&p, 1, Int32(clamping: timeoutMs))
            if n < 0 && errno == EINTR { continue }
            return n
        }
    }
}
