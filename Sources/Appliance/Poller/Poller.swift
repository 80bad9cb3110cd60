import Logging
import Modbus
import Platform
import Synchronization
import TibetTwin

#if canImport(Glibc)
import Glibc
#endif

/// Where the poller delivers each poll's result. Called on a poll thread, once per device per
/// period (good or bad): it must not block (hand the state over and return).
package typealias PhysicalStateSink = @Sendable (PhysicalState) -> Void

/// A sink that is also told whether a state is news: false when it repeats the device's last
/// one but for its time (`PhysicalState.repeats`; its values then share the last one's storage).
package typealias PhysicalStateNewsSink = @Sendable (PhysicalState, _ news: Bool) -> Void

/// How the poller runs.
package struct PollerConfiguration: Sendable, Hashable {
    /// Poll threads; 0 picks one per link (a PLC, gateway or serial port), at most
    /// `defaultMaxThreads`. Whole links are dealt to threads, each to the thread with the
    /// fewest devices so far; a PLC that hangs delays only the devices of its own thread, by at
    /// most its timeout. A poll thread spends most of its time waiting for answers, so links
    /// on threads of their own wait side by side instead of in turn.
    package var threads: Int
    /// First reconnect delay after a failed connect; doubles per failure up to `backoffMaxMs`.
    package var backoffInitialMs: Int
    package var backoffMaxMs: Int

    /// The most poll threads `threads: 0` starts.
    package static let defaultMaxThreads = 64

    package init(threads: Int = 0, backoffInitialMs: Int = 100, backoffMaxMs: Int = 5000) {
        self.threads = threads
        self.backoffInitialMs = backoffInitialMs
        self.backoffMaxMs = backoffMaxMs
    }
}

/// Polls PLCs over Modbus/TCP and Modbus RTU on a fixed schedule and delivers one
/// `PhysicalState` per device per `poll_ms` to a sink.
///
/// A few dedicated threads (never the cooperative pool), each with a deadline queue of its
/// devices; per link one persistent connection or serial port (its own `ModbusClient`, used
/// only by that thread). Maps that name the same TCP endpoint or serial port share one link
/// (`PLCEndpoint.linkKey`): its devices live on one thread, so their requests are serialized
/// and taken in order of due time; a unit that stops answering is backed off on its own. Deadlines advance by whole periods from the first one, so the schedule does not
/// drift; slots that a slow poll ran past are skipped and counted, never piled up. A lost
/// connection is retried with capped exponential backoff while the device still yields a bad
/// state every period, so the guard sees `COMMS` at once.
package final class Poller: Sendable {
    private struct Shared: Sendable {
        var threads: [OSThread] = []
        var running = false
    }
    private let maps: [DeviceMap]
    private let configuration: PollerConfiguration
    private let time: any TimeSource
    private let workers: [PollWorker]
    private let logger: Logger
    private let shared = Mutex(Shared())

    /// A poller for `maps` (not started). `time` stamps each state when its answer arrived.
    /// `logger` hears transitions only (connected, connection lost, polls good again), never
    /// one line per period.
    package convenience init(maps: [DeviceMap], configuration: PollerConfiguration = PollerConfiguration(),
                            time: any TimeSource = SystemTimeSource(), logger: Logger = Logger(label: "tibet-twin.poller"),
                            sink: @escaping PhysicalStateSink) {
        self.init(maps: maps, configuration: configuration, time: time, logger: logger, newsSink: { state, _ in sink(state) })
    }

    /// A poller whose sink is told which states are news (see `PhysicalStateNewsSink`).
    package init(maps: [DeviceMap], configuration: PollerConfiguration = PollerConfiguration(),
                time: any TimeSource = SystemTimeSource(), logger: Logger = Logger(label: "tibet-twin.poller"),
                newsSink sink: @escaping PhysicalStateNewsSink) {
        self.maps = maps
        self.configuration = configuration
        self.time = time
        self.logger = logger
        // Whole links to threads, each to the thread with the fewest devices so far.
        var order: [String] = []
        var links: [String: [DeviceMap]] = [:]
        for m in maps {
            if links[m.plc.linkKey] == nil { order.append(m.plc.linkKey) }
            links[m.plc.linkKey, default: []].append(m)
        }
        let n = configuration.threads > 0
            ? min(configuration.threads, max(maps.count, 1))
            : min(max(order.count, 1), PollerConfiguration.defaultMaxThreads)
        var buckets = Array(repeating: [[DeviceMap]](), count: min(n, max(order.count, 1)))
        for key in order {
            let i = buckets.indices.min { buckets[$0].joined().count < buckets[$1].joined().count }!
            buckets[i].append(links[key]!)
        }
        workers = buckets.enumerated().map { i, ls in
            PollWorker(index: i, links: ls, configuration: configuration, time: time, logger: logger, sink: sink)
        }
    }

    /// The number of poll threads.
    package var threadCount: Int { workers.count }

    /// Starts the poll threads; the first poll of each device happens within one period.
    /// Caps the process's descriptors below 1024 first (`DescriptorLimit.capForSelect`), so
    /// libmodbus's `select()` can never see one it would abort on: running out is `EMFILE`.
    package func start() throws(ThreadStartError) {
        do throws(ModbusError) {
            try DescriptorLimit.capForSelect()
        } catch {
            // Not fatal: ModbusClient still refuses a descriptor ≥ 1024 on connect.
            logger.warning("cannot cap descriptors for select(): \(error)")
        }
        try shared.withLock { (s: inout Shared) throws(ThreadStartError) in
            guard !s.running else { return }
            let startNs = monotonicNowNs()
            let count = workers.count
            for w in workers {
                s.threads.append(try OSThread(name: "tt-poll-\(w.index)") { w.run(startNs: startNs, of: count) })
            }
            s.running = true
        }
    }

    /// Stops polling: wakes every thread, waits for its current poll to end (at most one
    /// timeout per group), joins them, and closes the connections.
    package func stop() {
        let threads = shared.withLock { s -> [OSThread] in
            s.running = false
            defer { s.threads = [] }
            return s.threads
        }
        for w in workers { w.requestStop() }
        for t in threads { t.join() }
    }

    /// The counters now.
    package func stats() -> PollerStats {
        var out = PollerStats()
        for w in workers { w.addStats(into: &out) }
        out.devices.sort { $0.device < $1.device }
        return out
    }

    deinit { stop() }
}

