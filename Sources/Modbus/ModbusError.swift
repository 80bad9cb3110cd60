import CModbus
import Platform

#if canImport(Glibc)
import Glibc
#endif

/// A failed libmodbus call, with everything a log line needs: which C function, errno, the
/// Modbus exception code where the PLC sent one, and the unit, table and address asked for.
public struct ModbusError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What kind of failure, so callers can tell a timeout from an illegal address from a
    /// refused connection.
    public enum Kind: Sendable, Hashable {
        /// The PLC answered with a Modbus exception (1 illegal function, 2 illegal address …).
        case exception(UInt8)
        /// No (complete) answer within the response or byte timeout.
        case timeout
        /// Connecting failed (refused, unreachable, connect timeout).
        case connect
        /// The connection broke (reset, closed by peer, send failed).
        case connectionLost
        /// The answer was malformed or did not match the request.
        case badResponse
        /// Not connected.
        case notConnected
        /// Invalid argument or any other local failure.
        case other
    }

    public var kind: Kind
    /// errno right after the call (libmodbus exceptions are `MODBUS_ENOBASE + code`).
    public var errno: Int32
    /// The libmodbus function that failed, e.g. `modbus_read_registers`.
    public var function: String
    public var unit: Int?
    /// `holding`, `input`, `coil`, `discrete`, or nil.
    public var table: String?
    public var address: Int?
    public var count: Int?
    /// host:port, where known.
    public var endpoint: String?
    /// Why the host name did not resolve (`EAI_NONAME` …), for a `.connect` failure that was
    /// no connection attempt at all (libmodbus reports it as `ECONNREFUSED`).
    public var resolveFailure: String?

    public init(kind: Kind, errno: Int32, function: String, unit: Int? = nil, table: String? = nil,
                address: Int? = nil, count: Int? = nil, endpoint: String? = nil) {
        self.kind = kind
        self.errno = errno
        self.function = function
        self.unit = unit
        self.table = table
        self.address = address
        self.count = count
        self.endpoint = endpoint
    }

    /// The Modbus exception code, if the PLC sent one.
    public var exceptionCode: UInt8? {
        if case .exception(let c) = kind { return c }
        return nil
    }

    public var description: String {
        var parts: [String] = [function]
        if let endpoint { parts.append(endpoint) }
        if let unit { parts.append("unit \(unit)") }
        if let table, let address {
            parts.append("\(table) \(address)" + (count.map { "+\($0)" } ?? ""))
        }
        let what: String
        switch kind {
        case .exception(let c): what = "exception \(c) (\(ModbusError.exceptionName(c)))"
        case .timeout: what = "timeout"
        case .connect:
            if let resolveFailure, let host = endpoint.map(ModbusError.host(of:)) {
                what = "connect failed: host name \(host) does not resolve (\(resolveFailure))"
            } else {
                what = "connect failed (\(ModbusError.errnoName(errno)))"
            }
        case .connectionLost: what = "connection lost (\(ModbusError.errnoName(errno)))"
        case .badResponse: what = "bad response (\(ModbusError.errnoName(errno)))"
        case .notConnected: what = "not connected"
        case .other: what = ModbusError.errnoName(errno)
        }
        return parts.joined(separator: " ") + ": " + what
    }

    /// The host part of `host:port` or `[v6]:port`.
    static func host(of endpoint: String) -> String {
        if endpoint.hasPrefix("["), let close = endpoint.firstIndex(of: "]") {
            return String(endpoint[endpoint.index(after: endpoint.startIndex)..<close])
        }
        guard let colon = endpoint.lastIndex(of: ":") else { return endpoint }
        return String(endpoint[..<colon])
    }

    /// Names of the standard Modbus exception codes.
    public static func exceptionName(_ code: UInt8) -> String {
        switch code {
        case 1: return "illegal function"
        case 2: return "illegal data address"
        case 3: return "illegal data value"
        case 4: return "server device failure"
        case 5: return "acknowledge"
        case 6: return "server device busy"
        case 8: return "memory parity error"
        case 10: return "gateway path unavailable"
        case 11: return "gateway target failed to respond"
        default: return "code \(code)"
        }
    }

    /// A thread-safe name for an errno value (`modbus_strerror` and `strerror` are not
    /// thread-safe, so errno is mapped here).
    public static func errnoName(_ e: Int32) -> String {
        let base = CModbus_ENOBASE()
        if e > base {
            switch e {
            case CModbus_EMBBADCRC(): return "invalid CRC"
            case CModbus_EMBBADDATA(): return "invalid data"
            case CModbus_EMBBADEXC(): return "invalid exception code"
            case CModbus_EMBMDATA(): return "too many data"
            case CModbus_EMBBADSLAVE(): return "response not from requested unit"
            case CModbus_EMBUNKEXC(): return "unknown exception"
            default:
                if e - base <= 11 { return exceptionName(UInt8(e - base)) }
                return "libmodbus error \(e - base)"
            }
        }
        return Errno(e).name
    }
}
