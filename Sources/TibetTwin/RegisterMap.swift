/// The model of a register map file (`maps/<device>.yaml`, docs/register-maps.md), after parsing and
/// validation. Every value here is resolved: defaults applied, Modicon addresses converted,
/// profile limits filled in.

/// The four Modbus data tables.
public enum RegisterTable: String, Sendable, Hashable, CaseIterable {
    case holding, input, coil, discrete

    /// Coils and discrete inputs hold bits; holding and input registers hold 16-bit words.
    @inlinable
    public var isBitTable: Bool { self == .coil || self == .discrete }

    /// The Modbus read function code for this table.
    public var readFunction: UInt8 {
        switch self {
        case .coil: return 1
        case .discrete: return 2
        case .holding: return 3
        case .input: return 4
        }
    }

    /// The Modicon prefix digit: 0 coils, 1 discrete inputs, 3 input registers, 4 holding registers.
    public var modiconPrefix: Int {
        switch self {
        case .coil: return 0
        case .discrete: return 1
        case .input: return 3
        case .holding: return 4
        }
    }
}

/// The value types a register map can declare.
public enum ValueType: String, Sendable, Hashable, CaseIterable {
    case bool, int8, uint8, int16, uint16, int32, uint32, int64, uint64, float32, float64, string

    /// Registers occupied, for fixed-width types; `string` takes its `length`. `int8` and
    /// `uint8` are one byte of one register (`RegisterSpec.byte`).
    public var fixedRegisterCount: Int? {
        switch self {
        case .bool, .int8, .uint8, .int16, .uint16: return 1
        case .int32, .uint32, .float32: return 2
        case .int64, .uint64, .float64: return 4
        case .string: return nil
        }
    }
}

/// Which byte of a 16-bit register an `int8` / `uint8` value is (`byte: high` or `byte: low`).
/// The high byte is the one sent first on the wire (bits 15…8).
public enum ByteHalf: String, Sendable, Hashable, CaseIterable {
    case high, low
}

/// Byte and word order of multi-register values. `ABCD` is big-endian (the Modbus default);
/// 64-bit values extend the same pattern (`CDAB` reverses the four words, `BADC` swaps the
/// bytes in each word, `DCBA` does both).
public enum WordOrder: String, Sendable, Hashable, CaseIterable {
    case ABCD, CDAB, BADC, DCBA

    @inlinable public var reversesWords: Bool { self == .CDAB || self == .DCBA }
    @inlinable public var swapsBytes: Bool { self == .BADC || self == .DCBA }
}

/// Where something was written in a file, for error messages (`file:line:col`). Lines and
/// columns are 1-based.
public struct SourceLocation: Sendable, Hashable, CustomStringConvertible {
    public var file: String
    public var line: Int
    public var column: Int

    public init(file: String, line: Int, column: Int) {
        self.file = file
        self.line = line
        self.column = column
    }

    public var description: String { "\(file):\(line):\(column)" }
}

/// One value read from the PLC.
public struct RegisterSpec: Sendable, Hashable {
    public var name: String
    public var table: RegisterTable
    /// 0-based protocol address.
    public var address: UInt16
    public var type: ValueType
    public var order: WordOrder
    /// Bit number (0 = LSB) within a 16-bit register, for `bit: n` entries; the value is a bool.
    public var bit: Int?
    /// Which byte of the register an `int8` / `uint8` value is; nil for every other type.
    public var byte: ByteHalf?
    /// Registers read for a `string`.
    public var length: Int
    public var scale: Double
    public var offset: Double
    public var unit: String?
    /// Maximum allowed |physical − twin|; `nil` means the value is not compared.
    public var tolerance: Double?
    public var location: SourceLocation?

