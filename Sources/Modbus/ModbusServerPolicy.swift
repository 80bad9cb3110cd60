import CModbus

#if canImport(Glibc)
import Glibc
#endif

/// What a `ModbusServer` answers. The loop, its framing (`ModbusRequestCheck`) and its
/// protections (byte, idle and write-stall timeouts, client and descriptor limits) are the same
/// for both.
public enum ModbusServerPolicy: Sendable {
    /// The interlock's permit image: reads of the configured unit are answered from the latest
    /// published `ModbusImage` (this one until the first `publish`); writes get exception 1,
    /// change nothing and are reported as `ModbusServerEvent.writeRejected`.
    case readOnly(ModbusImage)
    /// Every complete request goes to a delegate that decides the answer (`ModbusServerAction`).
    /// The closure runs once, on the loop thread, when it starts: the delegate (and any
    /// `ModbusMapping` it answers from) lives there.
    case delegate(@Sendable () -> any ModbusServerDelegate)
}

/// What a `.delegate` server asks of the code that owns it. Called on the loop thread only.
public protocol ModbusServerDelegate: AnyObject {
    /// Decides the answer to one complete request (function codes below 0x80; anything else
    /// closes the connection before it gets here).
    func answer(_ request: ModbusRequest, server: ModbusServerControl) -> ModbusServerAction
    /// Called after another thread called `ModbusServer.wake()`: apply posted commands here.
    func serverWoken(_ server: ModbusServerControl)
    /// Called once the loop has closed every client, just before the loop thread ends.
    func serverStopped()
}

extension ModbusServerDelegate {
    public func serverWoken(_ server: ModbusServerControl) {}
    public func serverStopped() {}
}

/// One complete request frame, as the server hands it to its delegate.
public struct ModbusRequest: Sendable, Hashable {
    /// Which listener the client connected to (0: the configured port; then in the order of
    /// `ModbusServer.addListener`).
    public var listener: Int
    public var transactionID: UInt16
    public var unit: UInt8
    public var function: UInt8
    /// Start address and quantity, for the read and write functions (0 otherwise).
    public var address: UInt16
    public var quantity: UInt16

    /// A request as a delegate sees it (for tests of delegates without a socket).
    public init(listener: Int, transactionID: UInt16, unit: UInt8, function: UInt8, address: UInt16, quantity: UInt16) {
        self.listener = listener
        self.transactionID = transactionID
        self.unit = unit
        self.function = function
        self.address = address
        self.quantity = quantity
    }

    /// Reads the request out of a frame `ModbusRequestCheck.framing` delimited.
    init(frame b: UnsafeRawBufferPointer, listener: Int) {
        let n = b.count
        self.init(listener: listener, transactionID: UInt16(b[0]) << 8 | UInt16(b[1]), unit: b[6], function: b[7],
                  address: n >= 10 ? UInt16(b[8]) << 8 | UInt16(b[9]) : 0,
                  quantity: n >= 12 ? UInt16(b[10]) << 8 | UInt16(b[11]) : 0)
        if function == 5 || function == 6 { quantity = 1 }
    }

    /// The table a function code reads or writes, if it is one of FC 1–6, 15, 16.
    public var table: ModbusTable? {
        switch function {
        case 1, 5, 15: return .coil
        case 2: return .discrete
        case 3, 6, 16: return .holding
        case 4: return .input
        default: return nil
        }
    }
}

/// How a `.delegate` server answers one request.
public enum ModbusServerAction {
    /// Answer from this mapping (libmodbus `modbus_reply`; writes change it; exception 2 outside
    /// its blocks; bad quantities and unknown functions get exception 3 or 1 at once).
    case reply(ModbusMapping)
    /// Answer with this Modbus exception code.
    case exception(UInt8)
    /// Send nothing (the client will time out).
    case ignore
    /// Close the client's connection.
    case close
}

/// The loop-thread handle a delegate gets: what it may change in the running server.
/// Valid only inside the delegate's callbacks, on the loop thread.
public struct ModbusServerControl {
    unowned let loop: ServerLoop

