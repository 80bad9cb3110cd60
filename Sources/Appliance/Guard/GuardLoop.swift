import Foundation
import Logging
import Platform
import Synchronization
import TibetTwin

#if canImport(Glibc)
import Glibc
#endif

/// The audit chain as the guard loop sees it (docs/audit.md): a health flag read on every evaluation
/// without locks, and a queue that acknowledges each record once it is durable. `AuditStore`
/// is the real one.
package protocol AuditTrail: Sendable {
    /// Writes and fsyncs succeed. While false every permit blocks with `AUDIT`.
    var isHealthy: Bool { get }
    /// Queues a record and returns at once; `onDurable` is called once, from the writer's
    /// thread, when the token is on disk or cannot be.
    func submit(_ record: AuditRecord, onDurable: (@Sendable (AuditAck) -> Void)?)
}

extension AuditStore: AuditTrail {}

/// A new set of maps to judge by (SIGHUP), already validated.
package struct GuardReload: Sendable {
    package var maps: [DeviceMap]
    package var layout: InterlockLayout

    package init(maps: [DeviceMap], layout: InterlockLayout) {
        self.maps = maps
        self.layout = layout
    }
}

/// What a reload changed, by device name.
package struct GuardReloadResult: Sendable, Hashable {
    package var kept: [String] = []
    package var replaced: [String] = []
    package var added: [String] = []
    package var removed: [String] = []

    /// Devices whose poller must (re)start: replaced and added.
    package var restarted: [String] { replaced + added }
}

/// Something the guard loop is asked to do besides judging states.
enum GuardCommand: Sendable {
    case auditAck(id: UInt64, ok: Bool)
    case reset(device: String, intent: String?, client: String, done: @Sendable (ResetOutcome) -> Void)
    case status(done: @Sendable (StatusSnapshot) -> Void)
    case reload(GuardReload, done: @Sendable (GuardReloadResult) -> Void)
}

