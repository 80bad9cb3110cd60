/// The reason codes of docs/decision-rule.md. The numbers are part of the contract: the interlock serves
/// them in input registers and PLC programs compare against them.
public enum ReasonCode: UInt16, Sendable, Hashable, CaseIterable, Codable {
    case ok = 0
    case noPhysical = 1
    case noTwin = 2
    case physicalStale = 3
    case twinStale = 4
    case drift = 5
    case statusMismatch = 6
    case valueDeviation = 7
    case identity = 8
    case predicted = 9
    case intent = 10
    case rearming = 11
    case comms = 12
    case audit = 13

    /// The contract name: `OK`, `NO_PHYSICAL`, `STATUS_MISMATCH` …
    public var name: String {
        switch self {
        case .ok: return "OK"
        case .noPhysical: return "NO_PHYSICAL"
        case .noTwin: return "NO_TWIN"
        case .physicalStale: return "PHYSICAL_STALE"
        case .twinStale: return "TWIN_STALE"
        case .drift: return "DRIFT"
        case .statusMismatch: return "STATUS_MISMATCH"
        case .valueDeviation: return "VALUE_DEVIATION"
        case .identity: return "IDENTITY"
        case .predicted: return "PREDICTED"
        case .intent: return "INTENT"
        case .rearming: return "REARMING"
        case .comms: return "COMMS"
        case .audit: return "AUDIT"
        }
    }
}

/// One physical value with its quality.
public struct Reading: Sendable, Hashable {
    /// `nil` when the value could not be read or decoded.
    public var value: Value?
    public var quality: Quality

    public init(value: Value?, quality: Quality) {
        self.value = value
        self.quality = quality
    }
}

/// Whether the PLC answering is the device the map describes.
public enum IdentityResult: Sendable, Hashable, CustomStringConvertible {
    /// The map names no identity registers.
    case notConfigured
    /// Every identity register read back its expected value.
    case ok
    /// An identity register read back something else (name, expected, got).
    case mismatch(register: String, expected: String, got: String)
    /// Identity could not be read (communication failed).
    case unknown

    /// Whether identity permits: `ok` or `notConfigured`.
    @inlinable
    public var passes: Bool {
        switch self {
        case .ok, .notConfigured: return true
        case .mismatch, .unknown: return false
        }
    }

    public var description: String {
        switch self {
        case .notConfigured: return "not_configured"
        case .ok: return "ok"
        case .mismatch(let r, let e, let g): return "mismatch: \(r) expected \(e), got \(g)"
        case .unknown: return "unknown"
        }
    }
}

/// What the PLC said, one poll's worth (docs/decision-rule.md, checks 1–2).
///
/// A failed poll is still a `PhysicalState`: `pollError` is set and every value's quality
/// says why. The last good values are never passed off as fresh.
public struct PhysicalState: Sendable, Hashable {
    /// Whether this poll read what `last` read and differs only in its time (when read, the
    /// PLC's clock): every check but drift and the ages judges them alike.
    public func repeats(_ last: borrowing PhysicalState) -> Bool {
        status == last.status && statusRaw == last.statusRaw && statusQuality == last.statusQuality && pollError == last.pollError
            && identity == last.identity && statusDerived == last.statusDerived && device == last.device && values == last.values
    }

    public var device: String
    /// The status name from the map's value map; `nil` if unreadable or an unmapped code.
    public var status: String?
    /// The raw status code as read, for diagnostics.
    public var statusRaw: Int64?
    public var statusQuality: Quality
    public var values: [String: Reading]
    public var identity: IdentityResult
    /// `nil` when the poll succeeded; otherwise what went wrong, for the reason text.
    public var pollError: String?
    /// When the poll answer arrived (monotonic and wall).
    public var time: ClockReading
    /// The PLC's own clock, where the map names a clock register (`DeviceMap.clock`): the decoded
    /// register converted by `PLCClock.wallNs(from:)`, ns since the Unix epoch. Drift then uses
    /// it instead of `time.wallNs`; ages still use `time.monotonicNs`. `nil` without a clock register.
    public var plcWallNs: Int64?
    /// The map has no status register: `status` is derived from the poll (`operational` while
    /// the poll and every reading is good, nil otherwise). The audit records it.
    public var statusDerived: Bool

    public init(device: String, status: String?, statusRaw: Int64? = nil, statusQuality: Quality = .good,
                values: [String: Reading], identity: IdentityResult = .notConfigured,
                pollError: String? = nil, time: ClockReading, plcWallNs: Int64? = nil,
                statusDerived: Bool = false) {
        self.statusDerived = statusDerived
        self.device = device
        self.status = status
        self.statusRaw = statusRaw
        self.statusQuality = statusQuality
        self.values = values
        self.identity = identity
        self.pollError = pollError
        self.time = time
        self.plcWallNs = plcWallNs
    }