    public init(
        name: String, table: RegisterTable = .holding, address: UInt16, type: ValueType = .uint16,
        order: WordOrder = .ABCD, bit: Int? = nil, byte: ByteHalf? = nil, length: Int = 0, scale: Double = 1,
        offset: Double = 0, unit: String? = nil, tolerance: Double? = nil,
        location: SourceLocation? = nil
    ) {
        self.byte = byte
        self.name = name
        self.table = table
        self.address = address
        self.type = bit != nil || table.isBitTable ? .bool : type
        self.order = order
        self.bit = bit
        self.length = length
        self.scale = scale
        self.offset = offset
        self.unit = unit
        self.tolerance = tolerance
        self.location = location
    }

    /// Registers (or bits, in bit tables) this value occupies.
    @inlinable
    public var width: Int {
        if table.isBitTable || bit != nil { return 1 }
        return type.fixedRegisterCount ?? max(length, 1)
    }

    /// Last address occupied (inclusive).
    @inlinable
    public var lastAddress: Int { Int(address) + width - 1 }

    /// Whether `raw × scale + offset` changes anything.
    @inlinable
    public var isScaled: Bool { scale != 1 || offset != 0 }
}

/// The device status register and its value → name map (`0: operational, 1: fault …`).
public struct StatusSpec: Sendable, Hashable {
    public var register: RegisterSpec
    public var values: [Int64: String]

    public init(register: RegisterSpec, values: [Int64: String]) {
        self.register = register
        self.values = values
    }
}

/// A register that must read back an expected value (serial number, firmware id): proof that
/// the PLC answering is the device the map describes.
public struct IdentitySpec: Sendable, Hashable {
    public var register: RegisterSpec
    public var expect: Value

    public init(register: RegisterSpec, expect: Value) {
        self.register = register
        self.expect = expect
    }
}

/// A condition an intent puts on one physical value (`requires: {load_kg: {max: 40000}}`).
/// All given bounds must hold; an absent or non-good value fails.
public struct Requirement: Sendable, Hashable {
    public var name: String
    public var min: Double?
    public var max: Double?
    public var eq: Double?
    public var oneOf: [Double]?
    public var location: SourceLocation?

    public init(name: String, min: Double? = nil, max: Double? = nil, eq: Double? = nil,
                oneOf: [Double]? = nil, location: SourceLocation? = nil) {
        self.name = name
        self.min = min
        self.max = max
        self.eq = eq
        self.oneOf = oneOf
        self.location = location
    }

    /// Whether `value` satisfies every bound given. NaN never does.
    @inlinable
    public func isSatisfied(by value: Double) -> Bool {
        if value.isNaN { return false }
        if let min, !(value >= min) { return false }
        if let max, !(value <= max) { return false }
        if let eq, value != eq { return false }
        if let oneOf, !oneOf.contains(value) { return false }
        return true
    }
}

/// An action the twin may ask for, and the interlock coil that permits it.
public struct IntentSpec: Sendable, Hashable {
    public var name: String
    /// Address of the permit coil (and mirrored discrete input) on the interlock server.
    public var coil: UInt16
    public var requires: [Requirement]
    /// Statuses in which this intent may be permitted (default: `operational`).
    public var allowedStatuses: [String]
    /// After a trip, stay blocked until an operator reset.
    public var latch: Bool
    public var location: SourceLocation?

    public init(name: String, coil: UInt16, requires: [Requirement] = [],
                allowedStatuses: [String] = ["operational"], latch: Bool = false,
                location: SourceLocation? = nil) {
        self.name = name
        self.coil = coil
        self.requires = requires
        self.allowedStatuses = allowedStatuses
        self.latch = latch
        self.location = location
    }
}

/// How Modbus frames travel on a TCP connection: `tcp` (MBAP header, the Modbus/TCP
/// standard) or `rtu` (RTU frames with CRC on a TCP socket, as cheap serial gateways do).
public enum PLCFraming: String, Sendable, Hashable, CaseIterable {
    case tcp, rtu
}

