import Foundation
import Logging
import Synchronization
import TibetTwin
#if canImport(Glibc)
import Glibc
#endif

/// The audit chain as the guard loop sees it (docs/audit.md): a health flag read on every evaluation
/// without locks, and a queue that acknowledges each record once it is durable. `AuditStore`
/// is the real one.
public protocol AuditTrail: Sendable {
    /// Writes and fsyncs succeed. While false every permit blocks with `AUDIT`.
    var isHealthy: Bool { get }
    /// Queues a record and returns at once; `onDurable` is called once, from the writer's
    /// thread, when the token is on disk or cannot be.
    func submit(_ record: AuditRecord, onDurable: (@Sendable (AuditAck) -> Void)?)
}

extension AuditStore: AuditTrail {}

/// A new set of maps to judge by (SIGHUP), already validated.
public struct GuardReload: Sendable {
    public var maps: [DeviceMap]
    public var layout: InterlockLayout

    public init(maps: [DeviceMap], layout: InterlockLayout) {
        self.maps = maps
        self.layout = layout
    }
}

/// What a reload changed, by device name.
public struct GuardReloadResult: Sendable, Hashable {
    public var kept: [String] = []
    public var replaced: [String] = []
    public var added: [String] = []
    public var removed: [String] = []

    /// Devices whose poller must (re)start: replaced and added.
    public var restarted: [String] { replaced + added }
}

/// Something the guard loop is asked to do besides judging states.
enum GuardCommand: Sendable {
    case auditAck(id: UInt64, ok: Bool)
    case reset(device: String, intent: String?, client: String, done: @Sendable (ResetOutcome) -> Void)
    case status(done: @Sendable (StatusSnapshot) -> Void)
    case reload(GuardReload, done: @Sendable (GuardReloadResult) -> Void)
}

/// The guard loop of DESIGN.md: one thread, the only writer of guard state.
///
/// Producers (poll workers, twin feeds, HTTP, the audit writer's acknowledgements) put states
/// and commands into the inbox — a lock and a wake-up; a burst coalesces to the latest state per
/// device — and never wait for the guard. The loop evaluates the devices whose state arrived at
/// once, and every device on a tick (`max(10 ms, max_age_ms / 4)`, the smallest over devices),
/// so a silent source still trips. After each evaluation it publishes a new `PermitTable`:
/// a **drop** is published at once and its token submitted after; a **rise** is submitted to
/// the audit chain first and published only when the token is durable (while the chain is
/// unhealthy every permit blocks with `AUDIT`). The heartbeat counts ticks; the systemd watchdog
/// is pinged from the tick, so a hung loop freezes both.
public final class GuardLoop: @unchecked Sendable {
    /// What the loop needs besides the maps.
    public struct Configuration: Sendable {
        public var node: String
        /// A `checkpoint` token with the whole permit table this often; 0 = never.
        public var checkpointS: Int
        /// Ticks missing this long make `/healthz` say the guard is not alive.
        public var aliveWithinMs: Double
        /// At most one `identity_failed` token per device this often: a client flapping between
        /// good and bad lines must not flood the chain. Episodes in between are counted in the next.
        public var identityAuditIntervalMs: Int

        public init(node: String, checkpointS: Int = 60, aliveWithinMs: Double = 2000, identityAuditIntervalMs: Int = 60_000) {
            self.node = node
            self.checkpointS = checkpointS
            self.aliveWithinMs = aliveWithinMs
            self.identityAuditIntervalMs = identityAuditIntervalMs
        }
    }

    // MARK: Shared with producers (under `cond`'s lock)

    private let cond = MonotonicCondition()
    private var inPhysical: [String: PhysicalState] = [:]
    private var inTwin: [String: TwinState] = [:]
    private var inCommands: [GuardCommand] = []
    private var stopRequested = false
    private var thread: pthread_t?

    // MARK: Read without locks by HTTP and health

