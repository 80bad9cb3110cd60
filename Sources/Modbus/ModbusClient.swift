import CModbus
import Platform

#if canImport(Glibc)
import Glibc
#endif

/// The four Modbus data tables, as the Modbus layer names them (the core has its own
/// `RegisterTable`; this module knows nothing of maps).
public enum ModbusTable: String, Sendable, Hashable, CaseIterable {
    case holding, input, coil, discrete

    /// Coils and discrete inputs hold bits; holding and input registers hold 16-bit words.
    public var isBitTable: Bool { self == .coil || self == .discrete }

    /// The most values one read of this table may ask for (125 registers, 2000 bits).
    public var maxReadCount: Int {
        isBitTable ? Int(MODBUS_MAX_READ_BITS) : Int(MODBUS_MAX_READ_REGISTERS)
    }

    /// The Modbus function code that reads this table (1 coils, 2 discrete inputs, 3 holding
    /// registers, 4 input registers).
    public var readFunction: UInt8 {
        switch self {
        case .coil: return 1
        case .discrete: return 2
        case .holding: return 3
        case .input: return 4
        }
    }

    /// The table a read function code (1–4) reads; nil for any other function.
    public init?(readFunction: UInt8) {
        switch readFunction {
        case 1: self = .coil
        case 2: self = .discrete
        case 3: self = .holding
        case 4: self = .input
        default: return nil
        }
    }
}

/// A Modbus/TCP client over one libmodbus context: one persistent connection to one PLC.
///
/// Thread confinement: a `ModbusClient` is not `Sendable` and libmodbus contexts are not
/// thread-safe. Create, use and drop it on one thread (a poll worker), never on Swift's
/// cooperative pool: every call blocks for up to the response timeout.
///
/// Error recovery stays `MODBUS_ERROR_RECOVERY_NONE`; reconnection is explicit. After a
/// timeout, a broken connection or a response that does not match its request, the connection
/// is closed, so a late answer can never be taken for the answer to the next request.
public final class ModbusClient {
    public let host: String
    public let port: Int
    /// The unit id (slave address) sent with every request.
    public private(set) var unit: Int
    /// The bound on one request's whole answer (byte timeout disabled), and on connecting.
    public private(set) var responseTimeoutMs: Int
    /// Gap allowed between two bytes of one answer; `nil` (default) disables it so that the
    /// response timeout bounds the whole answer.
    public private(set) var byteTimeoutMs: Int?
    /// Whether the connection is open (as far as this side knows).
    public private(set) var isConnected = false
    /// `host:port`, for error messages.
    public var endpoint: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    private let ctx: OpaquePointer

    /// Creates a client for `host:port` (a name or a numeric IPv4/IPv6 address); does not connect.
    /// The corresponding C function is `modbus_new_tcp_pi`.
    public init(host: String, port: Int, unit: Int = 1, responseTimeoutMs: Int = 500,
                byteTimeoutMs: Int? = nil) throws(ModbusError) {
        self.host = host
        self.port = port
        self.unit = unit
        self.responseTimeoutMs = responseTimeoutMs
        self.byteTimeoutMs = byteTimeoutMs
        guard (1...65535).contains(port) else {
            throw ModbusError(kind: .other, errno: EINVAL, function: "modbus_new_tcp_pi",
                              unit: unit, endpoint: "\(host):\(port)")
        }
        errno = 0
        guard let c = modbus_new_tcp_pi(host, String(port)) else {
            let e = errno
            throw ModbusError(kind: .other, errno: e == 0 ? ENOMEM : e, function: "modbus_new_tcp_pi",
                              unit: unit, endpoint: "\(host):\(port)")
        }
        ctx = c
        do {
            try call("modbus_set_error_recovery") {
                modbus_set_error_recovery(ctx, MODBUS_ERROR_RECOVERY_NONE)
            }
            try setUnit(unit)
            try setTimeouts(responseMs: responseTimeoutMs, byteMs: byteTimeoutMs)
        } catch {
            modbus_free(c)
            throw error
        }
    }