/// The guard loop (docs/architecture.md#the-guard-loop): one thread, the only writer of guard state.
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
package final class GuardLoop: @unchecked Sendable {
    /// What the loop needs besides the maps.
    package struct Configuration: Sendable {
        package var node: String
        /// A `checkpoint` token with the whole permit table this often; 0 = never.
        package var checkpointS: Int
        /// Ticks missing this long make `/healthz` say the guard is not alive.
        package var aliveWithinMs: Double
        /// At most one `identity_failed` token per device this often: a client flapping between
        /// good and bad lines must not flood the chain. Episodes in between are counted in the next.
        package var identityAuditIntervalMs: Int

        package init(node: String, checkpointS: Int = 60, aliveWithinMs: Double = 2000, identityAuditIntervalMs: Int = 60_000) {
            self.node = node
            self.checkpointS = checkpointS
            self.aliveWithinMs = aliveWithinMs
            self.identityAuditIntervalMs = identityAuditIntervalMs
        }
    }

    // MARK: Shared with producers (under `cond`'s lock)

    let cond = MonotonicCondition()
    /// The latest state per device that is news, or that repeats news not taken yet.
    var inPhysical: [String: PhysicalState] = [:]
    var inTwin: [String: TwinState] = [:]
    /// The latest repeat per device of the others (never a device of `inPhysical`/`inTwin`):
    /// taken at the next tick, so an iteration for news does not first absorb hundreds of them.
    var inPhysicalRepeats: [String: PhysicalState] = [:]
    var inTwinRepeats: [String: TwinState] = [:]
    /// Devices whose twin state was withdrawn since the last iteration (see `withdrawTwin`).
    var inWithdrawn: Set<String> = []
    var inCommands: [GuardCommand] = []
    /// Something in the inbox wants judging now: a state that is news (not a repeat of its
    /// device's last one but for its time), a withdrawal or a command. Repeats alone do not
    /// wake the loop; they are taken with the next news or tick.
    var inNews = false
    /// Per device, the oldest poller generation whose states are still taken (`shutOutPhysical`):
    /// after a reload the old poller's states for a changed map never reach the new one.
    var physicalGate: [String: UInt64] = [:]
    var stopRequested = false
    var thread: OSThread?

    // MARK: Read without locks by HTTP and health

    let lastTickMono = Atomic<Int64>(0)
    let heartbeatNow = Atomic<UInt16>(0)
    let readyFlag = Atomic<Bool>(false)
    let auditHealthyNow = Atomic<Bool>(false)
    /// `inNews`, readable without the lock: a long iteration looks at it every `peekEvery`
    /// judged slots and takes the news at once (`takeNewsEarly`).
    let newsWaiting = Atomic<Bool>(false)

    // MARK: Owned by the loop thread

    var slots: [Slot] = []
    var slotIndex: [String: Int] = [:]
    /// The slots marked for evaluation since the last iteration (`mark`), and the suspects
    /// among them, in marking order: an iteration without a tick walks these, not every slot,
    /// so its cost follows what changed (a burst of twin lines wakes the loop many times).
    /// `allMarked`: every slot is marked (a reload).
    var marked: [Int] = []
    var suspects: [Int] = []
    var allMarked = false
    var layout: InterlockLayout
    var heartbeat: UInt16 = 0
    var tickNs: Int64 = 100_000_000
    var nextTickNs: Int64 = 0
    var nextCheckpointNs: Int64 = 0
    var nextAuditId: UInt64 = 0
    var pendingAcks: [UInt64: (device: String, intent: Int)] = [:]
    var lastWatchdogNs: Int64 = 0
    var lastStatusNs: Int64 = 0
    var lastStatusText = ""
    var lastPublished: PermitTable?
    /// What the last `takeInbox` took (loop thread only).
    var taken = (physical: [String: PhysicalState](), twin: [String: TwinState](), withdrawn: Set<String>(), commands: [GuardCommand]())
    /// What news taken in the middle of an iteration brought (`takeNewsEarly`; loop thread only).
    var takenEarly = (physical: [String: PhysicalState](), twin: [String: TwinState](), withdrawn: Set<String>())
    /// The repeats a tick took (loop thread only).
    var takenRepeats = (physical: [String: PhysicalState](), twin: [String: TwinState]())
    /// Where status snapshots are built from a copy of the slots (not the cooperative pool).
    let statusQueue = DispatchQueue(label: "tibet-twin.status")
    /// The permit image as last published, rewritten in place (GuardLoop+Publishing.swift).
    var image = PermitImage()
    /// Resets that cleared nothing, folded per device, intent and client address (one token
    /// per key per second; GuardLoop+Commands.swift).
    var noopResets: [String: FoldedReset] = [:]

    let config: Configuration
    let clock: any TimeSource
    let audit: any AuditTrail
    let publish: @Sendable (PermitTable) -> Void
    let metrics: ApplianceMetrics
    let notifier: SystemdNotifier
    let logger: Logger

    /// One device's guard and what the interlock serves for it.
    struct Slot: Sendable {
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
        /// To be evaluated (in this iteration, once it runs).
        var evaluate = false
        /// A new state that may well drop a permit (status changed): evaluated first.
        var suspect = false

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
    package init(configuration: Configuration, maps: [DeviceMap], layout: InterlockLayout,
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

    func install(_ maps: [DeviceMap]) {
        image.stale = true
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

    /// Hands in a poll's result (the poller's sink, through `PollerGate`). States from a poller
    /// `generation` older than the device's gate (`shutOutPhysical`) are dropped. Never blocks
    /// beyond the inbox lock.
    ///
    /// `wake`: the state is news (see `PhysicalStateNewsSink`) and is judged at once; a repeat
    /// (`wake` false) waits in the inbox for the next news or tick. Not waking the loop for a
    /// repeat can only delay what it changes — its time, so drift and ages — by at most one
    /// tick; the loop judges with the older time meanwhile, which never lets a permit rise
    /// sooner.
    package func submit(physical state: PhysicalState, generation: UInt64 = 0, wake: Bool = true) {
        cond.withLock { admit(state, generation: generation, news: wake) }
        if wake { wakeForNews() }
    }

    private func wakeForNews() {
        newsWaiting.store(true, ordering: .relaxed)
        cond.signal()
    }

    /// Under the inbox lock.
    private func admit(_ state: PhysicalState, generation: UInt64, news: Bool) {
        if !physicalGate.isEmpty, let oldest = physicalGate[state.device], generation < oldest { return }
        if news {
            inPhysical[state.device] = state
            if !inPhysicalRepeats.isEmpty { inPhysicalRepeats[state.device] = nil }
            inNews = true
        } else if !inPhysical.isEmpty, let i = inPhysical.index(forKey: state.device) {
            inPhysical.values[i] = state  // newer, and says what the news before it said
        } else {
            inPhysicalRepeats[state.device] = state
        }
    }

    /// From now on, takes the physical states of `devices` only from poller generations
    /// `oldest` and newer: a reload shuts the old poller out of the devices whose map changes
    /// before the guard applies the new maps. Both are under the inbox lock, so once this
    /// returns no state of the old poller can reach those devices, even one read before.
    ///
    /// A repeat of the old poller still waiting for a tick is dropped with it: it would reach
    /// the device after the new map is applied (news in the inbox is taken, and applied to the
    /// old map, before the reload command that follows it).
    package func shutOutPhysical(_ devices: [String], olderThan oldest: UInt64) {
        cond.withLock {
            for d in devices {
                physicalGate[d] = max(physicalGate[d] ?? 0, oldest)
                inPhysicalRepeats[d] = nil
            }
        }
    }

    /// Hands in a validated twin line (the feeds' sink). Never blocks beyond the inbox lock.
    /// `wake` as for physical states: false for a line that repeated its device's last one.
    package func submit(twin state: TwinState, wake: Bool = true) {
        cond.withLock {
            if !inWithdrawn.isEmpty { inWithdrawn.remove(state.device) }
            if wake {
                inTwin[state.device] = state
                if !inTwinRepeats.isEmpty { inTwinRepeats[state.device] = nil }
                inNews = true
            } else if !inTwin.isEmpty, let i = inTwin.index(forKey: state.device) {
                inTwin.values[i] = state
            } else {
                inTwinRepeats[state.device] = state
            }
        }
        if wake { wakeForNews() }
    }

    /// Takes a device's twin state away (its feed says the twin has none: a Sparkplug death):
    /// it blocks on `NO_TWIN` at the next iteration, until a new twin state is submitted.
    package func withdrawTwin(device: String) {
        cond.withLock {
            inTwin[device] = nil
            inTwinRepeats[device] = nil
            inWithdrawn.insert(device)
            inNews = true
        }
        wakeForNews()
    }

    func submit(_ command: GuardCommand) {
        cond.withLock {
            inCommands.append(command)
            inNews = true
        }
        wakeForNews()
    }

    /// Clears latches (operator reset, docs/decision-rule.md); the reset is audited first.
    package func reset(device: String, intent: String?, client: String, done: @escaping @Sendable (ResetOutcome) -> Void) {
        submit(.reset(device: device, intent: intent, client: client, done: done))
    }

    /// A status snapshot of what is published now, built on the loop thread.
    package func status(done: @escaping @Sendable (StatusSnapshot) -> Void) {
        submit(.status(done: done))
    }

    /// Replaces the maps (SIGHUP, already validated): unchanged devices keep their state and
    /// permits; replaced and new devices start blocked and re-arm; removed devices are dropped.
    package func reload(_ reload: GuardReload, done: @escaping @Sendable (GuardReloadResult) -> Void) {
        submit(.reload(reload, done: done))
    }

    /// Whether the first full evaluation has been published.
    package var isReady: Bool { readyFlag.load(ordering: .acquiring) }

    /// The heartbeat served now.
    package var currentHeartbeat: UInt16 { heartbeatNow.load(ordering: .relaxed) }

    /// Liveness for `/healthz`.
    package func health() -> HealthSnapshot {
        let last = lastTickMono.load(ordering: .relaxed)
        let since = last == 0 ? Double.infinity : Double(clock.now().monotonicNs - last) / 1e6
        return HealthSnapshot(guardAlive: since <= config.aliveWithinMs, auditHealthy: audit.isHealthy,
                              ready: isReady, heartbeat: currentHeartbeat, sinceTickMs: since)
    }

    // MARK: Thread

    /// Starts the loop thread.
    package func start() throws(GuardLoopError) {
        do {
            let t = try OSThread(name: "tt-guard") { [self] in run() }
            cond.withLock { thread = t }
        } catch {
            throw GuardLoopError(errno: error.errno.rawValue)
        }
    }

    /// Stops the loop and waits for its thread. Permits stay as last published: the caller
    /// (shutdown) has the interlock serve zeros first.
    package func stop() {
        let t: OSThread? = cond.withLock {
            stopRequested = true
            let t = thread
            thread = nil
            return t
        }
        cond.signal()
        t?.join()
    }

    func run() {
        SafetyPriority.raiseCurrentThread("guard loop", logger: logger)
        let start = clock.now()
        nextTickNs = start.monotonicNs
        nextCheckpointNs = start.monotonicNs + Int64(config.checkpointS) * 1_000_000_000
        publishTable(PermitTable.allBlocked(layout: layout))
        while true {
            let stop: Bool = cond.withLock {
                while !stopRequested && !inNews && clock.now().monotonicNs < nextTickNs {
                    cond.wait(untilMonotonicNs: nextTickNs)
                }
                takeInbox()
                return stopRequested
            }
            if stop { break }
            iterate(physical: taken.physical, twin: taken.twin, withdrawn: taken.withdrawn, commands: taken.commands)
            emptyTaken()
        }
        flushNoopResets(now: clock.now(), all: true)
    }

    /// Permits 1 in the last published table (benchmarks and profiling).
    package var publishedPermitCount: Int { lastPublished?.bits.reduce(0) { $0 + Int($1) } ?? 0 }

    /// One iteration on the caller's thread, as the loop thread runs it: takes what the inbox
    /// holds (states, acknowledgements) and evaluates at the clock's now — every device if a
    /// tick is due. For benchmarks and profiling (`tibet-twin-profile`); never while `start()`ed.
    package func iterateOnce() {
        if lastPublished == nil { publishTable(PermitTable.allBlocked(layout: layout)) }
        cond.withLock { takeInbox() }
        iterate(physical: taken.physical, twin: taken.twin, withdrawn: taken.withdrawn, commands: taken.commands)
        emptyTaken()
    }

    /// Moves the inbox into `taken` (under the inbox lock). The collections are swapped, not
    /// replaced: the inbox gets back last iteration's, emptied (`emptyTaken`, outside the lock)
    /// but keeping their capacity — at 1,000 devices a fresh dictionary per iteration was
    /// allocated, grown and rehashed state by state.
    private func takeInbox() {
        swap(&taken.physical, &inPhysical)
        swap(&taken.twin, &inTwin)
        swap(&taken.withdrawn, &inWithdrawn)
        swap(&taken.commands, &inCommands)
        inNews = false
        newsWaiting.store(false, ordering: .relaxed)
    }

    /// In the middle of a long iteration (a tick judges every device): takes the states and
    /// withdrawals the inbox holds because news arrived, and marks their devices, so a fault
    /// waits for at most `peekEvery` judged slots, not for the rest of the iteration. Commands
    /// stay for the next iteration. Returns the first index of `suspects` it added.
    func takeNewsEarly() -> Int {
        cond.withLock {
            swap(&takenEarly.physical, &inPhysical)
            swap(&takenEarly.twin, &inTwin)
            swap(&takenEarly.withdrawn, &inWithdrawn)
            inNews = !inCommands.isEmpty
            newsWaiting.store(inNews, ordering: .relaxed)
        }
        let first = suspects.count
        absorb(physical: takenEarly.physical, twin: takenEarly.twin, withdrawn: takenEarly.withdrawn)
        takenEarly.physical.removeAll(keepingCapacity: true)
        takenEarly.twin.removeAll(keepingCapacity: true)
        takenEarly.withdrawn.removeAll(keepingCapacity: true)
        return first
    }

    /// Judged slots between two looks at `newsWaiting` in one iteration.
    static let peekEvery = 16

    /// At a tick: takes the repeats waiting in the inbox.
    func takeRepeats() {
        cond.withLock {
            swap(&takenRepeats.physical, &inPhysicalRepeats)
            swap(&takenRepeats.twin, &inTwinRepeats)
        }
    }

    /// Releases what the last iteration took, on the loop thread and outside the inbox lock.
    private func emptyTaken() {
        taken.physical.removeAll(keepingCapacity: true)
        taken.twin.removeAll(keepingCapacity: true)
        taken.withdrawn.removeAll(keepingCapacity: true)
        taken.commands.removeAll(keepingCapacity: true)
        takenRepeats.physical.removeAll(keepingCapacity: true)
        takenRepeats.twin.removeAll(keepingCapacity: true)
    }

    // MARK: One iteration

    /// What an evaluation changed and must be done after publishing.
    struct Pending {
        var drops: [(slot: Int, intent: Int, why: String)] = []
        /// Permits that fell from 1 (published) in this iteration.
        var fallen = 0
        /// Drop records built before their slot went away (reload), submitted after publishing.
        var records: [AuditRecord] = []
        var tableChanged = false
        /// Replies that may only go out once the table they changed is on the coils (reload).
        var afterPublish: [() -> Void] = []
    }

    /// Hands states to their devices' guards and marks them for evaluation.
    func absorb(physical: [String: PhysicalState], twin: [String: TwinState], withdrawn: Set<String>) {
        for (device, state) in physical { absorb(device, state) }
        for device in withdrawn {
            if let s = slotIndex[device] {
                slots[s].guardState.withdrawTwin()
                mark(s, suspect: true)
            }
        }
        for (device, state) in twin { absorb(device, state) }
    }

    // A state whose status (or poll quality) differs from the device's last one is the likely
    // drop: such devices are evaluated first in this iteration (the order changes nothing
    // else), so a fault does not wait for the evaluation of a burst of others.

    func absorb(_ device: String, _ state: PhysicalState) {
        if let s = slotIndex[device] { absorb(slot: s, state) }
    }

    /// `unlessOlder`: a repeat taken at a tick (see `absorbRepeat`) is dropped if the device
    /// already has a newer state.
    func absorb(slot s: Int, _ state: PhysicalState, unlessOlder: Bool = false) {
        let last = slots[s].guardState.latestPhysical
        if unlessOlder, let t = last?.time.monotonicNs, t > state.time.monotonicNs { return }
        let suspect = last?.status != state.status || last?.isAllGood != state.isAllGood
        slots[s].guardState.updatePhysical(state)
        mark(s, suspect: suspect)
    }

    /// A repeat taken at a tick: news taken after it (`takeNewsEarly`, while the repeats are
    /// absorbed) is newer, and an older state never replaces a newer one.
    func absorbRepeat(_ device: String, _ state: PhysicalState) {
        if let s = slotIndex[device] { absorb(slot: s, state, unlessOlder: true) }
    }

    func absorbRepeat(_ device: String, _ state: TwinState) {
        if let s = slotIndex[device] { absorb(slot: s, state, unlessOlder: true) }
    }

    func absorb(_ device: String, _ state: TwinState) {
        if let s = slotIndex[device] { absorb(slot: s, state) }
    }

    func absorb(slot s: Int, _ state: TwinState, unlessOlder: Bool = false) {
        let last = slots[s].guardState.latestTwin
        if unlessOlder, let t = last?.received.monotonicNs, t > state.received.monotonicNs { return }
        let suspect = last?.status != state.status
        slots[s].guardState.updateTwin(state)
        mark(s, suspect: suspect)
    }

    func iterate(physical: [String: PhysicalState], twin: [String: TwinState], withdrawn: Set<String> = [],
                 commands: [GuardCommand]) {
        absorb(physical: physical, twin: twin, withdrawn: withdrawn)
        var now = clock.now()
        var pending = Pending()
        var statusRequests: [@Sendable (StatusSnapshot) -> Void] = []
        for command in commands {
            handle(command, now: now, pending: &pending, statusRequests: &statusRequests)
        }
        let auditOK = audit.isHealthy
        auditHealthyNow.store(auditOK, ordering: .relaxed)
        let tick = now.monotonicNs >= nextTickNs
        var evaluated = 0
        // A drop goes to the coils as soon as it is known, not after the evaluation of every
        // other device in this iteration: the first at once, further ones at least every
        // `earlyPublishEvery` slots (each publication rewrites only the slots touched).
        var sinceEarly = 0, earlyPublications = 0
        var unpublishedFall = false
        // `evaluate` marks every slot still to be evaluated in this iteration (all on a tick);
        // the suspects go first.
        let everySlot = tick || allMarked
        if everySlot { for s in slots.indices { slots[s].evaluate = true } }
        // In slot order, whatever order the inbox handed them over in (a dictionary's).
        if suspects.count > 1 { suspects.sort() }

        func judge(_ s: Int) {
            slots[s].evaluate = false
            slots[s].suspect = false
            if !tick { image.touched.append(s) }
            let fallenBefore = pending.fallen
            evaluate(slot: s, now: now, auditOK: auditOK, pending: &pending)
            evaluated += slots[s].map.intents.count
            sinceEarly += 1
            if pending.fallen > fallenBefore {
                if tick { image.touched.append(s) }
                unpublishedFall = true
            }
            if unpublishedFall && (earlyPublications == 0 || sinceEarly >= Self.earlyPublishEvery) {
                publishFallenNow(healthy: auditOK)
                earlyPublications += 1
                sinceEarly = 0
                unpublishedFall = false
            }
        }
        // News that arrives while this iteration runs is taken every `peekEvery` slots; its
        // suspects are judged at once (and a drop among them published), the rest of it in
        // the sweep at the end. Later slots are judged at the later time.
        var sincePeek = 0
        func peek() {
            sincePeek += 1
            guard sincePeek >= Self.peekEvery, newsWaiting.load(ordering: .relaxed) else { return }
            sincePeek = 0
            let first = takeNewsEarly()
            now = clock.now()
            guard first < suspects.count else { return }
            let fresh = suspects[first...].sorted()
            for s in fresh where slots[s].evaluate { judge(s) }
            if unpublishedFall {
                publishFallenNow(healthy: auditOK)
                earlyPublications += 1
                sinceEarly = 0
                unpublishedFall = false
            }
        }
        // The suspects first, then the rest: every slot on a tick or reload, else the marked;
        // then whatever news taken on the way marked and is not judged yet.
        for s in suspects where slots[s].evaluate {
            judge(s)
            peek()
        }
        if tick {
            // The repeats wait for ticks; each is absorbed before this tick judges its device.
            takeRepeats()
            for (device, state) in takenRepeats.physical {
                absorbRepeat(device, state)
                peek()
            }
            for (device, state) in takenRepeats.twin {
                absorbRepeat(device, state)
                peek()
            }
        }
        for s in everySlot ? Array(slots.indices) : marked where slots[s].evaluate {
            judge(s)
            peek()
        }
        var k = 0
        while k < marked.count {
            let s = marked[k]
            k += 1
            if slots[s].evaluate { judge(s) }
        }
        assert(slots.allSatisfy { !$0.evaluate && !$0.suspect }, "a marked slot was not evaluated")
        marked.removeAll(keepingCapacity: true)
        suspects.removeAll(keepingCapacity: true)
        allMarked = false
        metrics.countDecisions(evaluated)
        if tick {
            heartbeat &+= 1
            nextTickNs += tickNs
            if nextTickNs <= now.monotonicNs { nextTickNs = now.monotonicNs + tickNs }
        }
        if tick || pending.tableChanged {
            publishImage(healthy: auditOK, tick: tick)
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
            // The loop hands over a copy of the slots (copy-on-write: the array is shared until the
            // loop next changes a slot) and the texts are built on the status queue.
            let captured = slots, node = config.node, auditOK = audit.isHealthy, ready = isReady, beat = heartbeat
            let requests = statusRequests, now = now
            statusQueue.async {
                let snap = GuardLoop.snapshot(slots: captured, node: node, auditOK: auditOK, ready: ready, heartbeat: beat, now: now)
                for r in requests { r(snap) }
            }
        }
    }

    /// Marks a slot for evaluation in this iteration (once); a suspect (a state that may well
    /// drop a permit) is evaluated before the others.
    func mark(_ s: Int, suspect: Bool = false) {
        if !slots[s].evaluate {
            slots[s].evaluate = true
            marked.append(s)
        }
        if suspect && !slots[s].suspect {
            slots[s].suspect = true
            suspects.append(s)
        }
    }

    func afterTick(now: ClockReading, auditOK: Bool) {
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
        if !noopResets.isEmpty { flushNoopResets(now: now, all: false) }
        if config.checkpointS > 0, now.monotonicNs >= nextCheckpointNs {
            nextCheckpointNs = now.monotonicNs + Int64(config.checkpointS) * 1_000_000_000
            audit.submit(AuditRecord(action: .checkpoint, erin: permitTableJSON(), time: now), onDurable: nil)
        }
    }

    func statusLine(auditOK: Bool) -> String {
        let permits = slots.reduce(0) { $0 + $1.published.filter { $0 }.count }
        let intents = slots.reduce(0) { $0 + $1.published.count }
        return "\(slots.count) devices, \(permits)/\(intents) permits, audit \(auditOK ? "ok" : "FAILING")"
    }
}

/// The guard loop thread could not be created.
package struct GuardLoopError: Error, Sendable, Hashable, CustomStringConvertible {
    package var errno: Int32
    package var description: String { "guard loop: pthread_create failed: \(Errno(errno).name)" }
}

/// The guard loop's permit image: the arrays the interlock serves, kept between publications
/// and rewritten in place. Loop thread only.
struct PermitImage {
    var bits: [UInt8] = []
    var registers: [UInt16] = []
    /// Per slot, the first register of its block (-1: not in the layout, never served).
    var registerBase: [Int] = []
    /// Per slot s, its intents in coil order are entries `intentStart[s] ..< intentStart[s + 1]`
    /// of the three arrays below: coil address, bit in the permit-bits register, map intent index.
    var intentStart: [Int] = []
    var intentCoil: [Int] = []
    var intentBit: [Int] = []
    var intentMap: [Int] = []
    /// Slots evaluated or changed since the last publication (outside ticks).
    var touched: [Int] = []
    /// Set when the slots or the layout change: the next publication rebuilds everything.
    var stale = true
    /// Blocked intents by reason code (index = raw value), for the metrics.
    var blockedByReason = [Int](repeating: 0, count: Int(ReasonCode.allCases.map(\.rawValue).max() ?? 0) + 1)
}