    private let lastTickMono = Atomic<Int64>(0)
    private let heartbeatNow = Atomic<UInt16>(0)
    private let readyFlag = Atomic<Bool>(false)
    private let auditHealthyNow = Atomic<Bool>(false)

    // MARK: Owned by the loop thread

    private var slots: [Slot] = []
    private var slotIndex: [String: Int] = [:]
    private var layout: InterlockLayout
    private var heartbeat: UInt16 = 0
    private var tickNs: Int64 = 100_000_000
    private var nextTickNs: Int64 = 0
    private var nextCheckpointNs: Int64 = 0
    private var nextAuditId: UInt64 = 0
    private var pendingAcks: [UInt64: (device: String, intent: Int)] = [:]
    private var lastWatchdogNs: Int64 = 0
    private var lastStatusNs: Int64 = 0
    private var lastStatusText = ""
    private var lastPublished: PermitTable?

    let config: Configuration
    let clock: any TimeSource
    let audit: any AuditTrail
    let publish: @Sendable (PermitTable) -> Void
    let metrics: ApplianceMetrics
    let notifier: SystemdNotifier
    let logger: Logger

    /// One device's guard and what the interlock serves for it.
    struct Slot {
        var guardState: DeviceGuard
        var map: DeviceMap
        /// Per intent: the permit the interlock serves.
        var published: [Bool]
        /// Per intent: the audit id of a rise waiting for its durable acknowledgement.
        var pendingRise: [UInt64?]
        /// Per intent: a rise token was submitted and no drop token has followed yet.
        var riseRecorded: [Bool]
        /// Identity or signature failing at the last evaluation (audited on the transition).
        var identityFailing = false
        /// When the last `identity_failed` token of this device was submitted (monotonic).
        var identityAuditedNs: Int64?
        /// Failure episodes since that token that were not written (rate limit).
        var identityEpisodesFolded = 0
        var evaluate = false

        init(map: DeviceMap) {
            self.map = map
            guardState = DeviceGuard(map: map)
            published = Array(repeating: false, count: map.intents.count)
            pendingRise = Array(repeating: nil, count: map.intents.count)
            riseRecorded = Array(repeating: false, count: map.intents.count)
        }
    }

    /// A loop over `maps` (in layout order). Nothing runs until `start()`; the interlock keeps
    /// serving `allBlocked` until the first evaluation is published.
    public init(configuration: Configuration, maps: [DeviceMap], layout: InterlockLayout,
                audit: any AuditTrail, metrics: ApplianceMetrics, notifier: SystemdNotifier = SystemdNotifier(socketPath: nil),
                clock: any TimeSource = SystemTimeSource(), logger: Logger = Logger(label: "tibet-twin.guard"),
                publish: @escaping @Sendable (PermitTable) -> Void) {
        self.config = configuration
        self.layout = layout
        self.audit = audit
        self.metrics = metrics
        self.notifier = notifier
        self.clock = clock
        self.logger = logger
        self.publish = publish
        install(maps)
    }

    private func install(_ maps: [DeviceMap]) {
        slots = maps.map(Slot.init)
        slotIndex = Dictionary(uniqueKeysWithValues: maps.enumerated().map { ($1.device, $0) })
        tickNs = Self.tickNs(maps)
    }

    /// The evaluation tick: `max(10 ms, max_age_ms / 4)`, the smallest over devices.
    static func tickNs(_ maps: [DeviceMap]) -> Int64 {
        let ms = maps.map(\.limits.tickMs).min() ?? 100
        return Int64(max(10, ms) * 1_000_000)
    }

    // MARK: Producers

    /// Hands in a poll's result (the poller's sink). Never blocks beyond the inbox lock.
    public func submit(physical state: PhysicalState) {
        cond.withLock { inPhysical[state.device] = state }
        cond.signal()
    }

    /// Hands in a validated twin line (the feeds' sink). Never blocks beyond the inbox lock.
    public func submit(twin state: TwinState) {
        cond.withLock { inTwin[state.device] = state }
        cond.signal()
    }