    deinit {
        modbus_close(ctx)
        modbus_free(ctx)
    }

    /// Sets the unit id sent with every request (0…247, or 255 for "this device" on TCP).
    /// The corresponding C function is `modbus_set_slave`.
    public func setUnit(_ unit: Int) throws(ModbusError) {
        try call("modbus_set_slave") { modbus_set_slave(ctx, Int32(truncatingIfNeeded: unit)) }
        self.unit = unit
    }

    /// Sets the response timeout (whole answer, and connect) and the optional byte timeout.
    /// The corresponding C functions are `modbus_set_response_timeout` and `modbus_set_byte_timeout`.
    public func setTimeouts(responseMs: Int, byteMs: Int?) throws(ModbusError) {
        try applyResponseTimeout(ms: responseMs)
        let b = max(byteMs ?? 0, 0)
        try call("modbus_set_byte_timeout") {
            modbus_set_byte_timeout(ctx, UInt32(b / 1000), UInt32((b % 1000) * 1000))
        }
        responseTimeoutMs = responseMs
        byteTimeoutMs = byteMs
    }

    private func applyResponseTimeout(ms: Int) throws(ModbusError) {
        // libmodbus refuses 0/0; one microsecond is its smallest timeout.
        let t = max(ms, 0)
        let sec = UInt32(t / 1000), usec = UInt32((t % 1000) * 1000)
        try call("modbus_set_response_timeout") {
            modbus_set_response_timeout(ctx, sec, sec == 0 && usec == 0 ? 1 : usec)
        }
    }

    /// Opens the TCP connection, waiting at most `timeoutMs` (default: the response timeout).
    /// Closes any previous connection first. A connect timeout is reported as kind `.connect`
    /// (libmodbus 3.1.6 leaves errno `EINPROGRESS`, later versions `ETIMEDOUT`).
    /// The corresponding C function is `modbus_connect`.
    public func connect(timeoutMs: Int? = nil) throws(ModbusError) {
        close()
        if let timeoutMs, timeoutMs != responseTimeoutMs { try applyResponseTimeout(ms: timeoutMs) }
        defer {
            if let timeoutMs, timeoutMs != responseTimeoutMs { try? applyResponseTimeout(ms: responseTimeoutMs) }
        }
        errno = 0
        let rc = modbus_connect(ctx)
        let e = errno
        if rc == -1 {
            modbus_close(ctx)
            var error = ModbusError(kind: .connect, errno: e, function: "modbus_connect", unit: unit, endpoint: endpoint)
            // libmodbus resolves the name at every connect and reports a name that does not
            // resolve as ECONNREFUSED; say what really happened.
            if e == ECONNREFUSED { error.resolveFailure = NetAddress.resolveFailure(host) }
            throw error
        }
        // libmodbus waits in select(): a descriptor at or above FD_SETSIZE would abort the
        // process on the next call. Refuse it here (the soft RLIMIT_NOFILE cap normally
        // prevents it: see `DescriptorLimit`).
        let s = modbus_get_socket(ctx)
        if s >= CModbus_FD_SETSIZE() {
            modbus_close(ctx)
            throw ModbusError(kind: .connect, errno: EMFILE, function: "modbus_connect", unit: unit, endpoint: endpoint)
        }
        isConnected = true
    }

    /// Closes the connection, if open; the next request needs `connect()` first.
    /// The corresponding C function is `modbus_close`.
    public func close() {
        if isConnected { modbus_close(ctx) }
        isConnected = false
    }

    /// The socket descriptor, or -1 when not connected. The corresponding C function is `modbus_get_socket`.
    public var socket: Int32 { isConnected ? modbus_get_socket(ctx) : -1 }

