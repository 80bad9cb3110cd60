/// What one device contributes to a `PermitTable`: the permits granted now and the diagnostics
/// the interlock PLC can read beside them.
public struct DeviceDiagnostics: Sendable, Hashable {
    /// The device's reason code (docs/decision-rule.md): `.ok` when its intents permit, otherwise the reason
    /// the guard reports for the device. `nil` means "not evaluated" (served as 65535), and then
    /// no permit of the device is served as 1, whatever `permits` says.
    public var reason: ReasonCode?
    /// |physical time − twin ts| in ms; `nil` when unknown.
    public var driftMs: Double?
    public var physicalAgeMs: Double?
    public var twinAgeMs: Double?
    /// The intents permitted now, by name. Every intent not named here is served as 0.
    public var permits: Set<String>
    /// Blocks (permit drops) since start; the register carries the low 16 bits.
    public var blockCount: UInt64

    /// One device's verdict; only the intents named in `permits` are served as 1.
    public init(reason: ReasonCode?, driftMs: Double? = nil, physicalAgeMs: Double? = nil,
                twinAgeMs: Double? = nil, permits: Set<String> = [], blockCount: UInt64 = 0) {
        self.reason = reason
        self.driftMs = driftMs
        self.physicalAgeMs = physicalAgeMs
        self.twinAgeMs = twinAgeMs
        self.permits = permits
        self.blockCount = blockCount
    }
}

/// One evaluation's verdict as the interlock serves it: an immutable value, already encoded as
/// the bit and register arrays of the `InterlockLayout` (docs/interlock.md).
///
/// The guard loop builds one per evaluation and publishes it; the interlock server answers each
/// request from exactly one table, so a reply never mixes two evaluations. Coils and discrete
/// inputs are both served from `bits`; input and holding registers both from `registers`.
public struct PermitTable: Sendable, Hashable {
    public let layout: InterlockLayout
    /// Coil (and discrete-input) values by address, 0 or 1; `count == layout.coilCount`.
    public let bits: [UInt8]
    /// Input (and holding) register values by address; `count == layout.registerCount`.
    public let registers: [UInt16]

    /// Encodes a verdict. A device missing from `devices`, or whose `reason` is nil, is served
    /// as not evaluated with every permit 0; names not in the layout are ignored. Milliseconds
    /// are rounded and saturate at 65534; unknown (nil, NaN) is 65535.
    public init(layout: InterlockLayout, heartbeat: UInt16, healthy: Bool,
                devices: [String: DeviceDiagnostics]) {
        var bits = [UInt8](repeating: 0, count: layout.coilCount)
        var regs = [UInt16](repeating: 0, count: layout.registerCount)
        PermitTable.encodeHeader(layout: layout, heartbeat: heartbeat, healthy: healthy, registers: &regs)
        for d in layout.devices {
            let diag = devices[d.name]
            PermitTable.encode(device: d, reason: diag?.reason, driftMs: diag?.driftMs, physicalAgeMs: diag?.physicalAgeMs,
                               twinAgeMs: diag?.twinAgeMs, blockCount: diag?.blockCount ?? 0,
                               permitted: { diag?.permits.contains(d.intents[$0].name) ?? false },
                               bits: &bits, registers: &regs)
        }
        self.layout = layout
        self.bits = bits
        self.registers = regs
    }

    /// A table from arrays already encoded for `layout` (the guard loop keeps its image and
    /// rewrites only the devices that changed, with `encode` and `encodeHeader`).
    public init(layout: InterlockLayout, bits: [UInt8], registers: [UInt16]) {
        precondition(bits.count == layout.coilCount && registers.count == layout.registerCount,
                     "permit image does not fit its layout")
        self.layout = layout
        self.bits = bits
        self.registers = registers
    }

    /// Writes the fixed registers: heartbeat, health, device count.
    public static func encodeHeader(layout: InterlockLayout, heartbeat: UInt16, healthy: Bool, registers regs: inout [UInt16]) {
        regs[Int(InterlockLayout.Register.heartbeat)] = heartbeat
        regs[Int(InterlockLayout.Register.health)] = healthy ? 1 : 0
        regs[Int(InterlockLayout.Register.deviceCount)] = UInt16(truncatingIfNeeded: layout.devices.count)
    }