    /// Stops reading requests from `listener`'s clients until the monotonic time `untilNs`
    /// (CLOCK_MONOTONIC); requests that arrive meanwhile are answered late, when the pause ends.
    /// Other listeners' clients are served as usual.
    public func pause(listener: Int, untilMonotonicNs untilNs: Int64) {
        loop.pause(listener: listener, until: untilNs)
    }

    /// Closes every client connection of `listener` (all listeners if nil) now.
    public func closeConnections(listener: Int? = nil) {
        loop.closeConnections(listener: listener)
    }

    /// Open client connections of `listener` (all listeners if nil).
    public func connectionCount(listener: Int? = nil) -> Int {
        loop.connectionCount(listener: listener)
    }

    /// The port of a listener.
    public func port(of listener: Int) -> Int { loop.listeners[listener].port }

    /// Makes the loop close everything and end after the current event.
    public func stop() { loop.stopRequestedByDelegate = true }
}

@available(*, unavailable)
extension ModbusServerControl: Sendable {}

/// The data a `.delegate` server answers from: the four tables, each a contiguous block starting
/// at its own address. Owns one `modbus_mapping_t` (freed in deinit).
///
/// Thread confinement: not `Sendable`; read and change it only on the server's thread.
public final class ModbusMapping {
    let raw: UnsafeMutablePointer<modbus_mapping_t>
    /// The address blocks served, per table (empty range: the table answers exception 2).
    public let ranges: [ModbusTable: Range<Int>]

    /// Allocates the four blocks; addresses outside them answer exception 2.
    /// The corresponding C function is `modbus_mapping_new_start_address`.
    public init(coils: Range<Int> = 0..<0, discrete: Range<Int> = 0..<0, holding: Range<Int> = 0..<0,
                input: Range<Int> = 0..<0) throws(ModbusError) {
        for r in [coils, discrete, holding, input] where r.lowerBound < 0 || r.upperBound > 65536 {
            throw ModbusError(kind: .other, errno: EINVAL, function: "modbus_mapping_new_start_address")
        }
        errno = 0
        guard let m = modbus_mapping_new_start_address(
            UInt32(coils.lowerBound), UInt32(coils.count), UInt32(discrete.lowerBound), UInt32(discrete.count),
            UInt32(holding.lowerBound), UInt32(holding.count), UInt32(input.lowerBound), UInt32(input.count))
        else {
            throw ModbusError(kind: .other, errno: errno, function: "modbus_mapping_new_start_address")
        }
        raw = m
        ranges = [.coil: coils, .discrete: discrete, .holding: holding, .input: input]
    }

    deinit { modbus_mapping_free(raw) }

    /// The register at `address` of a register table, or nil outside its block.
    public func register(_ table: ModbusTable, _ address: Int) -> UInt16? {
        guard !table.isBitTable, let r = ranges[table], r.contains(address) else { return nil }
        let tab = table == .input ? raw.pointee.tab_input_registers : raw.pointee.tab_registers
        return tab?[address - r.lowerBound]
    }

    /// Sets the register at `address`; false outside the block.
    @discardableResult
    public func setRegister(_ table: ModbusTable, _ address: Int, _ value: UInt16) -> Bool {
        guard !table.isBitTable, let r = ranges[table], r.contains(address) else { return false }
        let tab = table == .input ? raw.pointee.tab_input_registers : raw.pointee.tab_registers
        guard let tab else { return false }
        tab[address - r.lowerBound] = value
        return true
    }

    /// The bit at `address` of a bit table, or nil outside its block.
    public func bit(_ table: ModbusTable, _ address: Int) -> Bool? {
        guard table.isBitTable, let r = ranges[table], r.contains(address) else { return nil }
        let tab = table == .discrete ? raw.pointee.tab_input_bits : raw.pointee.tab_bits
        return tab.map { $0[address - r.lowerBound] != 0 }
    }

    /// Sets the bit at `address`; false outside the block.
    @discardableResult
    public func setBit(_ table: ModbusTable, _ address: Int, _ value: Bool) -> Bool {
        guard table.isBitTable, let r = ranges[table], r.contains(address) else { return false }
        let tab = table == .discrete ? raw.pointee.tab_input_bits : raw.pointee.tab_bits
        guard let tab else { return false }
        tab[address - r.lowerBound] = value ? 1 : 0
        return true
    }
}