    private func submit(_ command: GuardCommand) {
        cond.withLock { inCommands.append(command) }
        cond.signal()
    }

    /// Clears latches (operator reset, docs/decision-rule.md); the reset is audited first.
    public func reset(device: String, intent: String?, client: String, done: @escaping @Sendable (ResetOutcome) -> Void) {
        submit(.reset(device: device, intent: intent, client: client, done: done))
    }

    /// A status snapshot of what is published now, built on the loop thread.
    public func status(done: @escaping @Sendable (StatusSnapshot) -> Void) {
        submit(.status(done: done))
    }

    /// Replaces the maps (SIGHUP, already validated): unchanged devices keep their state and
    /// permits; replaced and new devices start blocked and re-arm; removed devices are dropped.
    public func reload(_ reload: GuardReload, done: @escaping @Sendable (GuardReloadResult) -> Void) {
        submit(.reload(reload, done: done))
    }

    /// Whether the first full evaluation has been published.
    public var isReady: Bool { readyFlag.load(ordering: .acquiring) }

    /// The heartbeat served now.
    public var currentHeartbeat: UInt16 { heartbeatNow.load(ordering: .relaxed) }

    /// Liveness for `/healthz`.
    public func health() -> HealthSnapshot {
        let last = lastTickMono.load(ordering: .relaxed)
        let since = last == 0 ? Double.infinity : Double(clock.now().monotonicNs - last) / 1e6
        return HealthSnapshot(guardAlive: since <= config.aliveWithinMs, auditHealthy: audit.isHealthy,
                              ready: isReady, heartbeat: currentHeartbeat, sinceTickMs: since)
    }

    // MARK: Thread

    /// Starts the loop thread.
    public func start() throws(GuardLoopError) {
        let box = Unmanaged.passRetained(self)
        var t = pthread_t()
        let rc = pthread_create(&t, nil, { arg in
            let loop = Unmanaged<GuardLoop>.fromOpaque(arg!).takeRetainedValue()
            loop.run()
            return nil
        }, box.toOpaque())
        guard rc == 0 else {
            box.release()
            throw GuardLoopError(errno: rc)
        }
        cond.withLock { thread = t }
    }

    /// Stops the loop and waits for its thread. Permits stay as last published: the caller
    /// (shutdown) has the interlock serve zeros first.
    public func stop() {
        let t: pthread_t? = cond.withLock {
            stopRequested = true
            let t = thread
            thread = nil
            return t
        }
        cond.signal()
        if let t { pthread_join(t, nil) }
    }

    private func run() {
        setThreadName("guard")
        let start = clock.now()
        nextTickNs = start.monotonicNs
        nextCheckpointNs = start.monotonicNs + Int64(config.checkpointS) * 1_000_000_000
        publishTable(PermitTable.allBlocked(layout: layout))
        while true {
            var physical: [String: PhysicalState] = [:]
            var twin: [String: TwinState] = [:]
            var commands: [GuardCommand] = []
            let stop: Bool = cond.withLock {
                while !stopRequested && inPhysical.isEmpty && inTwin.isEmpty && inCommands.isEmpty
                        && clock.now().monotonicNs < nextTickNs {
                    cond.wait(untilMonotonicNs: nextTickNs)
                }
                swap(&physical, &inPhysical)
                swap(&twin, &inTwin)
                swap(&commands, &inCommands)
                return stopRequested
            }
            if stop { break }
            iterate(physical: physical, twin: twin, commands: commands)
        }
    }

    // MARK: One iteration

    /// What an evaluation changed and must be done after publishing.
    private struct Pending {
        var drops: [(slot: Int, intent: Int, why: String)] = []
        /// Drop records built before their slot went away (reload), submitted after publishing.
        var records: [AuditRecord] = []
        var tableChanged = false
        /// Replies that may only go out once the table they changed is on the coils (reload).
        var afterPublish: [() -> Void] = []
    }