/// A serial line for Modbus RTU (`plc: {serial: /dev/ttyUSB0, baud: 19200, parity: E, …}`).
public struct SerialLine: Sendable, Hashable, CustomStringConvertible {
    public enum Parity: String, Sendable, Hashable, CaseIterable {
        case none = "N", even = "E", odd = "O"
    }
    public enum RTS: String, Sendable, Hashable, CaseIterable {
        case up, down
    }

    public var device: String
    public var baud: Int
    public var parity: Parity
    public var dataBits: Int
    public var stopBits: Int
    /// The kernel's RS-485 mode (`rs485: true`).
    public var rs485: Bool
    /// RTS driven around each request (`rts: up|down`), and the delay around it in µs.
    public var rts: RTS?
    public var rtsDelayUs: Int?

    public init(device: String, baud: Int = 19200, parity: Parity = .even, dataBits: Int = 8, stopBits: Int = 1,
                rs485: Bool = false, rts: RTS? = nil, rtsDelayUs: Int? = nil) {
        self.device = device
        self.baud = baud
        self.parity = parity
        self.dataBits = dataBits
        self.stopBits = stopBits
        self.rs485 = rs485
        self.rts = rts
        self.rtsDelayUs = rtsDelayUs
    }

    /// `/dev/ttyUSB0 19200 8E1`.
    public var description: String { "\(device) \(baud) \(dataBits)\(parity.rawValue)\(stopBits)" }

    /// The settings that must agree for maps sharing this port (everything but the device).
    public var lineSettings: String {
        var t = "\(baud) \(dataBits)\(parity.rawValue)\(stopBits)"
        if rs485 { t += " rs485" }
        if let rts { t += " rts \(rts.rawValue)" + (rtsDelayUs.map { " \($0) µs" } ?? "") }
        return t
    }
}

/// How to reach the PLC and how often to poll it.
public struct PLCEndpoint: Sendable, Hashable {
    /// The TCP host (empty for a serial device).
    public var host: String
    public var port: Int
    /// The serial line, for Modbus RTU on a serial port; nil for TCP.
    public var serial: SerialLine?
    /// Frames on the TCP connection (ignored for serial, which is always RTU).
    public var framing: PLCFraming
    /// Longest silence between two bytes of one answer (`byte_timeout_ms`); nil: `timeoutMs`
    /// bounds the whole answer.
    public var byteTimeoutMs: Int?
    /// A measured round trip per request on a TCP link (`rtt_ms`, from `tibet-twin read`),
    /// for the shared link budget of `maps validate`.
    public var rttMs: Double?
    public var unit: Int
    public var pollMs: Int
    public var timeoutMs: Int
    /// Gaps of up to this many unused registers are read through when grouping.
    public var maxGap: Int
    /// The most registers one request may ask for (`max_registers`, 1…125): for devices that
    /// refuse the protocol maximum.
    public var maxRegisters: Int
    /// The most bits one request may ask for (`max_bits`, 1…2000).
    public var maxBits: Int

    public init(host: String, port: Int = 502, unit: Int = 1, pollMs: Int = 100,
                timeoutMs: Int = 100, maxGap: Int = 16, maxRegisters: Int = 125, maxBits: Int = 2000,
                serial: SerialLine? = nil, framing: PLCFraming = .tcp, byteTimeoutMs: Int? = nil, rttMs: Double? = nil) {
        self.serial = serial
        self.framing = framing
        self.byteTimeoutMs = byteTimeoutMs
        self.rttMs = rttMs
        self.maxRegisters = maxRegisters
        self.maxBits = maxBits
        self.host = host
        self.port = port
        self.unit = unit
        self.pollMs = pollMs
        self.timeoutMs = timeoutMs
        self.maxGap = maxGap
    }
}

extension PLCEndpoint {
    /// Where the link goes, for people: the serial device, or `host:port` (plus `(rtu)` for
    /// RTU framing on TCP).
    public var linkName: String {
        if let serial { return serial.device }
        let hp = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        return framing == .rtu ? "\(hp) (rtu)" : hp
    }