/// One poll thread's devices, schedule and counters.
final class PollWorker: Sendable {
    let index: Int
    private let maps: [DeviceMap]
    /// The maps of each link on this thread.
    private let links: [[DeviceMap]]
    private let configuration: PollerConfiguration
    private let time: any TimeSource
    private let logger: Logger
    private let sink: PhysicalStateNewsSink
    private let parker = Parker()
    private let stopFlag = Atomic<Bool>(false)
    private struct Counters: Sendable {
        var devices: [DevicePollStats]
        var latency = PollLatencyHistogram()
        var jitter = PollLatencyHistogram()
    }
    private let counters: Mutex<Counters>

    init(index: Int, links: [[DeviceMap]], configuration: PollerConfiguration, time: any TimeSource,
         logger: Logger, sink: @escaping PhysicalStateNewsSink) {
        self.index = index
        self.links = links
        self.maps = links.flatMap { $0 }
        self.configuration = configuration
        self.time = time
        self.logger = logger
        self.sink = sink
        counters = Mutex(Counters(devices: maps.map { DevicePollStats(device: $0.device) }))
    }

    func requestStop() {
        stopFlag.store(true, ordering: .releasing)
        parker.wake()
    }

    func addStats(into out: inout PollerStats) {
        counters.withLock { c in
            out.devices += c.devices
            out.latency.merge(c.latency)
            out.jitter.merge(c.jitter)
        }
    }

    /// The least spacing of first deadlines on one thread (see `run`).
    static let slotNs: Int64 = 4_000_000
    /// The first deadline of a thread's `device`-th device (of `count`), from the poller's
    /// start: its slot on the thread's grid, plus the thread's shift of `thread`/`threads` of a
    /// slot.
    static func firstOffsetNs(device: Int, of count: Int, periodNs period: Int64, thread: Int, of threads: Int) -> Int64 {
        let slots = max(1, min(Int64(count), period / slotNs))
        let slot = period / slots
        return period * (Int64(device) % slots) / slots + slot * Int64(thread) / Int64(max(threads, 1))
    }