    /// Writes one device's coils and register block in place, overwriting what was there. A
    /// `reason` of nil is "not evaluated": every permit 0, reason and ages unknown (65535).
    /// `permitted(j)` says whether the device's j-th intent in coil order (`d.intents[j]`) is
    /// permitted; it is only asked when `reason` is not nil. Milliseconds are rounded and
    /// saturate at 65534; unknown (nil, NaN) is 65535.
    public static func encode(device d: InterlockLayout.Device, reason: ReasonCode?, driftMs: Double?, physicalAgeMs: Double?,
                              twinAgeMs: Double?, blockCount: UInt64, permitted: (Int) -> Bool,
                              bits: inout [UInt8], registers regs: inout [UInt16]) {
        typealias R = InterlockLayout.Register
        let b = Int(d.registerBase)
        regs[b + R.blockCount] = UInt16(truncatingIfNeeded: blockCount)
        guard let reason else {
            regs[b + R.reasonCode] = InterlockLayout.unknown
            regs[b + R.driftMs] = InterlockLayout.unknown
            regs[b + R.physicalAgeMs] = InterlockLayout.unknown
            regs[b + R.twinAgeMs] = InterlockLayout.unknown
            regs[b + R.permitBits] = 0
            for intent in d.intents { bits[Int(intent.coil)] = 0 }
            return
        }
        regs[b + R.reasonCode] = reason.rawValue
        regs[b + R.driftMs] = PermitTable.milliseconds(driftMs)
        regs[b + R.physicalAgeMs] = PermitTable.milliseconds(physicalAgeMs)
        regs[b + R.twinAgeMs] = PermitTable.milliseconds(twinAgeMs)
        var mask: UInt16 = 0
        for (j, intent) in d.intents.enumerated() {
            let on = permitted(j)
            bits[Int(intent.coil)] = on ? 1 : 0
            if on { mask |= 1 << UInt16(intent.bit) }
        }
        regs[b + R.permitBits] = mask
    }

    /// Every permit 0, every device not evaluated, health 0: what the interlock serves from start
    /// until the first evaluation is published.
    public static func allBlocked(layout: InterlockLayout, heartbeat: UInt16 = 0) -> PermitTable {
        PermitTable(layout: layout, heartbeat: heartbeat, healthy: false, devices: [:])
    }

    /// This table with every permit 0, every reason "not evaluated" and health 0, keeping the
    /// heartbeat, drift, ages and block counts: what is served during the shutdown grace period.
    public func blockingAll() -> PermitTable {
        typealias R = InterlockLayout.Register
        var regs = registers
        regs[Int(R.health)] = 0
        for d in layout.devices {
            let b = Int(d.registerBase)
            regs[b + R.reasonCode] = InterlockLayout.unknown
            regs[b + R.permitBits] = 0
        }
        return PermitTable(layout: layout, bits: [UInt8](repeating: 0, count: bits.count), registers: regs)
    }

    /// The heartbeat served in input register 0.
    public var heartbeat: UInt16 { registers[Int(InterlockLayout.Register.heartbeat)] }

    /// Whether input register 1 says the guard is healthy.
    public var healthy: Bool { registers[Int(InterlockLayout.Register.health)] == 1 }

    /// The permit served for `device`.`intent`, or nil if the layout has no such intent.
    public func permit(device: String, intent: String) -> Bool? {
        guard let d = layout.device(named: device), let i = d.intents.first(where: { $0.name == intent }) else {
            return nil
        }
        return bits[Int(i.coil)] == 1
    }

    /// Whether any permit is 1.
    public var anyPermit: Bool { bits.contains(1) }

    /// A duration in ms as a register: rounded, saturating at 65534; unknown (nil, NaN) 65535;
    /// negative 0.
    static func milliseconds(_ ms: Double?) -> UInt16 {
        guard let ms, !ms.isNaN else { return InterlockLayout.unknown }
        if ms <= 0 { return 0 }
        if ms >= 65533.5 { return 65534 }
        return UInt16(ms.rounded())
    }
}
