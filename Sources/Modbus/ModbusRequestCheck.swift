/// MBAP framing and request validation for a read-only Modbus/TCP server: pure functions over
/// bytes, so every rule can be tested without a socket.
///
/// The stock libmodbus server loop trusts its input: it does not check the MBAP protocol id or
/// length, answers every unit id, and `modbus_reply` sleeps the response timeout (0.5 s) before
/// answering a bad quantity or an unknown function. So every frame is checked here first, and
/// only a fully valid read reaches `modbus_reply`.

/// Why a connection's byte stream is not Modbus/TCP and the connection is closed.
public enum ModbusFrameProblem: Sendable, Hashable, CustomStringConvertible {
    /// MBAP protocol identifier other than 0.
    case protocolId(UInt16)
    /// MBAP length field outside 2…254 (unit id + PDU of at most 253 bytes).
    case length(Int)
    /// A read request whose PDU is not the 5 bytes its function needs: the framing is in doubt.
    case pduLength(function: UInt8, expected: Int, got: Int)
    /// A function code ≥ 0x80 is an exception reply, not a request; libmodbus would answer it
    /// as `fc + 0x80` truncated to 8 bits (0x81 → `01 01`, a fake FC1 reply).
    case exceptionFunction(UInt8)

    public var description: String {
        switch self {
        case .protocolId(let p): return "MBAP protocol id \(p) (must be 0)"
        case .length(let l): return "MBAP length \(l) (must be 2…254)"
        case .pduLength(let f, let e, let g): return "function \(f) PDU of \(g) bytes (must be \(e))"
        case .exceptionFunction(let f): return "function code 0x\(String(f, radix: 16)) is not a request"
        }
    }
}

/// What the server does with one complete request frame.
public enum ModbusRequestDecision: Sendable, Hashable {
    /// A valid read: answer it from the current image (through `modbus_reply`).
    case read(ModbusTable, address: Int, count: Int)
    /// Answer with this exception code (through `modbus_reply_exception`).
    case exception(UInt8)
    /// A write function: answer with `exception` (1, or 0x0B for a foreign unit), change
    /// nothing, and report it.
    case writeRejected(exception: UInt8, function: UInt8, address: UInt16?, count: UInt16?)
    /// Not Modbus/TCP: close the connection.
    case close(ModbusFrameProblem)
}

/// Framing and validation rules; see the type-level comment of this file.
public enum ModbusRequestCheck {
    /// MBAP header bytes before the PDU: transaction id (2), protocol id (2), length (2), unit (1).
    public static let headerLength = 7
    /// The largest Modbus/TCP frame: 7 header bytes + 253 PDU bytes.
    public static let maxFrameLength = 260

    /// The write functions (5, 6, 15, 16, 22, 23): all refused with exception 1.
    public static let writeFunctions: Set<UInt8> = [5, 6, 15, 16, 22, 23]

    /// The result of looking at the front of a connection's input.
    public enum Framing: Sendable, Hashable {
        /// Not a whole frame yet.
        case incomplete
        /// A whole frame of this many bytes (header included) is at the front.
        case frame(Int)
        /// The bytes are not Modbus/TCP.
        case malformed(ModbusFrameProblem)
    }

    /// Finds the first frame in `bytes`. The protocol id and length are judged as soon as the
    /// first 6 bytes are there, so a bad header closes at once instead of waiting for a body.
    public static func framing(_ bytes: UnsafeRawBufferPointer) -> Framing {
        if bytes.count < 6 { return .incomplete }
        let pid = UInt16(bytes[2]) << 8 | UInt16(bytes[3])
        if pid != 0 { return .malformed(.protocolId(pid)) }
        let length = Int(bytes[4]) << 8 | Int(bytes[5])
        if length < 2 || length > 254 { return .malformed(.length(length)) }
        let total = 6 + length
        return bytes.count >= total ? .frame(total) : .incomplete
    }

    /// Judges one complete frame (as returned by `framing`) for a server answering `unit`
    /// (and 0 and 255, the Modbus/TCP "this device") whose tables hold `sizes` items each
    /// (coils, discrete inputs, holding registers, input registers).
    ///
    /// Order, as the Modbus application protocol prescribes: function code (writes and unknown
    /// functions → 1), then quantity (→ 3), then address range (→ 2). A unit id not answered
    /// gets exception 0x0B (gateway target failed to respond) at once, so a misconfigured
    /// client sees a clear error instead of a timeout; writes to any unit are reported.
    public static func decide(_ frame: UnsafeRawBufferPointer, unit: UInt8,
                              sizes: (coils: Int, discrete: Int, holding: Int, input: Int)) -> ModbusRequestDecision {
        let u = frame[6]
        let fc = frame[7]
        let pdu = frame.count - headerLength  // function code included
        if fc >= 0x80 { return .close(.exceptionFunction(fc)) }
        let ours = u == unit || u == 0 || u == 255
        if writeFunctions.contains(fc) {
            func word(_ i: Int) -> UInt16? {
                let at = headerLength + i
                return at + 1 < frame.count ? UInt16(frame[at]) << 8 | UInt16(frame[at + 1]) : nil
            }
            let address: UInt16?
            let count: UInt16?
            switch fc {
            case 23: address = word(5); count = word(7)
            case 15, 16: address = word(1); count = word(3)
            default: address = word(1); count = address == nil ? nil : 1
            }
            return .writeRejected(exception: ours ? 1 : 0x0B, function: fc, address: address, count: count)
        }
        if !ours { return .exception(0x0B) }
        guard let table = ModbusTable(readFunction: fc) else { return .exception(1) }
        if pdu != 5 { return .close(.pduLength(function: fc, expected: 5, got: pdu)) }
        let address = Int(frame[8]) << 8 | Int(frame[9])
        let count = Int(frame[10]) << 8 | Int(frame[11])
        if count < 1 || count > table.maxReadCount { return .exception(3) }
        let size: Int
        switch table {
        case .coil: size = sizes.coils
        case .discrete: size = sizes.discrete
        case .holding: size = sizes.holding
        case .input: size = sizes.input
        }
        if address + count > size { return .exception(2) }
        return .read(table, address: address, count: count)
    }
}

extension ModbusRequestCheck {
    /// For a server that lets `modbus_reply` answer any function from a writable mapping (the
    /// `.delegate` policy's `.reply`): the exception code to send instead, for what
    /// `modbus_reply` would otherwise answer by sleeping and flushing (a bad quantity or byte
    /// count, an unknown function), or nil if `modbus_reply` may answer. Quantities are the
    /// protocol's limits, which are libmodbus's `MODBUS_MAX_*` constants.
    public static func replyProblem(_ b: UnsafeRawBufferPointer) -> UInt8? {
        let length = b.count
        func u16(_ at: Int) -> Int { Int(b[at]) << 8 | Int(b[at + 1]) }
        switch b[7] {
        case 1, 2:
            guard length == 12 else { return 3 }
            return (1...2000).contains(u16(10)) ? nil : 3
        case 3, 4:
            guard length == 12 else { return 3 }
            return (1...125).contains(u16(10)) ? nil : 3
        case 5, 6:
            return length == 12 ? nil : 3
        case 15:
            guard length >= 13 else { return 3 }
            let q = u16(10), bytes = Int(b[12])
            guard (1...1968).contains(q), bytes == (q + 7) / 8, length == 13 + bytes else { return 3 }
            return nil
        case 16:
            guard length >= 13 else { return 3 }
            let q = u16(10), bytes = Int(b[12])
            guard (1...123).contains(q), bytes == 2 * q, length == 13 + bytes else { return 3 }
            return nil
        default:
            return 1
        }
    }
}