    /// How many nice levels below the rest of the appliance the poll threads run.
    static let niceSteps: Int32 = 5

    /// The thread body: a deadline queue over this worker's devices, the `index`-th of
    /// `workers` poll threads started at `startNs`.
    func run(startNs: Int64, of workers: Int) {
        // Polling is bulk work: on a busy machine the guard loop and the interlock server (the
        // drop path) run first. Polls still run whenever a core is free.
        if let e = OSThread.lowerCurrentPriority(by: Self.niceSteps) {
            logger.notice("poll thread keeps the normal priority: setpriority: \(e)")
        }
        var devices: [DeviceConnection] = []
        for ms in links {
            let link = PollLink(plc: ms[0].plc, shared: ms.count > 1, configuration: configuration)
            devices += ms.map { DeviceConnection(map: $0, link: link, configuration: configuration) }
        }
        var wasGood = Array(repeating: true, count: devices.count)  // the first bad poll is news
        // Each device's last state handed over: a poll that read the same is not news.
        var last = [PhysicalState?](repeating: nil, count: devices.count)
        // First deadlines spread over one period so devices of equal rate do not all fire at
        // once, on a grid of slots at least `slotNs` apart: the devices of one slot are polled
        // back to back after one wake-up (each at most a few reads after its slot) instead of
        // one timer wake-up per read, which costs as much CPU as the read itself.
        // The threads' grids are shifted against each other by a share of one slot, so the
        // threads wake one after another rather than all at once. All at once, each slot's
        // polls of every thread queue for the two cores and for the answers, and the last of
        // them start milliseconds late (1,000 devices: 1 % of polls over 5 ms late; shifted,
        // 0.1 %). The price is more CPU: threads that wake alone find the core idle more often.
        var queue = DeadlineQueue()
        for (i, d) in devices.enumerated() {
            queue.push(deadline: startNs + Self.firstOffsetNs(device: i, of: devices.count, periodNs: d.periodNs,
                                                              thread: index, of: workers), device: i)
        }
        while !stopFlag.load(ordering: .acquiring) {
            guard let (deadline, i) = queue.peek() else { parker.wait(untilMonotonicNs: monotonicNowNs() + 1_000_000_000); continue }
            let startedNs = monotonicNowNs()
            if deadline > startedNs {
                parker.wait(untilMonotonicNs: deadline)
                continue
            }
            queue.pop()
            var outcome = devices[i].poll(time: time)
            let endedNs = monotonicNowNs()
            let good = outcome.state.isAllGood
            if good != wasGood[i] || outcome.connectedNow {
                log(device: devices[i].map, outcome: outcome, good: good, wasGood: wasGood[i])
                wasGood[i] = good
            }
            // Next slot: whole periods from the first deadline; skip the ones already gone.
            let period = devices[i].periodNs
            var next = deadline + period
            if next <= endedNs {
                let missed = (endedNs - next) / period + 1
                next += missed * period
                outcome.missedSlots = Int(missed)
            }
            queue.push(deadline: next, device: i)
            counters.withLock { c in
                c.jitter.record(ns: startedNs - deadline)
                c.latency.record(ns: endedNs - startedNs)
                outcome.apply(to: &c.devices[i])
                c.devices[i].lastPollNs = endedNs - startedNs
            }
            // At once, never held for the polls after it: any poll can block up to its timeout,
            // and a state read (a fault among them) must not wait on another PLC's silence.
            var state = outcome.state
            var news = true
            if let l = last[i], state.repeats(l) {
                state.values = l.values  // equal: share the storage, so the guard compares by identity
                news = false
            }
            last[i] = state
            sink(state, news)
        }
        for i in devices.indices { devices[i].close() }
    }
}

extension PollWorker {
    /// One line per transition: connected, turned bad (and why), good again.
    fileprivate func log(device map: DeviceMap, outcome: PollOutcome, good: Bool, wasGood: Bool) {
        let meta: Logger.Metadata = ["device": "\(map.device)", "plc": "\(map.plc.linkName)",
                                     "unit": "\(map.plc.unit)"]
        if outcome.connectedNow { logger.info("connected", metadata: meta) }
        if !good && wasGood {
            logger.warning("poll failed: \(outcome.state.pollError ?? "values not good")", metadata: meta)
        } else if good && !wasGood {
            logger.info("polls good again", metadata: meta)
        }
    }
}