    /// Maps whose endpoints have the same key share one link (one connection or one serial
    /// port): the serial device, or the TCP host and port.
    public var linkKey: String {
        if let serial { return "serial:\(serial.device)" }
        return "tcp:\(host.lowercased()):\(port)"
    }
}

/// The timing limits of one device, resolved against its profile (docs/decision-rule.md defaults:
/// `max_age_ms` = `max_drift_ms`, `max_skew_ms` = 1000, `rearm_ms` = 2 × poll interval).
public struct Limits: Sendable, Hashable {
    public var maxDriftMs: Double
    public var maxAgeMs: Double
    public var maxSkewMs: Double
    public var rearmMs: Double

    public init(maxDriftMs: Double, maxAgeMs: Double? = nil, maxSkewMs: Double = 1000,
                rearmMs: Double) {
        self.maxDriftMs = maxDriftMs
        self.maxAgeMs = maxAgeMs ?? maxDriftMs
        self.maxSkewMs = maxSkewMs
        self.rearmMs = rearmMs
    }

    /// The periodic evaluation tick for this device: `max(10 ms, max_age_ms / 4)`.
    @inlinable
    public var tickMs: Double { Swift.max(10, maxAgeMs / 4) }
}

/// One device: its PLC, what to read, how to judge it, and which coils it drives.
public struct DeviceMap: Sendable, Hashable {
    public var device: String
    public var profile: ProfileID
    public var plc: PLCEndpoint
    public var limits: Limits
    public var identity: [IdentitySpec]
    /// The status register; nil when the map has no `status:` and the status is derived:
    /// `operational` while the poll and every reading is good, unknown otherwise.
    public var status: StatusSpec?
    public var registers: [RegisterSpec]
    /// Path of the Ed25519 public key the twin signs its lines with, as written in the map
    /// (relative paths are relative to the map file).
    public var twinKey: String?
    public var intents: [IntentSpec]
    /// Whether twin states marked `predicted: true` may permit.
    public var allowPredicted: Bool
    /// The file the map came from, and the SHA-256 (hex) of its bytes, for the audit.
    public var sourceFile: String
    public var sha256: String
    /// The PLC's own wall clock register, if the map names one (`clock:`); drift is then measured
    /// against it instead of the appliance's arrival time (see `PLCClock`).
    public var clock: PLCClock?
    /// Free text for people (`description:`), e.g. "STS crane 1, berth 3".
    public var description: String?
    /// Where each top-level key's value was written (`"device"`, `"twin_key"`, `"plc"` …), so
    /// errors found after parsing (a duplicate device, an unreadable key file) can point at it.
    public var keyLocations: [String: SourceLocation]
    /// Where the twin's state comes from when the twin is a Sparkplug B edge node (`twin:
    /// {sparkplug: …}`, docs/mqtt.md); nil: JSON lines naming `device`.
    public var sparkplug: SparkplugBinding?
    /// Where the twin's state comes from when the twin is an OPC UA server (`twin: {opcua: …}`,
    /// docs/opcua.md), read through the appliance's `opcua` feed.
    public var opcua: OPCUABinding?
    /// Things that are valid but probably not what was meant (an unquoted 5-digit address that
    /// looks like Modicon): `maps validate` prints them, nothing refuses the map for them.
    public var warnings: [MapIssue]

