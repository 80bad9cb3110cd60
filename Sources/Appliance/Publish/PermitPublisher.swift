import Logging
import MQTT
import Platform
import SparkplugB
import Synchronization
import TibetTwin

/// One device as the interlock serves it, read from a published `PermitTable`: what the permit
/// publisher sends (docs/mqtt.md#publishing-the-permits).
struct PublishedDevice: Sendable, Hashable {
    var name: String
    /// Intents in coil order, with the permit served.
    var intents: [(name: String, permit: Bool)]
    /// The device's reason-code register (`InterlockLayout.unknown`: not evaluated).
    var reason: UInt16
    var twinAgeMs: UInt16
    var physicalAgeMs: UInt16

    /// What counts as a change worth a message: the permits and the reason, not the ages
    /// (which move every tick).
    func sameVerdict(as o: PublishedDevice) -> Bool {
        reason == o.reason && intents.count == o.intents.count
            && zip(intents, o.intents).allSatisfy { $0.name == $1.name && $0.permit == $1.permit }
    }

    static func == (a: PublishedDevice, b: PublishedDevice) -> Bool {
        a.name == b.name && a.sameVerdict(as: b) && a.twinAgeMs == b.twinAgeMs && a.physicalAgeMs == b.physicalAgeMs
    }

    func hash(into h: inout Hasher) {
        h.combine(name)
        h.combine(reason)
    }

    /// `OK`, `TWIN_STALE` …, or `NOT_EVALUATED` (65535: at start and while stopping).
    var reasonName: String { ReasonCode(rawValue: reason)?.name ?? "NOT_EVALUATED" }

    /// Every device of `table`, in layout order.
    static func all(_ table: PermitTable) -> [PublishedDevice] {
        typealias R = InterlockLayout.Register
        return table.layout.devices.map { d in
            let b = Int(d.registerBase)
            return PublishedDevice(name: d.name, intents: d.intents.map { ($0.name, table.bits[Int($0.coil)] == 1) },
                                   reason: table.registers[b + R.reasonCode], twinAgeMs: table.registers[b + R.twinAgeMs],
                                   physicalAgeMs: table.registers[b + R.physicalAgeMs])
        }
    }
}

/// What the publisher has done, for `/metrics` and tests.
package struct PermitPublisherCounters: Sendable, Hashable {
    package var broker = ""
    package var connected = false
    /// Messages handed to libmosquitto, by kind (`nbirth`, `dbirth`, `ddata`, `ndata`, `ndeath`, `json`).
    package var published: [String: UInt64] = [:]
    /// Publishes libmosquitto refused (not connected, queue full).
    package var publishErrors: UInt64 = 0
    /// NCMD rebirth requests answered.
    package var rebirths: UInt64 = 0
    /// Commands refused (writes), by reason (`ncmd_write`, `dcmd_write`, `not_sparkplug`).
    package var refused: [String: UInt64] = [:]
}