/// A min-heap of (deadline, device index).
struct DeadlineQueue {
    private var heap: [(Int64, Int)] = []

    func peek() -> (Int64, Int)? { heap.first }

    mutating func push(deadline: Int64, device: Int) {
        heap.append((deadline, device))
        var c = heap.count - 1
        while c > 0 {
            let p = (c - 1) / 2
            if heap[p].0 <= heap[c].0 { break }
            heap.swapAt(p, c)
            c = p
        }
    }

    @discardableResult
    mutating func pop() -> (Int64, Int)? {
        guard !heap.isEmpty else { return nil }
        let top = heap[0]
        let last = heap.removeLast()
        if !heap.isEmpty {
            heap[0] = last
            var p = 0
            while true {
                let l = 2 * p + 1, r = l + 1
                var m = p
                if l < heap.count && heap[l].0 < heap[m].0 { m = l }
                if r < heap.count && heap[r].0 < heap[m].0 { m = r }
                if m == p { break }
                heap.swapAt(p, m)
                p = m
            }
        }
        return top
    }
}

/// What one poll produced, and what the counters should learn from it.
struct PollOutcome {
    var state: PhysicalState
    var requests = 0
    var splits = 0
    var connected = false
    var connectedNow = false
    var errors: [PollErrorKind] = []
    var missedSlots = 0
    var groups = 0

    func apply(to d: inout DevicePollStats) {
        d.polls += 1
        if state.isAllGood { d.goodPolls += 1 }
        d.requests += requests
        d.splits += splits
        d.missedSlots += missedSlots
        d.connected = connected
        d.groups = groups
        if connectedNow { d.connects += 1 }
        for e in errors { d.errors[e, default: 0] += 1 }
        d.lastError = state.pollError
    }
}

/// Capped exponential reconnect delay: the first failure waits `initialMs`, each further one
/// twice as long, up to `maxMs`; a good poll resets it.
struct ReconnectBackoff: Sendable, Hashable {
    let initialMs: Int
    let maxMs: Int
    private(set) var currentMs = 0

    init(initialMs: Int, maxMs: Int) {
        self.initialMs = max(initialMs, 1)
        self.maxMs = max(maxMs, self.initialMs)
    }

    /// One more failure: the delay before the next attempt, in milliseconds.
    mutating func failed() -> Int {
        currentMs = currentMs == 0 ? initialMs : min(currentMs * 2, maxMs)
        return currentMs
    }

    mutating func reset() { currentMs = 0 }
}

/// One link (a TCP connection or a serial port) and its client, shared by the devices of the
/// maps that name it. Confined to one poll thread, like the libmodbus context it owns.
final class PollLink {
    let plc: PLCEndpoint
    /// More than one map names this link.
    let shared: Bool
    var client: (any ModbusLinkClient)?
    var backoff: ReconnectBackoff
    /// A connection was lost (not timed out) since the last good poll.
    var lostSinceGood = false
    var nextConnectNs: Int64 = 0
    var lastConnectError: String?

    init(plc: PLCEndpoint, shared: Bool, configuration: PollerConfiguration) {
        self.plc = plc
        self.shared = shared
        backoff = ReconnectBackoff(initialMs: configuration.backoffInitialMs, maxMs: configuration.backoffMaxMs)
    }