    private func iterate(physical: [String: PhysicalState], twin: [String: TwinState], commands: [GuardCommand]) {
        for (device, state) in physical {
            if let s = slotIndex[device] {
                slots[s].guardState.updatePhysical(state)
                slots[s].evaluate = true
            }
        }
        for (device, state) in twin {
            if let s = slotIndex[device] {
                slots[s].guardState.updateTwin(state)
                slots[s].evaluate = true
            }
        }
        let now = clock.now()
        var pending = Pending()
        var statusRequests: [@Sendable (StatusSnapshot) -> Void] = []
        for command in commands {
            handle(command, now: now, pending: &pending, statusRequests: &statusRequests)
        }
        let auditOK = audit.isHealthy
        auditHealthyNow.store(auditOK, ordering: .relaxed)
        let tick = now.monotonicNs >= nextTickNs
        var evaluated = 0
        for s in slots.indices where tick || slots[s].evaluate {
            slots[s].evaluate = false
            evaluate(slot: s, now: now, auditOK: auditOK, pending: &pending)
            evaluated += slots[s].map.intents.count
        }
        metrics.countDecisions(evaluated)
        if tick {
            heartbeat &+= 1
            nextTickNs += tickNs
            if nextTickNs <= now.monotonicNs { nextTickNs = now.monotonicNs + tickNs }
        }
        if tick || pending.tableChanged {
            publishTable(buildTable(healthy: auditOK))
        }
        for reply in pending.afterPublish { reply() }
        // Drops are on the coils now; their tokens follow.
        for d in pending.drops {
            submitDrop(slot: d.slot, intent: d.intent, why: d.why, now: now)
        }
        for r in pending.records {
            audit.submit(r) { [metrics] ack in if !ack.isDurable { metrics.countAuditFailure() } }
        }
        if tick {
            lastTickMono.store(now.monotonicNs, ordering: .relaxed)
            heartbeatNow.store(heartbeat, ordering: .relaxed)
            metrics.countTick(heartbeat: heartbeat)
            afterTick(now: now, auditOK: auditOK)
        }
        if !statusRequests.isEmpty {
            let snap = snapshot(now: now)
            for r in statusRequests { r(snap) }
        }
    }

    private func afterTick(now: ClockReading, auditOK: Bool) {
        if !readyFlag.load(ordering: .relaxed) {
            readyFlag.store(true, ordering: .releasing)
            try? notifier.ready(status: statusLine(auditOK: auditOK))
            logger.info("guard ready", metadata: ["devices": "\(slots.count)", "tick_ms": "\(tickNs / 1_000_000)"])
        }
        if let usec = notifier.watchdogUsec, now.monotonicNs - lastWatchdogNs >= Int64(usec) * 1000 / 4 {
            lastWatchdogNs = now.monotonicNs
            try? notifier.watchdog()
        }
        if notifier.isActive, now.monotonicNs - lastStatusNs >= 1_000_000_000 {
            let line = statusLine(auditOK: auditOK)
            if line != lastStatusText {
                lastStatusNs = now.monotonicNs
                lastStatusText = line
                try? notifier.status(line)
            }
        }
        if config.checkpointS > 0, now.monotonicNs >= nextCheckpointNs {
            nextCheckpointNs = now.monotonicNs + Int64(config.checkpointS) * 1_000_000_000
            audit.submit(AuditRecord(action: .checkpoint, erin: permitTableJSON(), time: now), onDurable: nil)
        }
    }

    private func statusLine(auditOK: Bool) -> String {
        let permits = slots.reduce(0) { $0 + $1.published.filter { $0 }.count }
        let intents = slots.reduce(0) { $0 + $1.published.count }
        return "\(slots.count) devices, \(permits)/\(intents) permits, audit \(auditOK ? "ok" : "FAILING")"
    }

