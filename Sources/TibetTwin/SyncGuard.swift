import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The library's version, written into the tokens `SyncGuard` makes.
public enum TibetTwinLibrary {
    public static let version = "0.2.0-dev"
}

/// What `SyncGuard.status()` reports, the fields of the original's `status()`.
public struct GuardStatus: Sendable, Hashable {
    /// Devices with a physical or a twin state.
    public var monitoredDevices: Int
    public var physicalStates: Int
    public var twinStates: Int
    public var checks: UInt64
    public var allowed: UInt64
    public var blocked: UInt64
    /// Blocked checks in percent of all checks, one decimal (0 before the first check).
    public var blockRate: Double
    /// The ad-hoc drift limit (`nil` for a guard built from maps, whose limits are per device).
    public var maxDriftMs: Double?
    /// Tokens made since start, and how many the ring still holds for `exportAudit()`.
    public var tibetTokens: UInt64
    public var tokensKept: Int
    /// States handed in for devices a map-built guard does not know (dropped).
    public var ignoredUpdates: UInt64

    public var json: JSONValue {
        [
            "monitored_devices": .int(Int64(monitoredDevices)),
            "physical_states": .int(Int64(physicalStates)),
            "twin_states": .int(Int64(twinStates)),
            "checks": .int(Int64(clamping: checks)),
            "allowed": .int(Int64(clamping: allowed)),
            "blocked": .int(Int64(clamping: blocked)),
            "block_rate": .double(blockRate),
            "max_drift_ms": maxDriftMs.map { .double($0) } ?? .null,
            "tibet_tokens": .int(Int64(clamping: tibetTokens)),
            "tokens_kept": .int(Int64(tokensKept)),
            "ignored_updates": .int(Int64(clamping: ignoredUpdates)),
        ]
    }
}

/// The original Python API in Swift (docs/library.md): hand in physical and twin states, ask whether an
/// intent may proceed, get an explained `SyncDecision` with a hash-linked TIBET token.
///
/// The rule is `DeviceGuard`'s, with the clock read from the injected `TimeSource` at each
/// `check`. Thread-safe (one lock); tokens are kept in a bounded ring so memory stays flat
/// however many checks are made.
public final class SyncGuard: Sendable {
    struct AdHoc: Sendable {
        var maxDriftMs: Double
        var maxAgeMs: Double?
        var maxSkewMs: Double
        var rearmMs: Double
        var tolerances: [String: [String: Double]]
        var allowedStatuses: [String]
        var safetyCritical: Bool
    }

    struct State: ~Copyable {
        var devices: [String: DeviceGuard]
        /// The chain head: ids are `<idPrefix>-<n>` as `TokenChain` makes them; the last token
        /// is number `tokenCount`, its hash `lastDigest`.
        let chain: CheckChain
        var lastDigest: Digest256?
        var tokenCount: UInt64 = 0
        var ring: TokenRing
        var checks: UInt64 = 0
        var allowed: UInt64 = 0
        var blocked: UInt64 = 0
        var ignoredUpdates: UInt64 = 0
        /// Where each check's hashed bytes are written (reused: no allocation per check).
        let scratch = ByteSink()
        /// Where a permitted decision's text is written before it is kept.
        let erinScratch = ByteSink(capacity: 1024)
    }

    let state: Mutex<State>
    let adHoc: AdHoc?
    let clock: any TimeSource
    let safetyCritical: [String: Bool]

    /// A guard in the original's shape: every device judged by the same drift limit (and
    /// `max_age_ms` = `maxDriftMs` unless given), `valueTolerances` per device and value name,
    /// intents created on first use, each allowing `allowedStatuses`. `rearmMs` 0 means a passing
    /// check permits at once (the original had no re-arm). `auditCapacity` bounds the token ring.
    public init(maxDriftMs: Double = 1000, valueTolerances: [String: [String: Double]] = [:],
                maxAgeMs: Double? = nil, maxSkewMs: Double = 1000, rearmMs: Double = 0,
                allowedStatuses: [String] = ["operational"], safetyCritical: Bool = true,
                node: String = "tibet-twin", host: String? = nil,
                clock: any TimeSource = SystemTimeSource(), auditCapacity: Int = 4096) {
        adHoc = AdHoc(maxDriftMs: maxDriftMs, maxAgeMs: maxAgeMs, maxSkewMs: maxSkewMs, rearmMs: rearmMs,
                      tolerances: valueTolerances, allowedStatuses: allowedStatuses, safetyCritical: safetyCritical)
        self.clock = clock
        self.safetyCritical = [:]
        let start = clock.now()
        state = Mutex(State(devices: [:], chain: SyncGuard.chain(node: node, host: host, start: start),
                            ring: TokenRing(capacity: auditCapacity)))
    }