/// Publishes the permits as the interlock serves them to an MQTT broker (docs/mqtt.md#publishing-the-permits):
/// as a Sparkplug B edge node (NBIRTH/DBIRTH, DDATA on change, NDEATH as the will and on a clean
/// stop) and/or as plain retained JSON per device. **For display and records only**: nothing it
/// publishes or receives changes a permit; the coil is the only control path. Every command sent
/// to it except a rebirth request is refused, counted, logged and audited like a write to the
/// interlock.
///
/// It never slows the guard: `offer` (called where the guard loop publishes its table to the
/// interlock) stores the table under a short lock and signals; the diff and the encoding run on
/// the publisher's own thread, and libmosquitto sends on its network thread. A table offered
/// while the previous one is still being handled replaces it (only the latest matters).
package final class PermitPublisher: @unchecked Sendable {
    package struct Settings: Sendable, Hashable {
        package var options: MQTTOptions
        package var sparkplug: ApplianceConfig.Publish.Sparkplug?
        package var json: ApplianceConfig.Publish.JSONOutput?
        /// The appliance's node name (JSON topics).
        package var node: String
        package var logIntervalSeconds: Double

        package init(options: MQTTOptions, sparkplug: ApplianceConfig.Publish.Sparkplug?, json: ApplianceConfig.Publish.JSONOutput?,
                     node: String, logIntervalSeconds: Double = 60) {
            var options = options
            options.subscriptions = []
            if let sp = sparkplug {
                let edge = SparkplugEdgeNode(group: sp.group, node: sp.node)
                options.subscriptions = [edge.topic(.ncmd), edge.topic(.dcmd, device: "+")]
                options.will = MQTTOptions.Will(topic: edge.topic(.ndeath), payload: edge.death(), qos: 1, retain: false)
            }
            self.options = options
            self.sparkplug = sparkplug
            self.json = json
            self.node = node
            self.logIntervalSeconds = logIntervalSeconds
        }
    }

    /// Handed from the guard's side and the network thread to the publisher thread.
    private struct Inbox {
        var table: PermitTable?
        /// A connection was accepted (or a rebirth asked for): every birth and JSON state again.
        var fullNeeded = false
        /// Bumped by each accepted connection.
        var session = 0
        var stopping = false
    }

    package let settings: Settings
    private let logger: Logger
    private let clock: any TimeSource
    private let refusedCommand: @Sendable (InterlockEvent) -> Void
    private let cond = MonotonicCondition()
    /// Guarded by `cond` (hence `@unchecked Sendable`).
    private var inbox = Inbox()
    private let client = Mutex<MQTTClient?>(nil)
    private let thread = Mutex<OSThread?>(nil)
    private let counters: Mutex<PermitPublisherCounters>
    private let logLimit: Mutex<RateLimit>
    /// The edge node's bdSeq for the next CONNECT (network thread; read by the publisher thread at a birth).
    private let bdSeq = Atomic<UInt64>(0)

    /// `refusedCommand` receives each refused command (the appliance audits it like a refused
    /// interlock write).
    package init(settings: Settings, logger: Logger = Logger(label: "tibet-twin.publish"), clock: any TimeSource = SystemTimeSource(),
                 refusedCommand: @escaping @Sendable (InterlockEvent) -> Void = { _ in }) {
        self.settings = settings
        self.logger = logger
        self.clock = clock
        self.refusedCommand = refusedCommand
        var c = PermitPublisherCounters()
        c.broker = settings.options.broker
        self.counters = Mutex(c)
        self.logLimit = Mutex(RateLimit(intervalSeconds: settings.logIntervalSeconds))
    }

    package var snapshot: PermitPublisherCounters { counters.withLock { $0 } }

    /// The guard loop's table, as the interlock got it. O(1): stores and signals; never waits on
    /// the network.
    package func offer(_ table: PermitTable) {
        cond.withLock { inbox.table = table }
        cond.signal()
    }

    /// Starts the MQTT client and the publisher thread; returns at once (a broker that is not
    /// there is retried; nothing is published meanwhile).
    package func start() throws(PermitPublisherError) {
        let made: MQTTClient
        do {
            made = try MQTTClient(options: settings.options,
                                  onEvent: { [weak self] e in self?.connection(e) },
                                  onMessage: { [weak self] m in self?.command(m) })
        } catch {
            throw PermitPublisherError(broker: settings.options.broker, detail: error.description)
        }
        client.withLock { $0 = made }
        do {
            let t = try OSThread(name: "tt-publish") { [self] in run() }
            thread.withLock { $0 = t }
            try made.start()
        } catch {
            throw PermitPublisherError(broker: settings.options.broker, detail: "\(error)")
        }
    }

    /// Publishes the last table with every permit 0 (as the interlock serves it while stopping)
    /// and the NDEATH, disconnects cleanly and joins both threads. Idempotent.
    package func stop() {
        cond.withLock { inbox.stopping = true }
        cond.signal()
        let t = thread.withLock { t -> OSThread? in
            defer { t = nil }
            return t
        }
        t?.join()
        let c = client.withLock { c -> MQTTClient? in
            defer { c = nil }
            return c
        }
        c?.stop()
    }

    deinit { stop() }

    // MARK: The network thread

    private func connection(_ event: MQTTEvent) {
        switch event {
        case .connected:
            counters.withLock { $0.connected = true }
            logger.notice("permit publisher connected; publishing the permits (for display and records only)",
                          metadata: ["broker": "\(settings.options.broker)"])
            cond.withLock {
                inbox.fullNeeded = true
                inbox.session += 1
            }
            cond.signal()
        case .subscribed:
            break
        case .subscriptionRefused(let topic, let error):
            logRateLimited("subscription_refused", "permit publisher: the broker refused the command subscription; rebirth requests go unanswered",
                           ["topic": "\(topic)", "error": "\(error)"])
        case .connectFailed(let error), .connectionLost(let error):
            counters.withLock { $0.connected = false }
            logRateLimited("connection_\(error.kind.rawValue)", "permit publisher cannot reach the broker; nothing is published until it is back (the permits are not affected)",
                           ["error": "\(error)"])
            if let sp = settings.sparkplug {
                // Sparkplug 3.0: each CONNECT is a new session with the next bdSeq, in its will and its NBIRTH.
                var edge = SparkplugEdgeNode(group: sp.group, node: sp.node, bdSeq: bdSeq.load(ordering: .acquiring))
                edge.nextSession()
                bdSeq.store(edge.bdSeq, ordering: .releasing)
                try? client.withLock { $0 }?.setWill(MQTTOptions.Will(topic: edge.topic(.ndeath), payload: edge.death(), qos: 1, retain: false))
            }
        }
    }

    private func command(_ m: MQTTMessage) {
        guard let sp = settings.sparkplug, let topic = SparkplugTopic(m.topic), topic.group == sp.group, topic.node == sp.node,
              topic.type == .ncmd || topic.type == .dcmd else { return }
        switch SparkplugEdgeNode.command(type: topic.type, payload: m.payload) {
        case .rebirth:
            counters.withLock { $0.rebirths += 1 }
            logger.info("permit publisher: rebirth requested", metadata: ["topic": "\(m.topic)"])
            cond.withLock { inbox.fullNeeded = true }
            cond.signal()
        case .refused(let why, let metrics):
            counters.withLock { $0.refused[why, default: 0] += 1 }
            logRateLimited("refused_\(why)", "permit publisher refused a command: the published permits are read-only; the permit coil is the only control path",
                           ["topic": "\(m.topic)", "reason": "\(why)", "metrics": "\(metrics.joined(separator: ","))"])
            refusedCommand(.mqttCommandRefused(broker: settings.options.broker, topic: m.topic, metrics: metrics, why: why))
        }
    }

    private func logRateLimited(_ key: String, _ message: Logger.Message, _ metadata: Logger.Metadata) {
        guard let suppressed = logLimit.withLock({ $0.admit(key, nowNs: clock.now().monotonicNs) }) else { return }
        var md = metadata
        md["broker"] = "\(settings.options.broker)"
        md["suppressed"] = "\(suppressed)"
        logger.warning(message, metadata: md)
    }

    // MARK: The publisher thread

    /// What was last sent per device (the baseline of "on change").
    private struct Sent {
        var devices: [String: PublishedDevice] = [:]
        var healthy: Bool?
        var edge: SparkplugEdgeNode?
        var bornSession = -1
    }

    private func run() {
        var sent = Sent()
        var latest: PermitTable?
        while true {
            var next: PermitTable?
            var full = false
            var session = 0
            let stopping: Bool = cond.withLock {
                while inbox.table == nil && !inbox.fullNeeded && !inbox.stopping { _ = cond.wait(untilMonotonicNs: nil) }
                swap(&next, &inbox.table)
                full = inbox.fullNeeded
                inbox.fullNeeded = false
                session = inbox.session
                return inbox.stopping
            }
            if let next { latest = next }
            if stopping {
                // What the interlock serves from the first moment of the stop: every permit 0.
                if let t = latest, sent.bornSession == session { publishChanges(t.blockingAll(), &sent, session: session) }
                if let edge = sent.edge, sent.bornSession == session {
                    send(edge.topic(.ndeath), edge.death(nowMs: nowMs()), qos: 1, kind: "ndeath")
                }
                return
            }
            guard let table = latest, client.withLock({ $0 })?.isConnected ?? false || full else { continue }
            if full || sent.bornSession != session {
                publishAll(table, &sent, session: session)
            } else {
                publishChanges(table, &sent, session: session)
            }
        }
    }

    private func nowMs() -> UInt64 { UInt64(max(0, clock.now().wallNs / 1_000_000)) }

    /// NBIRTH and every DBIRTH, and every device's JSON: after a connect or a rebirth request.
    private func publishAll(_ table: PermitTable, _ sent: inout Sent, session: Int) {
        let devices = PublishedDevice.all(table)
        let now = nowMs()
        if let sp = settings.sparkplug {
            var edge = SparkplugEdgeNode(group: sp.group, node: sp.node, bdSeq: bdSeq.load(ordering: .acquiring))
            send(edge.topic(.nbirth), edge.birth(metrics: Self.nodeMetrics(table), nowMs: now), qos: 0, kind: "nbirth")
            for (k, d) in devices.enumerated() {
                send(edge.topic(.dbirth, device: d.name), edge.deviceBirth(metrics: Self.deviceMetrics(d, index: k, all: true), nowMs: now),
                     qos: 0, kind: "dbirth")
            }
            sent.edge = edge
        }
        if let json = settings.json {
            for d in devices { send(jsonTopic(json, d.name), jsonPayload(d, nowMs: now), qos: 1, retain: json.retain, kind: "json") }
        }
        sent.devices = Dictionary(devices.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        sent.healthy = table.healthy
        sent.bornSession = session
    }

    /// DDATA / NDATA and JSON for what changed since the last message: a permit or a reason.
    private func publishChanges(_ table: PermitTable, _ sent: inout Sent, session: Int) {
        let now = nowMs()
        if var edge = sent.edge, sent.healthy != table.healthy {
            send(edge.topic(.ndata), edge.data(metrics: Self.nodeMetrics(table), nowMs: now), qos: 0, kind: "ndata")
            sent.edge = edge
        }
        sent.healthy = table.healthy
        for (k, d) in PublishedDevice.all(table).enumerated() {
            if let before = sent.devices[d.name], before.sameVerdict(as: d) { continue }
            if var edge = sent.edge {
                let metrics = Self.deviceMetrics(d, index: k, all: false, before: sent.devices[d.name])
                send(edge.topic(.ddata, device: d.name), edge.data(metrics: metrics, nowMs: now), qos: 0, kind: "ddata")
                sent.edge = edge
            }
            if let json = settings.json {
                send(jsonTopic(json, d.name), jsonPayload(d, nowMs: now), qos: 1, retain: json.retain, kind: "json")
            }
            sent.devices[d.name] = d
        }
    }

    private func send(_ topic: String, _ payload: [UInt8], qos: Int, retain: Bool = false, kind: String) {
        guard let c = client.withLock({ $0 }) else { return }
        do {
            try c.publish(topic: topic, payload: payload, qos: qos, retain: retain)
            counters.withLock { $0.published[kind, default: 0] += 1 }
        } catch {
            counters.withLock { $0.publishErrors += 1 }
            logRateLimited("publish_\(kind)", "permit publisher: a message could not be queued", ["topic": "\(topic)", "error": "\(error)"])
        }
    }

    // MARK: Payloads

    /// The node's own metric beside bdSeq and Rebirth: whether the guard is healthy (input register 1).
    static func nodeMetrics(_ table: PermitTable) -> [SparkplugEdgeMetric] {
        [SparkplugEdgeMetric(name: "Guard/Healthy", alias: 2, value: .bool(table.healthy))]
    }

    /// A device's metrics: per intent `Intents/<intent>/Permit` (Boolean) and
    /// `Intents/<intent>/Reason Code` (Int32: 0 while permitted, else the device's reason code),
    /// and the device's `Reason Code`, `Reason`, `Twin Age ms`, `Physical Age ms`. Aliases are
    /// unique in the node: `(device index + 1) << 16 | metric number`. A DDATA carries what
    /// changed (`before` nil: everything) and the ages as of the change.
    static func deviceMetrics(_ d: PublishedDevice, index: Int, all: Bool, before: PublishedDevice? = nil) -> [SparkplugEdgeMetric] {
        let base = UInt64(index + 1) << 16
        var out: [SparkplugEdgeMetric] = []
        let reasonChanged = all || before?.reason != d.reason
        for (i, intent) in d.intents.enumerated() {
            let prior = before.flatMap { $0.intents.indices.contains(i) ? $0.intents[i] : nil }
            let permitChanged = all || prior?.permit != intent.permit || prior?.name != intent.name
            if permitChanged {
                out.append(SparkplugEdgeMetric(name: "Intents/\(intent.name)/Permit", alias: base | UInt64(16 + 2 * i), value: .bool(intent.permit)))
            }
            if permitChanged || reasonChanged {
                let code = intent.permit ? ReasonCode.ok.rawValue : d.reason
                out.append(SparkplugEdgeMetric(name: "Intents/\(intent.name)/Reason Code", alias: base | UInt64(17 + 2 * i),
                                               value: .int32(Int32(code))))
            }
        }
        if reasonChanged {
            out.append(SparkplugEdgeMetric(name: "Reason Code", alias: base | 1, value: .int32(Int32(d.reason))))
            out.append(SparkplugEdgeMetric(name: "Reason", alias: base | 2, value: .string(d.reasonName)))
        }
        out.append(SparkplugEdgeMetric(name: "Twin Age ms", alias: base | 3, value: .int32(Int32(d.twinAgeMs))))
        out.append(SparkplugEdgeMetric(name: "Physical Age ms", alias: base | 4, value: .int32(Int32(d.physicalAgeMs))))
        return out
    }

    private func jsonTopic(_ json: ApplianceConfig.Publish.JSONOutput, _ device: String) -> String {
        "\(json.prefix)/\(settings.node)/\(device)"
    }

    /// `{"node":…,"device":…,"ts":…,"permits":{intent:bool},"reason_code":n,"reason":"…","twin_age_ms":n|null,"physical_age_ms":n|null}`.
    func jsonPayload(_ d: PublishedDevice, nowMs: UInt64) -> [UInt8] {
        func age(_ v: UInt16) -> JSONValue { v == InterlockLayout.unknown ? .null : .int(Int64(v)) }
        var permits: [String: JSONValue] = [:]
        for i in d.intents { permits[i.name] = .bool(i.permit) }
        let value: JSONValue = .object([
            "node": .string(settings.node), "device": .string(d.name),
            "ts": .string(RFC3339.format(wallNs: Int64(nowMs) * 1_000_000)),
            "permits": .object(permits), "reason_code": .int(Int64(d.reason)), "reason": .string(d.reasonName),
            "twin_age_ms": age(d.twinAgeMs), "physical_age_ms": age(d.physicalAgeMs),
            "control": .string("display only: the permit coil is the only control path"),
        ])
        return value.canonicalBytes
    }
}

/// The permit publisher could not be set up (libmosquitto refused the options, no thread).
package struct PermitPublisherError: Error, Sendable, Hashable, CustomStringConvertible {
    package var broker: String
    package var detail: String
    package var description: String { "permit publisher (mqtt broker \(broker)): \(detail)" }
}
