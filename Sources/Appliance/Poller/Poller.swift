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

/// How the poller runs.
package struct PollerConfiguration: Sendable, Hashable {
    /// Poll threads; 0 picks one per 64 devices, at least 1 and at most 8. Devices are dealt
    /// to threads round-robin; a PLC that hangs delays only the devices of its own thread, by
    /// at most its timeout.
    package var threads: Int
    /// First reconnect delay after a failed connect; doubles per failure up to `backoffMaxMs`.
    package var backoffInitialMs: Int
    package var backoffMaxMs: Int

    package init(threads: Int = 0, backoffInitialMs: Int = 100, backoffMaxMs: Int = 5000) {
        self.threads = threads
        self.backoffInitialMs = backoffInitialMs
        self.backoffMaxMs = backoffMaxMs
    }
}

/// Polls PLCs over Modbus/TCP on a fixed schedule and delivers one `PhysicalState` per device
/// per `poll_ms` to a sink.
///
/// A few dedicated threads (never the cooperative pool), each with a deadline queue of its
/// devices; per device one persistent connection (its own `ModbusClient`, used only by that
/// thread). Deadlines advance by whole periods from the first one, so the schedule does not
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
    private let sink: PhysicalStateSink
    private let time: any TimeSource
    private let workers: [PollWorker]
    private let logger: Logger
    private let shared = Mutex(Shared())

    /// A poller for `maps` (not started). `time` stamps each state when its answer arrived.
    /// `logger` hears transitions only (connected, connection lost, polls good again), never
    /// one line per period.
    package init(maps: [DeviceMap], configuration: PollerConfiguration = PollerConfiguration(),
                time: any TimeSource = SystemTimeSource(), logger: Logger = Logger(label: "tibet-twin.poller"),
                sink: @escaping PhysicalStateSink) {
        self.maps = maps
        self.configuration = configuration
        self.sink = sink
        self.time = time
        self.logger = logger
        let n = configuration.threads > 0
            ? min(configuration.threads, max(maps.count, 1))
            : min(max((maps.count + 63) / 64, 1), 8)
        var buckets = Array(repeating: [DeviceMap](), count: n)
        for (i, m) in maps.enumerated() { buckets[i % n].append(m) }
        workers = buckets.enumerated().map { i, ms in
            PollWorker(index: i, maps: ms, configuration: configuration, time: time, logger: logger, sink: sink)
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
            for w in workers {
                s.threads.append(try OSThread(name: "tt-poll-\(w.index)") { w.run(startNs: startNs) })
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
    private let configuration: PollerConfiguration
    private let time: any TimeSource
    private let logger: Logger
    private let sink: PhysicalStateSink
    private let parker = Parker()
    private let stopFlag = Atomic<Bool>(false)
    private struct Counters: Sendable {
        var devices: [DevicePollStats]
        var latency = PollLatencyHistogram()
        var jitter = PollLatencyHistogram()
    }
    private let counters: Mutex<Counters>

    init(index: Int, maps: [DeviceMap], configuration: PollerConfiguration, time: any TimeSource,
         logger: Logger, sink: @escaping PhysicalStateSink) {
        self.index = index
        self.maps = maps
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

    /// The thread body: a deadline queue over this worker's devices.
    func run(startNs: Int64) {
        var devices = maps.map { DeviceConnection(map: $0, configuration: configuration) }
        var wasGood = Array(repeating: true, count: devices.count)  // the first bad poll is news
        // First deadlines spread over one period so devices of equal rate do not all fire at
        // once, on a grid of slots at least `slotNs` apart: the devices of one slot are polled
        // back to back after one wake-up (each at most a few reads after its slot) instead of
        // one timer wake-up per read, which costs as much CPU as the read itself.
        var queue = DeadlineQueue()
        for (i, d) in devices.enumerated() {
            let period = d.periodNs
            let slots = max(1, min(Int64(devices.count), period / Self.slotNs))
            queue.push(deadline: startNs + period * (Int64(i) % slots) / slots, device: i)
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
            sink(outcome.state)
        }
        for i in devices.indices { devices[i].close() }
    }
}

extension PollWorker {
    /// One line per transition: connected, turned bad (and why), good again.
    fileprivate func log(device map: DeviceMap, outcome: PollOutcome, good: Bool, wasGood: Bool) {
        let meta: Logger.Metadata = ["device": "\(map.device)", "plc": "\(map.plc.host):\(map.plc.port)",
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

/// One device on a poll thread: its plan, its connection, its reconnect backoff. Confined to
/// that thread.
struct DeviceConnection {
    let map: DeviceMap
    var plan: ReadPlan
    let periodNs: Int64
    private let configuration: PollerConfiguration
    private var client: ModbusClient?
    private var backoff: ReconnectBackoff
    /// A connection was lost (not timed out) since the last good poll.
    private var lostSinceGood = false
    private var nextConnectNs: Int64 = 0
    private var lastConnectError: String?

    init(map: DeviceMap, configuration: PollerConfiguration) {
        self.map = map
        self.configuration = configuration
        backoff = ReconnectBackoff(initialMs: configuration.backoffInitialMs, maxMs: configuration.backoffMaxMs)
        plan = ReadPlan(map: map)
        periodNs = Int64(max(map.plc.pollMs, 1)) * 1_000_000
    }

    mutating func close() {
        client?.close()
        client = nil
    }

    /// One poll: connect if needed (honouring the backoff), read every group, build the state.
    mutating func poll(time: any TimeSource) -> PollOutcome {
        let plc = map.plc
        var connectedNow = false
        if client == nil || !(client!.isConnected) {
            let now = monotonicNowNs()
            if now < nextConnectNs {
                let inMs = (nextConnectNs - now + 999_999) / 1_000_000
                let why = "not connected to \(endpoint) (reconnect in \(inMs) ms): \(lastConnectError ?? "connection lost")"
                return PollOutcome(state: plan.failedState(quality: .badComm, why: why, at: time.now()),
                                   errors: [.notConnected], groups: plan.groups.count)
            }
            do throws(ModbusError) {
                if client == nil {
                    client = try ModbusClient(host: plc.host, port: plc.port, unit: plc.unit,
                                              responseTimeoutMs: plc.timeoutMs)
                }
                try client!.connect(timeoutMs: plc.timeoutMs)
                connectedNow = true
                lastConnectError = nil
            } catch {
                nextConnectNs = monotonicNowNs() + Int64(backoff.failed()) * 1_000_000
                lastConnectError = error.description
                return PollOutcome(state: plan.failedState(quality: .badComm, why: error.description, at: time.now()),
                                   errors: [PollErrorKind(error.kind)], groups: plan.groups.count)
            }
        }
        let c = client!
        var results: [ReadPlan.GroupResult] = []
        results.reserveCapacity(plan.groups.count)
        var requests = 0, splits = 0
        var errors: [PollErrorKind] = []
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
            } catch {
                errors.append(PollErrorKind(error.kind))
                if error.exceptionCode == 2, plan.split(groupAt: gi) != nil {
                    // Remembered in the plan; read the first part now.
                    splits += 1
                    continue
                }
                let quality = Self.quality(of: error)
                results.append(.failed(quality, error.description))
                if !c.isConnected {
                    // Timed out or lost: the connection is closed; the rest of this poll is
                    // unread. After a timeout (the PLC is there, only slow) and after the first
                    // loss the next poll reconnects at once; a PLC that keeps dropping the
                    // connection (e.g. a gateway out of sessions) is retried with backoff.
                    if case .timeout = error.kind {
                        nextConnectNs = 0
                    } else if !lostSinceGood {
                        lostSinceGood = true
                        nextConnectNs = 0
                    } else {
                        nextConnectNs = monotonicNowNs() + Int64(backoff.failed()) * 1_000_000
                        lastConnectError = error.description
                    }
                    while results.count < plan.groups.count {
                        results.append(.failed(quality, error.description))
                    }
                    break
                }
            }
            gi += 1
        }
        let state = plan.state(from: results, at: time.now())
        if state.pollError == nil {
            backoff.reset()
            lostSinceGood = false
        } else if errors.isEmpty {
            errors.append(.decode)
        }
        return PollOutcome(state: state, requests: requests, splits: splits, connected: c.isConnected,
                           connectedNow: connectedNow, errors: errors, groups: plan.groups.count)
    }

    private var endpoint: String { "\(map.plc.host):\(map.plc.port)" }

    static func quality(of error: ModbusError) -> Quality {
        switch error.kind {
        case .timeout: return .badTimeout
        case .exception(let code): return .badException(code)
        default: return .badComm
        }
    }
}
