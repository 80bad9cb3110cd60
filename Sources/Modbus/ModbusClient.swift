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

/// A Modbus client over one libmodbus context: one persistent Modbus/TCP connection, or one
/// open serial port (Modbus RTU), to one PLC or one link shared by several units.
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
    /// `host:port`, or the serial device path, for error messages.
    public let endpoint: String
    /// The serial line, for a Modbus RTU client; nil for Modbus/TCP.
    public let serial: SerialPortSettings?
    /// Keep the connection open after a timeout and discard whatever arrives late instead
    /// (`modbus_flush`): for links shared by several units, where one silent unit must not
    /// cost its neighbours a reconnect. A late answer that still slips through fails the next
    /// request (wrong transaction id or unit), never passes as its answer. Always on for serial
    /// ports, which have no connection to lose.
    public var keepsConnectionOnTimeout: Bool

    private let ctx: OpaquePointer
    /// When the last frame on a serial line ended (monotonic ns), for the t3.5 silence.
    private var lastFrameEndNs: Int64 = 0
    /// A request failed without a clean answer: discard what arrived since before the next one.
    private var flushBeforeNext = false

    /// Creates a client for `host:port` (a name or a numeric IPv4/IPv6 address); does not connect.
    /// The corresponding C function is `modbus_new_tcp_pi`.
    public init(host: String, port: Int, unit: Int = 1, responseTimeoutMs: Int = 500,
                byteTimeoutMs: Int? = nil) throws(ModbusError) {
        self.host = host
        self.port = port
        self.unit = unit
        self.responseTimeoutMs = responseTimeoutMs
        self.byteTimeoutMs = byteTimeoutMs
        self.serial = nil
        self.keepsConnectionOnTimeout = false
        self.endpoint = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
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
        try configureNew()
    }

    /// Creates a Modbus RTU client on a serial port; does not open it. `byteTimeoutMs` bounds
    /// the silence between two bytes of one answer (with it set, `responseTimeoutMs` bounds
    /// only the first byte). The corresponding C function is `modbus_new_rtu`.
    public init(serial: SerialPortSettings, unit: Int = 1, responseTimeoutMs: Int = 500,
                byteTimeoutMs: Int? = nil) throws(ModbusError) {
        self.host = serial.device
        self.port = 0
        self.unit = unit
        self.responseTimeoutMs = responseTimeoutMs
        self.byteTimeoutMs = byteTimeoutMs
        self.serial = serial
        self.keepsConnectionOnTimeout = true
        self.endpoint = serial.device
        guard [5, 6, 7, 8].contains(serial.dataBits), [1, 2].contains(serial.stopBits), serial.baud > 0 else {
            throw ModbusError(kind: .other, errno: EINVAL, function: "modbus_new_rtu", unit: unit, endpoint: serial.device)
        }
        errno = 0
        let parity = CChar(UInt8(ascii: serial.parity.rawValue.unicodeScalars.first!))
        guard let c = modbus_new_rtu(serial.device, Int32(serial.baud), parity, Int32(serial.dataBits),
                                     Int32(serial.stopBits)) else {
            let e = errno
            throw ModbusError(kind: .other, errno: e == 0 ? EINVAL : e, function: "modbus_new_rtu",
                              unit: unit, endpoint: serial.device)
        }
        ctx = c
        try configureNew()
    }

    /// The settings every new context gets: no libmodbus error recovery (reconnection is
    /// explicit), the unit id, the timeouts. If one fails the initializer throws with every
    /// property set, so `deinit` runs and frees the context (freeing it here too would free it
    /// twice).
    private func configureNew() throws(ModbusError) {
        try call("modbus_set_error_recovery") {
            modbus_set_error_recovery(ctx, MODBUS_ERROR_RECOVERY_NONE)
        }
        try setUnit(unit)
        try setTimeouts(responseMs: responseTimeoutMs, byteMs: byteTimeoutMs)
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
        if let serial {
            do throws(ModbusError) {
                try configureLine(serial, fd: s)
            } catch {
                modbus_close(ctx)
                throw error
            }
            lastFrameEndNs = monotonicNowNs()
        }
        isConnected = true
    }

    /// RS-485 mode and RTS control, only when asked for: a port that cannot do them (a USB
    /// adapter without RS-485 support, a pseudo-terminal) is refused with the call and errno
    /// that failed, never half set up. The corresponding C functions are
    /// `modbus_rtu_set_serial_mode`, `modbus_rtu_set_rts` and `modbus_rtu_set_rts_delay`.
    private func configureLine(_ serial: SerialPortSettings, fd: Int32) throws(ModbusError) {
        func fail(_ function: String, _ e: Int32) -> ModbusError {
            ModbusError(kind: .connect, errno: e, function: function, unit: unit, endpoint: endpoint)
        }
        if serial.rs485 {
            errno = 0
            if modbus_rtu_set_serial_mode(ctx, MODBUS_RTU_RS485) == -1 {
                throw fail("modbus_rtu_set_serial_mode", errno)
            }
        }
        if let rts = serial.rts {
            // libmodbus switches RTS with an ioctl whose failure it ignores: check first that
            // the port has modem control at all.
            var bits: Int32 = 0
            errno = 0
            if CModbus_get_modem_bits(fd, &bits) == -1 { throw fail("ioctl(TIOCMGET)", errno) }
            errno = 0
            if modbus_rtu_set_rts(ctx, rts == .up ? MODBUS_RTU_RTS_UP : MODBUS_RTU_RTS_DOWN) == -1 {
                throw fail("modbus_rtu_set_rts", errno)
            }
            if let d = serial.rtsDelayUs {
                errno = 0
                if modbus_rtu_set_rts_delay(ctx, Int32(d)) == -1 { throw fail("modbus_rtu_set_rts_delay", errno) }
            }
        }
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
    ///
    /// On a serial line it first waits out the t3.5 silence since the last frame, and after a
    /// timeout or a bad answer (CRC, wrong unit) it discards what is still arriving instead of
    /// closing the port; so does a shared TCP link after a timeout (`keepsConnectionOnTimeout`).
    @inline(__always)
    private func transfer(function: String, table: ModbusTable, address: Int, count: Int,
                          _ body: () -> Int32) throws(ModbusError) {
        if let serial { waitFrameSilence(serial) }
        if flushBeforeNext {
            // A late answer to the failed request must not pass for this one's.
            modbus_flush(ctx)
            flushBeforeNext = false
        }
        errno = 0
        let rc = body()
        let e = errno
        if serial != nil { lastFrameEndNs = monotonicNowNs() }
        if rc != -1 { return }
        let kind = ModbusError.classify(errno: e)
        switch kind {
        case .exception: break
        case .timeout where keepsConnectionOnTimeout, .badResponse where serial != nil:
            modbus_flush(ctx)
            flushBeforeNext = true
            if serial != nil { lastFrameEndNs = monotonicNowNs() }
        default: close()
        }
        throw ModbusError(kind: kind, errno: e, function: function, unit: unit, table: table.rawValue,
                          address: address, count: count, endpoint: endpoint)
    }

    /// Sleeps until t3.5 has passed since the last frame on the line.
    private func waitFrameSilence(_ serial: SerialPortSettings) {
        let due = lastFrameEndNs + Int64(serial.frameSilenceUs) * 1000
        var now = monotonicNowNs()
        while now < due {
            var ts = timespec(tv_sec: Int((due - now) / 1_000_000_000), tv_nsec: Int((due - now) % 1_000_000_000))
            nanosleep(&ts, nil)
            now = monotonicNowNs()
        }
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