    // MARK: Evaluation and the rise/drop rule

    private func evaluate(slot s: Int, now: ClockReading, auditOK: Bool, pending: inout Pending) {
        // Identity and signature change only with new states: a tick alone need not look again.
        let newStates = slots[s].guardState.hasUnevaluatedState
        slots[s].guardState.evaluate(now: now, auditOK: auditOK)
        for i in slots[s].published.indices {
            let v = slots[s].guardState.verdict(intent: i)
            if !v.permit {
                if slots[s].published[i] {
                    slots[s].published[i] = false
                    pending.tableChanged = true
                    pending.drops.append((s, i, "blocked"))
                    metrics.countDrop(reason: v.reason)
                } else if slots[s].pendingRise[i] != nil {
                    // The rise never reached the coils; its token is on its way, so a drop follows it.
                    slots[s].pendingRise[i] = nil
                    pending.drops.append((s, i, "blocked before the rise was durable"))
                }
            } else if !slots[s].published[i] && slots[s].pendingRise[i] == nil {
                submitRise(slot: s, intent: i, now: now)
            }
        }
        if newStates { checkIdentity(slot: s, now: now) }
    }

    private func submitRise(slot s: Int, intent i: Int, now: ClockReading) {
        nextAuditId += 1
        let id = nextAuditId
        slots[s].pendingRise[i] = id
        pendingAcks[id] = (slots[s].map.device, i)
        let record = permitRecord(slot: s, intent: i, rise: true, why: "every check held for rearm_ms", now: now)
        slots[s].riseRecorded[i] = true
        audit.submit(record) { [weak self] ack in
            self?.submit(.auditAck(id: id, ok: ack.isDurable))
        }
    }

    /// The token of a drop, if a rise token was written before it (so the chain reads rise,
    /// drop, rise … per intent).
    private func submitDrop(slot s: Int, intent i: Int, why: String, now: ClockReading) {
        guard let record = dropRecord(slot: s, intent: i, why: why, now: now) else { return }
        audit.submit(record) { [metrics] ack in if !ack.isDurable { metrics.countAuditFailure() } }
    }

    private func dropRecord(slot s: Int, intent i: Int, why: String, now: ClockReading) -> AuditRecord? {
        guard slots[s].riseRecorded[i] else { return nil }
        slots[s].riseRecorded[i] = false
        return permitRecord(slot: s, intent: i, rise: false, why: why, now: now)
    }

    private func permitRecord(slot s: Int, intent i: Int, rise: Bool, why: String, now: ClockReading) -> AuditRecord {
        let slot = slots[s]
        let decision = slot.guardState.decision(intent: i)
        var erin = decision.erin.objectValue ?? [:]
        erin["coil"] = .int(Int64(slot.map.intents[i].coil))
        erin["permit"] = .bool(rise)
        erin["change"] = .string(rise ? "rise" : "drop")
        return AuditRecord(action: .permitChanged, erin: .object(erin), eraan: eraan(slot), erachter: .object([
            "intent": .string(slot.map.intents[i].name),
            "why": .string(rise ? "permit rise: \(why)" : "permit drop: \(why): \(decision.reason)"),
            "safety_critical": .bool(IndustryProfile.named(slot.map.profile).safetyCritical),
        ]), time: now, timing: rise ? .gating : .reporting)
    }

    private func eraan(_ slot: Slot) -> JSONValue {
        .object([
            "device": .string("jis:\(slot.map.device)"),
            "map_file": .string(slot.map.sourceFile),
            "map_sha256": .string(slot.map.sha256),
            "twin_seq": slot.guardState.twin?.seq.map { .int(Int64(truncatingIfNeeded: $0)) } ?? .null,
        ])
    }