    /// A client for this link (not connected).
    func makeClient(unit: Int, timeoutMs: Int, byteTimeoutMs: Int?) throws(ModbusError) -> any ModbusLinkClient {
        if let s = plc.serial {
            let settings = SerialPortSettings(
                device: s.device, baud: s.baud, parity: SerialPortSettings.Parity(rawValue: s.parity.rawValue) ?? .even,
                dataBits: s.dataBits, stopBits: s.stopBits, rs485: s.rs485,
                rts: s.rts.flatMap { SerialPortSettings.RTSMode(rawValue: $0.rawValue) }, rtsDelayUs: s.rtsDelayUs)
            return try ModbusClient(serial: settings, unit: unit, responseTimeoutMs: timeoutMs, byteTimeoutMs: byteTimeoutMs)
        }
        if plc.framing == .rtu {
            return RTUOverTCPClient(host: plc.host, port: plc.port, unit: unit, responseTimeoutMs: timeoutMs,
                                    byteTimeoutMs: byteTimeoutMs)
        }
        let c = try ModbusClient(host: plc.host, port: plc.port, unit: unit, responseTimeoutMs: timeoutMs,
                                 byteTimeoutMs: byteTimeoutMs)
        // One silent unit behind a shared gateway must not cost the others a reconnect.
        c.keepsConnectionOnTimeout = shared
        return c
    }

    func close() {
        client?.close()
        client = nil
    }
}

/// One device on a poll thread: its plan, its link, its own backoff when it stops answering
/// on a shared link. Confined to that thread.
struct DeviceConnection {
    let map: DeviceMap
    var plan: ReadPlan
    let periodNs: Int64
    let link: PollLink
    /// Polls in a row in which the unit answered nothing (timeouts only).
    private var silentPolls = 0
    /// On a shared link, a unit silent for `silentLimit` polls in a row is tried again only
    /// after this backoff, so its timeouts do not eat its neighbours' link time.
    private var silenceBackoff: ReconnectBackoff
    private var nextTryNs: Int64 = 0
    static let silentLimit = 2

    init(map: DeviceMap, configuration: PollerConfiguration) {
        self.init(map: map, link: PollLink(plc: map.plc, shared: false, configuration: configuration),
                  configuration: configuration)
    }

    init(map: DeviceMap, link: PollLink, configuration: PollerConfiguration) {
        self.map = map
        self.link = link
        silenceBackoff = ReconnectBackoff(initialMs: configuration.backoffInitialMs, maxMs: configuration.backoffMaxMs)
        plan = ReadPlan(map: map)
        periodNs = Int64(max(map.plc.pollMs, 1)) * 1_000_000
    }

    mutating func close() {
        link.close()
    }