    public init(device: String, profile: ProfileID, plc: PLCEndpoint, limits: Limits,
                identity: [IdentitySpec] = [], status: StatusSpec?, registers: [RegisterSpec],
                twinKey: String? = nil, intents: [IntentSpec], allowPredicted: Bool = false,
                sourceFile: String = "", sha256: String = "", clock: PLCClock? = nil,
                description: String? = nil, keyLocations: [String: SourceLocation] = [:],
                sparkplug: SparkplugBinding? = nil, opcua: OPCUABinding? = nil, warnings: [MapIssue] = []) {
        self.sparkplug = sparkplug
        self.opcua = opcua
        self.warnings = warnings
        self.clock = clock
        self.description = description
        self.keyLocations = keyLocations
        self.device = device
        self.profile = profile
        self.plc = plc
        self.limits = limits
        self.identity = identity
        self.status = status
        self.registers = registers
        self.twinKey = twinKey
        self.intents = intents
        self.allowPredicted = allowPredicted
        self.sourceFile = sourceFile
        self.sha256 = sha256
    }

    /// Whether the physical status is derived from the poll (no `status:` register).
    @inlinable
    public var statusDerived: Bool { status == nil }

    /// The status names this device can report: those of `status.values`, or `operational`
    /// alone when the status is derived.
    public var statusNames: Set<String> {
        status.map { Set($0.values.values) } ?? ["operational"]
    }

    /// The register with this name, if any.
    public func register(named name: String) -> RegisterSpec? {
        registers.first { $0.name == name }
    }

    /// The intent with this name, if any.
    public func intent(named name: String) -> IntentSpec? {
        intents.first { $0.name == name }
    }
}

/// The time unit of a PLC clock register.
public enum PLCClockUnit: String, Sendable, Hashable, CaseIterable {
    case s, ms, us, ns

    /// Nanoseconds per unit.
    public var nanoseconds: Int64 {
        switch self {
        case .s: return 1_000_000_000
        case .ms: return 1_000_000
        case .us: return 1_000
        case .ns: return 1
        }
    }
}

/// A register holding the PLC's own wall clock as time since the Unix epoch (`clock:` in a map,
/// e.g. `{address: 200, type: uint64, unit: ms}`).
///
/// When a map names one, the poller decodes it with every poll and sets
/// `PhysicalState.plcWallNs` to `wallNs(from:)` of the decoded value: the instant the PLC says
/// its values were sampled, in ns since the epoch. Drift (docs/decision-rule.md, check 4) is then measured between
/// that instant and the twin's `ts`, so network and poll latency no longer count as drift, but
/// the PLC's own clock offset does (keep it NTP/PTP-synchronised). Ages stay on the appliance's
/// monotonic clock. A clock value that cannot be converted (`nil`) makes the poll's state bad.
public struct PLCClock: Sendable, Hashable {
    /// The register read (named `clock`); integer types or `float64`, never scaled.
    public var register: RegisterSpec
    public var unit: PLCClockUnit

    public init(register: RegisterSpec, unit: PLCClockUnit) {
        self.register = register
        self.unit = unit
    }

    /// The decoded register value as ns since the Unix epoch; `nil` if negative, not a number,
    /// or beyond the `Int64` range (year 2262).
    public func wallNs(from value: Value) -> Int64? {
        let per = unit.nanoseconds
        switch value {
        case .int(let i):
            guard i >= 0 else { return nil }
            let (r, o) = i.multipliedReportingOverflow(by: per)
            return o ? nil : r
        case .uint(let u):
            guard u <= UInt64(Int64.max) else { return nil }
            let (r, o) = Int64(u).multipliedReportingOverflow(by: per)
            return o ? nil : r
        case .double(let d):
            let ns = d * Double(per)
            guard ns.isFinite, ns >= 0, ns < 9.2e18 else { return nil }
            return Int64(ns.rounded())
        case .bool, .string:
            return nil
        }
    }

    /// The register value for a wall time, in the value case the decoder yields for the
    /// register's type: the inverse of `wallNs(from:)`, for the simulator and tests.
    public func value(wallNs: Int64) -> Value {
        switch register.type {
        case .float64, .float32: return .double(Double(wallNs) / Double(unit.nanoseconds))
        case .int16, .int32, .int64: return .int(wallNs / unit.nanoseconds)
        default: return .uint(UInt64(max(0, wallNs / unit.nanoseconds)))
        }
    }
}