    /// Audits the moment identity registers or the twin signature start failing (once per
    /// episode, not per poll).
    private func checkIdentity(slot s: Int, now: ClockReading) {
        var problems: [String] = []
        if let p = slots[s].guardState.physical {
            switch p.identity {
            case .mismatch: problems.append("identity registers: \(p.identity)")
            default: break
            }
        }
        if let t = slots[s].guardState.twin, t.signature == .invalid || (slots[s].map.twinKey != nil && t.signature == .missing) {
            problems.append("twin signature \(t.signature == .invalid ? "invalid" : "missing")")
        }
        let failing = !problems.isEmpty
        if failing && !slots[s].identityFailing {
            let intervalNs = Int64(config.identityAuditIntervalMs) * 1_000_000
            if let last = slots[s].identityAuditedNs, now.monotonicNs - last < intervalNs {
                // Within the interval: the permit blocks all the same; the episode is counted
                // in the next token instead of writing one now.
                slots[s].identityEpisodesFolded += 1
            } else {
                audit.submit(AuditRecord(action: .identityFailed, erin: .object([
                    "device": .string(slots[s].map.device),
                    "problems": .array(problems.map { .string($0) }),
                    "episodes_not_written_before": .int(Int64(slots[s].identityEpisodesFolded)),
                ]), eraan: eraan(slots[s]), erachter: .object([
                    "why": .string("the PLC answering or the twin speaking is not the one the map names"),
                    "safety_critical": .bool(IndustryProfile.named(slots[s].map.profile).safetyCritical),
                ]), time: now), onDurable: nil)
                logger.warning("identity failed", metadata: ["device": "\(slots[s].map.device)", "problems": "\(problems)",
                                                             "episodes_folded": "\(slots[s].identityEpisodesFolded)"])
                slots[s].identityAuditedNs = now.monotonicNs
                slots[s].identityEpisodesFolded = 0
            }
        }
        slots[s].identityFailing = failing
    }

    // MARK: Commands

    private func handle(_ command: GuardCommand, now: ClockReading, pending: inout Pending,
                        statusRequests: inout [@Sendable (StatusSnapshot) -> Void]) {
        switch command {
        case .auditAck(let id, let ok):
            guard let (device, intent) = pendingAcks.removeValue(forKey: id) else { return }
            guard let s = slotIndex[device], slots[s].pendingRise.indices.contains(intent),
                  slots[s].pendingRise[intent] == id else { return }
            slots[s].pendingRise[intent] = nil
            if ok {
                if slots[s].guardState.verdict(intent: intent).permit {
                    slots[s].published[intent] = true
                    pending.tableChanged = true
                    metrics.countRise()
                    // That verdict is from the last evaluation, up to a tick old: judge the
                    // device again at this iteration's `now` before the table is built, so a
                    // state that went stale while the token was being written drops the rise
                    // before it reaches the coils.
                    slots[s].evaluate = true
                }
            } else {
                metrics.countAuditFailure()
                slots[s].riseRecorded[intent] = false
                logger.error("audit chain did not make a permit rise durable: permit stays 0",
                             metadata: ["device": "\(device)", "intent": "\(slots[s].map.intents[intent].name)"])
            }
        case .reset(let device, let intent, let client, let done):
            guard let s = slotIndex[device] else { return done(.unknownDevice(device)) }
            var cleared: [String] = []
            if let intent {
                guard let i = slots[s].guardState.intentIndex(named: intent) else {
                    return done(.unknownIntent(device: device, intent: intent))
                }
                guard audit.isHealthy else { return done(.auditFailed("audit store unhealthy")) }
                if slots[s].guardState.reset(intent: i) { cleared = [intent] }
            } else {
                guard audit.isHealthy else { return done(.auditFailed("audit store unhealthy")) }
                cleared = slots[s].guardState.resetAll()
            }
            audit.submit(AuditRecord(action: .reset, erin: .object([
                "device": .string(device), "intent": intent.map { .string($0) } ?? .null,
                "cleared": .array(cleared.map { .string($0) }), "client": .string(client),
            ]), eraan: eraan(slots[s]), erachter: .object([
                "why": .string("operator reset via the local HTTP API"),
                "safety_critical": .bool(IndustryProfile.named(slots[s].map.profile).safetyCritical),
            ]), time: now), onDurable: nil)
            metrics.countReset()
            logger.notice("reset", metadata: ["device": "\(device)", "cleared": "\(cleared)", "client": "\(client)"])
            slots[s].evaluate = true
            done(.done(device: device, cleared: cleared))
        case .status(let done):
            statusRequests.append(done)
        case .reload(let reload, let done):
            // The reply waits until the new table is published: whoever reloaded (the runtime
            // restarting its poller) may rely on replaced devices' permits being 0 on the coils.
            let result = applyReload(reload, now: now, pending: &pending)
            pending.tableChanged = true
            pending.afterPublish.append { done(result) }
        }
    }