    /// One poll: connect if needed (honouring the backoff), read every group, build the state.
    mutating func poll(time: any TimeSource) -> PollOutcome {
        let plc = map.plc
        var connectedNow = false
        if link.shared, nextTryNs > 0 {
            let now = monotonicNowNs()
            if now < nextTryNs {
                let inMs = (nextTryNs - now + 999_999) / 1_000_000
                let why = "unit \(plc.unit) on \(endpoint) did not answer \(silentPolls) polls in a row: not asked again for \(inMs) ms, so the link stays free for the others"
                return PollOutcome(state: plan.failedState(quality: .badTimeout, why: why, at: time.now()),
                                   connected: link.client?.isConnected ?? false, errors: [.timeout], groups: plan.groups.count)
            }
        }
        if link.client == nil || !(link.client!.isConnected) {
            let now = monotonicNowNs()
            if now < link.nextConnectNs {
                let inMs = (link.nextConnectNs - now + 999_999) / 1_000_000
                let why = "not connected to \(endpoint) (reconnect in \(inMs) ms): \(link.lastConnectError ?? "connection lost")"
                return PollOutcome(state: plan.failedState(quality: .badComm, why: why, at: time.now()),
                                   errors: [.notConnected], groups: plan.groups.count)
            }
            do throws(ModbusError) {
                if link.client == nil {
                    link.client = try link.makeClient(unit: plc.unit, timeoutMs: plc.timeoutMs, byteTimeoutMs: plc.byteTimeoutMs)
                }
                try link.client!.connect(timeoutMs: plc.timeoutMs)
                connectedNow = true
                link.lastConnectError = nil
            } catch {
                link.nextConnectNs = monotonicNowNs() + Int64(link.backoff.failed()) * 1_000_000
                link.lastConnectError = error.description
                return PollOutcome(state: plan.failedState(quality: .badComm, why: error.description, at: time.now()),
                                   errors: [PollErrorKind(error.kind)], groups: plan.groups.count)
            }
        }
        let c = link.client!
        if c.unit != plc.unit || c.responseTimeoutMs != plc.timeoutMs || c.byteTimeoutMs != plc.byteTimeoutMs {
            // Devices on one link take turns with their own unit id and timeouts.
            do throws(ModbusError) {
                if c.unit != plc.unit { try c.setUnit(plc.unit) }
                if c.responseTimeoutMs != plc.timeoutMs || c.byteTimeoutMs != plc.byteTimeoutMs {
                    try c.setTimeouts(responseMs: plc.timeoutMs, byteMs: plc.byteTimeoutMs)
                }
            } catch {
                return PollOutcome(state: plan.failedState(quality: .badComm, why: error.description, at: time.now()),
                                   connected: c.isConnected, errors: [PollErrorKind(error.kind)], groups: plan.groups.count)
            }
        }
        var results: [ReadPlan.GroupResult] = []
        results.reserveCapacity(plan.groups.count)
        var requests = 0, splits = 0
        var errors: [PollErrorKind] = []
        var answered = false
        var gi = 0
        while gi < plan.groups.count {
            let g = plan.groups[gi]
            requests += 1
            do throws(ModbusError) {
                if g.table.isBitTable {
                    var bits = [UInt8](repeating: 0, count: g.count)
                    try bits.withUnsafeMutableBufferPointer { (b) throws(ModbusError) in
                        try c.readBits(table: g.table == .coil ? .coil : .discrete, address: Int(g.address),
                                       count: g.count, into: b)
                    }
                    results.append(.bits(bits))
                } else {
                    var words = [UInt16](repeating: 0, count: g.count)
                    try words.withUnsafeMutableBufferPointer { (b) throws(ModbusError) in
                        try c.readRegisters(table: g.table == .input ? .input : .holding, address: Int(g.address),
                                            count: g.count, into: b)
                    }
                    results.append(.registers(words))
                }
                answered = true
            } catch {
                errors.append(PollErrorKind(error.kind))
                if case .exception = error.kind { answered = true }
                if error.exceptionCode == 2, plan.split(groupAt: gi) != nil {
                    // Remembered in the plan; read the first part now.
                    splits += 1
                    continue
                }
                let quality = Self.quality(of: error)
                results.append(.failed(quality, error.description))
                var stop = false
                if !c.isConnected {
                    // Timed out or lost: the connection is closed; the rest of this poll is
                    // unread. After a timeout (the PLC is there, only slow) and after the first
                    // loss the next poll reconnects at once; a PLC that keeps dropping the
                    // connection (e.g. a gateway out of sessions) is retried with backoff.
                    if case .timeout = error.kind {
                        link.nextConnectNs = 0
                    } else if !link.lostSinceGood {
                        link.lostSinceGood = true
                        link.nextConnectNs = 0
                    } else {
                        link.nextConnectNs = monotonicNowNs() + Int64(link.backoff.failed()) * 1_000_000
                        link.lastConnectError = error.description
                    }
                    stop = true
                } else if case .timeout = error.kind {
                    // The link stays open (serial, or shared): a unit that is silent for one
                    // request is not asked the rest of this poll.
                    stop = true
                }
                if stop {
                    while results.count < plan.groups.count {
                        results.append(.failed(quality, error.description))
                    }
                    break
                }
            }
            gi += 1
        }
        let state = plan.state(from: results, at: time.now())
        if answered {
            silentPolls = 0
            nextTryNs = 0
            silenceBackoff.reset()
        } else if errors.contains(.timeout) {
            silentPolls += 1
            if link.shared, silentPolls >= Self.silentLimit {
                nextTryNs = monotonicNowNs() + Int64(silenceBackoff.failed()) * 1_000_000
            }
        }
        if state.pollError == nil {
            link.backoff.reset()
            link.lostSinceGood = false
        } else if errors.isEmpty {
            errors.append(.decode)
        }
        return PollOutcome(state: state, requests: requests, splits: splits, connected: c.isConnected,
                           connectedNow: connectedNow, errors: errors, groups: plan.groups.count)
    }

    private var endpoint: String { map.plc.linkName }

    static func quality(of error: ModbusError) -> Quality {
        switch error.kind {
        case .timeout: return .badTimeout
        case .exception(let code): return .badException(code)
        default: return .badComm
        }
    }
}