    /// A guard for parsed register maps: each device judged by its own map (limits, tolerances,
    /// identity, statuses, `requires`, latches, re-arm). States for other devices are dropped.
    public init(maps: [DeviceMap], node: String = "tibet-twin", host: String? = nil,
                clock: any TimeSource = SystemTimeSource(), auditCapacity: Int = 4096) throws(MapErrors) {
        try MapLoader.crossCheck(maps)
        var devices: [String: DeviceGuard] = [:]
        var critical: [String: Bool] = [:]
        for m in maps {
            devices[m.device] = DeviceGuard(map: m)
            critical[m.device] = IndustryProfile.named(m.profile).safetyCritical
        }
        adHoc = nil
        self.clock = clock
        safetyCritical = critical
        let start = clock.now()
        state = Mutex(State(devices: devices, chain: SyncGuard.chain(node: node, host: host, start: start),
                            ring: TokenRing(capacity: auditCapacity)))
    }

    /// The chain head's constant texts: actor `jis:<node>`, the host (this machine's name unless
    /// given), ids `<node>-<start in ms, base 36>-<n>`.
    static func chain(node: String, host: String?, start: ClockReading) -> CheckChain {
        CheckChain(idPrefix: idPrefix(node, start), node: node, actor: "jis:\(node)", host: host ?? hostName())
    }

    static func idPrefix(_ node: String, _ start: ClockReading) -> String {
        "\(node)-\(String(UInt64(bitPattern: start.wallNs / 1_000_000), radix: 36))"
    }