    private func applyReload(_ reload: GuardReload, now: ClockReading, pending: inout Pending) -> GuardReloadResult {
        var result = GuardReloadResult()
        var newSlots: [Slot] = []
        let newNames = Set(reload.maps.map(\.device))
        for map in reload.maps {
            if let s = slotIndex[map.device] {
                if slots[s].map == map {
                    newSlots.append(slots[s])
                    result.kept.append(map.device)
                } else {
                    result.replaced.append(map.device)
                    newSlots.append(Slot(map: map))
                    dropAllForReload(slot: s, why: "map replaced", now: now, pending: &pending)
                }
            } else {
                result.added.append(map.device)
                newSlots.append(Slot(map: map))
            }
        }
        for (s, slot) in slots.enumerated() where !newNames.contains(slot.map.device) {
            result.removed.append(slot.map.device)
            dropAllForReload(slot: s, why: "device removed from the maps", now: now, pending: &pending)
        }
        // Acks for rises of replaced or removed devices no longer match anything.
        pendingAcks = pendingAcks.filter { result.kept.contains($0.value.device) }
        slots = newSlots
        slotIndex = Dictionary(uniqueKeysWithValues: slots.enumerated().map { ($1.map.device, $0) })
        layout = reload.layout
        tickNs = Self.tickNs(reload.maps)
        nextTickNs = min(nextTickNs, now.monotonicNs + tickNs)
        pending.tableChanged = true
        for s in slots.indices { slots[s].evaluate = true }
        return result
    }

    /// Before a slot is replaced: its published permits go with it, and their drops are audited
    /// (the new table, published in this iteration, no longer carries them).
    private func dropAllForReload(slot s: Int, why: String, now: ClockReading, pending: inout Pending) {
        for i in slots[s].published.indices {
            if slots[s].published[i] { metrics.countDrop(reason: .noPhysical) }
            slots[s].published[i] = false
            slots[s].pendingRise[i] = nil
            // Built now, while the slot exists; submitted after the new table is published.
            if let r = dropRecord(slot: s, intent: i, why: why, now: now) { pending.records.append(r) }
        }
    }

    // MARK: Publishing

    private func deviceReason(_ slot: Slot) -> ReasonCode {
        for i in slot.published.indices where !slot.published[i] {
            let v = slot.guardState.verdict(intent: i)
            return v.permit ? .audit : v.reason
        }
        return .ok
    }

    private func buildTable(healthy: Bool) -> PermitTable {
        var devices: [String: DeviceDiagnostics] = [:]
        devices.reserveCapacity(slots.count)
        var blocked: [ReasonCode: Int] = [:]
        var permits = 0, intents = 0
        for slot in slots {
            let g = slot.guardState
            var names = Set<String>()
            for i in slot.published.indices {
                intents += 1
                if slot.published[i] {
                    names.insert(slot.map.intents[i].name)
                    permits += 1
                } else {
                    let v = g.verdict(intent: i)
                    blocked[v.permit ? .audit : v.reason, default: 0] += 1
                }
            }
            devices[slot.map.device] = DeviceDiagnostics(
                reason: g.lastEvaluation == nil ? nil : deviceReason(slot), driftMs: g.lastDriftMs,
                physicalAgeMs: g.lastPhysicalAgeMs, twinAgeMs: g.lastTwinAgeMs, permits: names,
                blockCount: g.blockCount)
        }
        metrics.setTable(permits: permits, intents: intents, devices: slots.count, healthy: healthy,
                         blockedByReason: blocked)
        return PermitTable(layout: layout, heartbeat: heartbeat, healthy: healthy, devices: devices)
    }