    /// The physical time used for drift: the PLC clock if mapped, else the arrival wall time.
    @inlinable
    public var physicalWallNs: Int64 { plcWallNs ?? time.wallNs }

    /// Whether the poll succeeded and every mapped value, the status and identity are Good.
    public var isAllGood: Bool {
        pollError == nil && statusQuality.isGood && values.values.allSatisfy { $0.quality.isGood }
    }
}

/// The result of checking a twin line's signature.
public enum SignatureCheck: Sendable, Hashable {
    /// The device has no `twin_key`.
    case notRequired
    case valid
    case missing
    case invalid
}

/// What the twin believes, one feed line's worth (docs/twin-feed.md).
public struct TwinState: Sendable, Hashable {
    /// Whether this state says what `last` said and differs only in its time (`ts`, `seq`,
    /// when received): every check but drift and the ages judges them alike. Values that share
    /// their storage (a repeated feed line, `TwinLineMemo`) compare without a lookup.
    public func repeats(_ last: borrowing TwinState) -> Bool {
        status == last.status && predicted == last.predicted && signature == last.signature && modelVersion == last.modelVersion
            && quality == last.quality && device == last.device && values == last.values
    }

    public var device: String
    /// The twin's own timestamp, ns since epoch.
    public var tsNs: Int64
    /// Increases per device (docs/twin-feed.md); at most `maxSeq`.
    public var seq: UInt64?
    public var status: String
    public var values: [String: Double]
    public var predicted: Bool
    public var modelVersion: String?
    public var signature: SignatureCheck
    /// When the line was received here (monotonic and wall).
    public var received: ClockReading
    /// Per-value quality as the twin's source reported it (OPC UA StatusCodes); nil for sources
    /// that have none (JSON lines, Sparkplug). A value that is not good is absent from `values`.
    public var quality: TwinQuality?

    /// The largest `seq` a feed line may carry: 2^53, the largest integer every JSON number
    /// (an IEEE double) carries exactly. A line above it is dropped as `seq_out_of_range`.
    public static let maxSeq: UInt64 = 1 << 53

    /// `seq` for JSON (status, audit tokens): an unsigned number, never a negative one. Values
    /// above `Int64.max` cannot come from a feed (the parser bounds `seq` to `maxSeq`); a state
    /// built by hand with one is shown as `Int64.max`, not wrapped around.
    public static func seqJSON(_ seq: UInt64?) -> JSONValue {
        seq.map { .int(Int64(clamping: $0)) } ?? .null
    }

    public init(device: String, tsNs: Int64, seq: UInt64? = nil, status: String,
                values: [String: Double], predicted: Bool = false, modelVersion: String? = nil,
                signature: SignatureCheck = .notRequired, received: ClockReading) {
        self.device = device
        self.tsNs = tsNs
        self.seq = seq
        self.status = status
        self.values = values
        self.predicted = predicted
        self.modelVersion = modelVersion
        self.signature = signature
        self.received = received
    }
}

/// What a twin source that reports quality (OPC UA) said about each value of a state: shown in
/// `/status` and in the ERIN of decision tokens (`delta.twin_quality`). Only `good` values are
/// in the state; the others are missing for the rule (and block where the map needs them).
public struct TwinQuality: Sendable, Hashable {
    public enum Level: String, Sendable, Hashable {
        case good, uncertain, bad
    }

    public struct Value: Sendable, Hashable {
        public var level: Level
        /// Why it is not good (a StatusCode name, "no value yet", …); nil when good.
        public var reason: String?

        public init(_ level: Level, reason: String? = nil) {
            self.level = level
            self.reason = reason
        }
    }

    /// Which timestamp `ts` was taken from.
    public enum TimestampSource: String, Sendable, Hashable {
        /// Every bound node had a SourceTimestamp: `ts` is the oldest of them.
        case source
        /// At least one node had none: its ServerTimestamp stood in.
        case server
        /// No node had either: the time of receipt.
        case received
    }

    /// Register name (and `status`, and `heartbeat` where bound) → quality.
    public var values: [String: Value]
    public var timestamp: TimestampSource

    public init(values: [String: Value], timestamp: TimestampSource) {
        self.values = values
        self.timestamp = timestamp
    }

    /// `{"timestamp": "source", "values": {"load_kg": {"quality": "good"}, …}}`.
    public var json: JSONValue {
        var v: [String: JSONValue] = [:]
        for (name, q) in values {
            var o: [String: JSONValue] = ["quality": .string(q.level.rawValue)]
            if let r = q.reason { o["reason"] = .string(r) }
            v[name] = .object(o)
        }
        return .object(["timestamp": .string(timestamp.rawValue), "values": .object(v)])
    }
}