    static func hostName() -> String {
        var buf = [CChar](repeating: 0, count: 256)
        guard gethostname(&buf, buf.count - 1) == 0 else { return "" }
        return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    // MARK: - States in

    /// Hands in the latest physical state of `state.device`. Returns false if a map-built guard
    /// does not know the device (the state is dropped and counted).
    @discardableResult
    public func updatePhysical(_ state: PhysicalState) -> Bool {
        self.state.withLock { s in
            guard ensureDevice(state.device, &s) else { s.ignoredUpdates += 1; return false }
            return s.devices[state.device]!.updatePhysical(state)
        }
    }

    /// Hands in the latest twin state of `state.device`. Returns false if a map-built guard does
    /// not know the device (the state is dropped and counted).
    @discardableResult
    public func updateTwin(_ state: TwinState) -> Bool {
        self.state.withLock { s in
            guard ensureDevice(state.device, &s) else { s.ignoredUpdates += 1; return false }
            return s.devices[state.device]!.updateTwin(state)
        }
    }

    /// The original's call: physical values measured at `timestamp` (ns since the epoch; default
    /// now), all of Good quality, arriving now.
    @discardableResult
    public func updatePhysical(device: String, status: String, values: [String: Double],
                               timestamp: Int64? = nil) -> Bool {
        let now = clock.now()
        let at = timestamp.map { ts in
            ClockReading(monotonicNs: now.monotonicNs &- (now.wallNs &- ts), wallNs: ts)
        } ?? now
        var readings: [String: Reading] = [:]
        readings.reserveCapacity(values.count)
        for (k, v) in values { readings[k] = Reading(value: .double(v), quality: .good) }
        return updatePhysical(PhysicalState(device: device, status: status, values: readings, time: at))
    }

    /// The original's call: the twin's belief as of `timestamp` (its `ts`, ns since the epoch;
    /// default now), received now.
    @discardableResult
    public func updateTwin(device: String, status: String, values: [String: Double], timestamp: Int64? = nil,
                           seq: UInt64? = nil, predicted: Bool = false) -> Bool {
        let now = clock.now()
        return updateTwin(TwinState(device: device, tsNs: timestamp ?? now.wallNs, seq: seq, status: status,
                                    values: values, predicted: predicted, received: now))
    }

    /// Creates an ad-hoc device on first use; false for an unknown device of a map-built guard.
    func ensureDevice(_ device: String, _ s: inout State) -> Bool {
        if s.devices[device] != nil { return true }
        guard let a = adHoc else { return false }
        let tol = a.tolerances[device] ?? [:]
        let map = DeviceMap(
            device: device, profile: .port, plc: PLCEndpoint(host: ""),
            limits: Limits(maxDriftMs: a.maxDriftMs, maxAgeMs: a.maxAgeMs, maxSkewMs: a.maxSkewMs, rearmMs: a.rearmMs),
            status: StatusSpec(register: RegisterSpec(name: "status", address: 0), values: [:]),
            registers: tol.keys.sorted().map { RegisterSpec(name: $0, address: 0, type: .float64, tolerance: tol[$0]) },
            intents: [])
        s.devices[device] = DeviceGuard(map: map)
        return true
    }

    // MARK: - Checks

    /// Whether `intent` may proceed on `device` now: evaluates the device at the clock's now,
    /// explains the verdict and records it as a TIBET token (hash-linked to the previous one).
    /// Never throws: an unknown device or intent is a blocked decision.
    public func check(device: String, intent: String) -> SyncDecision {
        let now = clock.now()
        return state.withLock { s in
            var decision: SyncDecision
            var twinSeq: UInt64?
            var mapSHA: String?
            var sorted: [(String, Double)]?
            var erin: ErinText?
            // One hash of the name when the device is known (the common case), not three.
            var slot = s.devices.index(forKey: device)
            if slot == nil, ensureDevice(device, &s) { slot = s.devices.index(forKey: device) }
            if let slot {
                (decision, twinSeq, mapSHA, sorted, erin) = decide(&s.devices.values[slot], intent: intent, now: now,
                                                                   erinScratch: s.erinScratch)
            } else {
                decision = SyncGuard.unknown(device: device, intent: intent, check: .physical,
                                             detail: "device \(device) is not in the maps — cannot verify sync")
            }
            s.checks += 1
            if decision.allowed { s.allowed += 1 } else { s.blocked += 1 }
            s.tokenCount += 1
            let record = CheckRecord(
                chain: s.chain, serial: s.tokenCount, now: now, decision: decision, sortedValues: sorted, erin: erin,
                mapSHA256: mapSHA, twinSeq: twinSeq,
                safetyCritical: adHoc?.safetyCritical ?? safetyCritical[device] ?? true,
                prevDigest: s.lastDigest, scratch: s.scratch)
            s.lastDigest = record.digest
            s.ring.append(record)
            decision.record = record
            return decision
        }
    }

    /// Evaluates one device in place and explains the intent's verdict; with it, the decision's
    /// values in canonical order when the guard has them sorted, and for a permit its canonical
    /// text kept from the last check with the same states (made and kept now if there is none).
    func decide(_ g: inout DeviceGuard, intent: String, now: ClockReading, erinScratch: ByteSink)
        -> (SyncDecision, UInt64?, String?, [(String, Double)]?, ErinText?) {
        var index = g.intentIndex(named: intent)
        if index == nil, let a = adHoc {
            index = g.addIntent(IntentSpec(name: intent, coil: 0, allowedStatuses: a.allowedStatuses))
        }
        g.evaluate(now: now, auditOK: true)
        guard let index else {
            let decision = SyncGuard.unknown(device: g.map.device, intent: intent, check: .intent,
                                             detail: "intent \(intent) is not defined for \(g.map.device)")
            return (decision, g.twin?.seq, g.map.sha256.isEmpty ? nil : g.map.sha256, nil, nil)
        }
        let decision = g.explain(intent: index)
        let sorted = g.deltaCache?.sorted
        var erin: ErinText?
        if decision.allowed {
            if let kept = g.deltaCache?.erin[index], kept.fits(decision) {
                erin = kept
            } else if let made = ErinText(decision, sortedValues: sorted, scratch: erinScratch) {
                g.deltaCache?.erin[index] = made
                erin = made
            }
        }
        return (decision, g.twin?.seq, g.map.sha256.isEmpty ? nil : g.map.sha256, sorted, erin)
    }

    static func unknown(device: String, intent: String, check: GuardCheck, detail: String) -> SyncDecision {
        SyncDecision(device: device, intent: intent, allowed: false, reasonCode: check.code,
                     reason: "BLOCKED: " + detail, failing: [FailingCheck(check: check, detail: detail)],
                     delta: StateDelta())
    }

    /// Clears a latched intent (operator reset); returns whether it was latched.
    @discardableResult
    public func reset(device: String, intent: String) -> Bool {
        state.withLock { s in
            guard var g = s.devices.removeValue(forKey: device) else { return false }
            let r = g.reset(intent: intent) ?? false
            s.devices[device] = g
            return r
        }
    }

    // MARK: - Out

    /// The decision tokens still held, oldest first (at most `auditCapacity`; the oldest are
    /// dropped first). Each links to its predecessor by `parent_id` and `prev_hash`.
    public func exportAudit() -> [TibetToken] {
        state.withLock { $0.ring.ordered }.map(\.token)
    }

    /// Counters in the original's shape: devices, checks, allowed, blocked, block rate.
    public func status() -> GuardStatus {
        state.withLock { s in
            var phys = 0, twin = 0, monitored = 0
            for g in s.devices.values {
                let p = g.latestPhysical != nil
                let t = g.latestTwin != nil
                if p { phys += 1 }
                if t { twin += 1 }
                if p || t { monitored += 1 }
            }
            let rate = s.checks == 0 ? 0 : (Double(s.blocked) / Double(s.checks) * 1000).rounded() / 10
            return GuardStatus(monitoredDevices: monitored, physicalStates: phys, twinStates: twin,
                               checks: s.checks, allowed: s.allowed, blocked: s.blocked, blockRate: rate,
                               maxDriftMs: adHoc?.maxDriftMs, tibetTokens: s.tokenCount,
                               tokensKept: s.ring.count, ignoredUpdates: s.ignoredUpdates)
        }
    }
}

/// The last `capacity` check records, in a fixed-size ring: memory stays flat after any number
/// of checks.
struct TokenRing: Sendable {
    private var buffer: [CheckRecord] = []
    private var head = 0
    let capacity: Int

    init(capacity: Int) {
        self.capacity = Swift.max(capacity, 0)
        buffer.reserveCapacity(Swift.min(self.capacity, 1 << 16))
    }

    var count: Int { buffer.count }

    mutating func append(_ record: CheckRecord) {
        guard capacity > 0 else { return }
        if buffer.count < capacity {
            buffer.append(record)
        } else {
            buffer[head] = record
            head = (head + 1) % capacity
        }
    }

    var ordered: [CheckRecord] { Array(buffer[head...]) + Array(buffer[..<head]) }
}