    private func publishTable(_ table: PermitTable) {
        lastPublished = table
        publish(table)
    }

    private func permitTableJSON() -> JSONValue {
        var devs: [String: JSONValue] = [:]
        for slot in slots {
            var intents: [String: JSONValue] = [:]
            for (i, spec) in slot.map.intents.enumerated() {
                let v = slot.guardState.verdict(intent: i)
                intents[spec.name] = .object([
                    "coil": .int(Int64(spec.coil)), "permit": .bool(slot.published[i]),
                    "reason_code": .int(Int64((slot.published[i] ? ReasonCode.ok : v.permit ? .audit : v.reason).rawValue)),
                ])
            }
            devs[slot.map.device] = .object(["intents": .object(intents), "map_sha256": .string(slot.map.sha256),
                                             "block_count": .int(Int64(truncatingIfNeeded: slot.guardState.blockCount))])
        }
        return .object(["heartbeat": .int(Int64(heartbeat)), "healthy": .bool(audit.isHealthy), "devices": .object(devs)])
    }

    // MARK: Status

    private func snapshot(now: ClockReading) -> StatusSnapshot {
        var devices: [DeviceStatus] = []
        for slot in slots {
            let g = slot.guardState
            var intents: [IntentStatus] = []
            for (i, spec) in slot.map.intents.enumerated() {
                let v = g.verdict(intent: i)
                let reasonCode: ReasonCode
                let reason: String
                if slot.published[i] {
                    reasonCode = .ok
                    reason = g.decision(intent: i).reason
                } else if v.permit {
                    reasonCode = .audit
                    reason = "BLOCKED: waiting for the audit chain to make the rise durable"
                } else {
                    reasonCode = v.reason
                    reason = g.decision(intent: i).reason
                }
                intents.append(IntentStatus(intent: spec.name, coil: spec.coil, permit: slot.published[i],
                                            reasonCode: reasonCode, reason: reason, latched: g.isLatched(intent: i)))
            }
            let p = g.latestPhysical, t = g.latestTwin
            var values: [ValueStatus] = []
            for r in slot.map.registers {
                let reading = p?.values[r.name]
                values.append(ValueStatus(name: r.name, physical: reading?.value, quality: reading?.quality,
                                          twin: t?.values[r.name], unit: r.unit, tolerance: r.tolerance))
            }
            devices.append(DeviceStatus(
                device: slot.map.device, intents: intents, driftMs: g.lastDriftMs, physicalAgeMs: g.lastPhysicalAgeMs,
                twinAgeMs: g.lastTwinAgeMs, physicalStatus: p?.status, twinStatus: t?.status,
                identity: p.map { "\($0.identity)" }, twinSeq: t?.seq, blockCount: g.blockCount, values: values))
        }
        let auditOK = audit.isHealthy
        return StatusSnapshot(node: config.node, healthy: auditOK && isReady, auditHealthy: auditOK,
                              heartbeat: heartbeat, wallNs: now.wallNs, devices: devices)
    }
}

/// The guard loop thread could not be created.
public struct GuardLoopError: Error, Sendable, Hashable, CustomStringConvertible {
    public var errno: Int32
    public var description: String { "guard loop: pthread_create failed: \(errnoText(errno))" }
}

/// Names the calling thread (shown by `top -H`, `gdb`); at most 15 bytes.
func setThreadName(_ name: String) {
    Thread.current.name = String(name.prefix(15))
}