    /// Reads `count` holding or input registers starting at the 0-based `address` into
    /// `buffer` (which must hold at least `count`). The corresponding C functions are
    /// `modbus_read_registers` (FC 3) and `modbus_read_input_registers` (FC 4).
    public func readRegisters(table: ModbusTable, address: Int, count: Int,
                              into buffer: UnsafeMutableBufferPointer<UInt16>) throws(ModbusError) {
        let function = table == .input ? "modbus_read_input_registers" : "modbus_read_registers"
        try checkRequest(function: function, table: table, address: address, count: count,
                         capacity: buffer.count, bitTable: false)
        try transfer(function: function, table: table, address: address, count: count) {
            table == .input
                ? modbus_read_input_registers(ctx, Int32(address), Int32(count), buffer.baseAddress)
                : modbus_read_registers(ctx, Int32(address), Int32(count), buffer.baseAddress)
        }
    }

    /// Reads `count` holding or input registers starting at `address`.
    public func readRegisters(table: ModbusTable, address: Int, count: Int) throws(ModbusError) -> [UInt16] {
        var out = [UInt16](repeating: 0, count: max(count, 0))
        var failure: ModbusError?
        out.withUnsafeMutableBufferPointer { buf in
            do throws(ModbusError) { try readRegisters(table: table, address: address, count: count, into: buf) }
            catch { failure = error }
        }
        if let failure { throw failure }
        return out
    }

    /// Reads `count` coils or discrete inputs starting at `address` into `buffer`, one byte
    /// (0 or 1) per bit. The corresponding C functions are `modbus_read_bits` (FC 1) and
    /// `modbus_read_input_bits` (FC 2).
    public func readBits(table: ModbusTable, address: Int, count: Int,
                         into buffer: UnsafeMutableBufferPointer<UInt8>) throws(ModbusError) {
        let function = table == .discrete ? "modbus_read_input_bits" : "modbus_read_bits"
        try checkRequest(function: function, table: table, address: address, count: count,
                         capacity: buffer.count, bitTable: true)
        try transfer(function: function, table: table, address: address, count: count) {
            table == .discrete
                ? modbus_read_input_bits(ctx, Int32(address), Int32(count), buffer.baseAddress)
                : modbus_read_bits(ctx, Int32(address), Int32(count), buffer.baseAddress)
        }
    }

    /// Reads `count` coils or discrete inputs starting at `address`, one byte (0 or 1) per bit.
    public func readBits(table: ModbusTable, address: Int, count: Int) throws(ModbusError) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: max(count, 0))
        var failure: ModbusError?
        out.withUnsafeMutableBufferPointer { buf in
            do throws(ModbusError) { try readBits(table: table, address: address, count: count, into: buf) }
            catch { failure = error }
        }
        if let failure { throw failure }
        return out
    }

    /// Writes one holding register (FC 6), for tests and commissioning tools.
    /// The corresponding C function is `modbus_write_register`.
    public func writeRegister(address: Int, value: UInt16) throws(ModbusError) {
        try checkRequest(function: "modbus_write_register", table: .holding, address: address, count: 1,
                         capacity: 1, bitTable: false)
        try transfer(function: "modbus_write_register", table: .holding, address: address, count: 1) {
            modbus_write_register(ctx, Int32(address), value)
        }
    }

    /// Writes one coil (FC 5): the demo and the tests use it to show that the interlock refuses
    /// writes. The corresponding C function is `modbus_write_bit`.
    public func writeBit(address: Int, value: Bool) throws(ModbusError) {
        try checkRequest(function: "modbus_write_bit", table: .coil, address: address, count: 1,
                         capacity: 1, bitTable: true)
        try transfer(function: "modbus_write_bit", table: .coil, address: address, count: 1) {
            modbus_write_bit(ctx, Int32(address), value ? 1 : 0)
        }
    }

    private func checkRequest(function: String, table: ModbusTable, address: Int, count: Int,
                              capacity: Int, bitTable: Bool) throws(ModbusError) {
        guard table.isBitTable == bitTable, count >= 1, count <= table.maxReadCount, capacity >= count,
              address >= 0, address + count <= 65536 else {
            throw ModbusError(kind: .other, errno: EINVAL, function: function, unit: unit,
                              table: table.rawValue, address: address, count: count, endpoint: endpoint)
        }
        guard isConnected else {
            throw ModbusError(kind: .notConnected, errno: ENOTCONN, function: function, unit: unit,
                              table: table.rawValue, address: address, count: count, endpoint: endpoint)
        }
    }

    /// Runs one request/answer exchange, reads errno right after it, and closes the connection
    /// on every failure that leaves the stream in an unknown state (all but a Modbus exception).
    @inline(__always)
    private func transfer(function: String, table: ModbusTable, address: Int, count: Int,
                          _ body: () -> Int32) throws(ModbusError) {
        errno = 0
        let rc = body()
        if rc != -1 { return }
        let e = errno
        let kind = ModbusError.classify(errno: e)
        if case .exception = kind {} else { close() }
        throw ModbusError(kind: kind, errno: e, function: function, unit: unit, table: table.rawValue,
                          address: address, count: count, endpoint: endpoint)
    }

    /// The one helper for configuration calls: runs `body`, reads errno immediately on -1.
    @inline(__always)
    private func call(_ function: String, _ body: () -> Int32) throws(ModbusError) {
        errno = 0
        if body() == -1 {
            let e = errno
            throw ModbusError(kind: .other, errno: e, function: function, unit: unit, endpoint: endpoint)
        }
    }
}

