/// A decoded value, from a PLC register or a twin message.
///
/// Integers keep their full width (a `uint64` counter does not fit a `Double` exactly);
/// comparisons against tolerances and `requires` use `number`.
public enum Value: Sendable, Hashable, CustomStringConvertible {
    case bool(Bool)
    case int(Int64)
    case uint(UInt64)
    case double(Double)
    case string(String)

    /// The value as a number for tolerance and `requires` checks; `nil` for strings.
    /// Booleans are 0 and 1.
    @inlinable
    public var number: Double? {
        switch self {
        case .bool(let b): return b ? 1 : 0
        case .int(let i): return Double(i)
        case .uint(let u): return Double(u)
        case .double(let d): return d
        case .string: return nil
        }
    }

    public var description: String {
        switch self {
        case .bool(let b): return b ? "true" : "false"
        case .int(let i): return String(i)
        case .uint(let u): return String(u)
        case .double(let d): return String(d)
        case .string(let s): return s
        }
    }
}

/// OPC-style quality of one physical value.
///
/// Only `good` counts for the decision rule; everything else blocks with `COMMS`.
public enum Quality: Sendable, Hashable, CustomStringConvertible {
    case good
    /// The connection failed or was lost.
    case badComm
    /// The PLC did not answer within `timeout_ms`.
    case badTimeout
    /// The PLC answered with a Modbus exception (code 1…11).
    case badException(UInt8)
    /// The registers arrived but do not decode (e.g. invalid UTF-8 string, bad status code).
    case badDecode
    /// Last known value, older than allowed.
    case uncertainStale

    @inlinable
    public var isGood: Bool { if case .good = self { return true } else { return false } }

    /// The text form used in JSON output and logs: `good`, `bad_comm`, `bad_exception(2)` …
    public var description: String {
        switch self {
        case .good: return "good"
        case .badComm: return "bad_comm"
        case .badTimeout: return "bad_timeout"
        case .badException(let c): return "bad_exception(\(c))"
        case .badDecode: return "bad_decode"
        case .uncertainStale: return "uncertain_stale"
        }
    }

    /// Parses the text form back (for `check --physical` files).
    public init?(text: String) {
        switch text {
        case "good": self = .good
        case "bad_comm": self = .badComm
        case "bad_timeout": self = .badTimeout
        case "bad_decode": self = .badDecode
        case "uncertain_stale": self = .uncertainStale
        default:
            guard text.hasPrefix("bad_exception("), text.hasSuffix(")"),
                  let code = UInt8(text.dropFirst("bad_exception(".count).dropLast()) else { return nil }
            self = .badException(code)
        }
    }
}