extension ModbusError {
    /// The kind of a failed request, from errno: exception replies are
    /// `MODBUS_ENOBASE + code`; `ETIMEDOUT` is a timeout; a reset, closed or broken socket is a
    /// lost connection; anything libmodbus rejects in the answer is a bad response.
    public static func classify(errno e: Int32) -> Kind {
        let base = CModbus_ENOBASE()
        if e > base && e <= CModbus_EMBXGTAR() { return .exception(UInt8(e - base)) }
        if e > base { return .badResponse }
        switch e {
        case ETIMEDOUT, EAGAIN: return .timeout
        case ECONNRESET, EPIPE, EBADF, ENOTCONN, ECONNABORTED, ECONNREFUSED, ESHUTDOWN,
             EHOSTUNREACH, ENETUNREACH, ENETDOWN: return .connectionLost
        default: return .other
        }
    }

    /// Whether the failure is the process running out of file descriptors (`EMFILE`, `ENFILE`):
    /// see `DescriptorLimit`.
    public var isDescriptorExhaustion: Bool { errno == EMFILE || errno == ENFILE }
}

/// The process-wide descriptor cap that keeps libmodbus safe.
///
/// libmodbus 3.1.6 waits in `select()`, which aborts the process for a descriptor ≥ 1024
/// (`FD_SETSIZE`). With the soft `RLIMIT_NOFILE` at 1024 the kernel answers `EMFILE` instead,
/// which surfaces as a typed `ModbusError` (`isDescriptorExhaustion`).
public enum DescriptorLimit {
    /// Lowers the soft `RLIMIT_NOFILE` to `FD_SETSIZE` (1024) if it is higher, and returns the
    /// limit now in force. Call once at process start, before opening connections.
    /// The corresponding C function is `setrlimit`.
    @discardableResult
    public static func capForSelect() throws(ModbusError) -> Int {
        var lim = rlimit()
        errno = 0
        if getrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim) != 0 {
            throw ModbusError(kind: .other, errno: errno, function: "getrlimit")
        }
        let cap = rlim_t(CModbus_FD_SETSIZE())
        if lim.rlim_cur > cap {  // RLIM_INFINITY is the largest value
            lim.rlim_cur = cap
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim) != 0 {
                throw ModbusError(kind: .other, errno: errno, function: "setrlimit")
            }
        }
        return Int(lim.rlim_cur)
    }
}
